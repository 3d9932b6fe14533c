"""`pip install .` gives a package that a script outside the repository can import and train."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import numpy as np
import cgan_keras
import keras
# The import alone registers the Keras classes: saved .keras files load without custom_objects.
print(keras.saving.get_registered_object("cgan_keras>ConditionalGAN") is not None)
from cgan_keras import ConditionalGAN, build_discriminator, build_generator

print(cgan_keras.__file__)
rng = np.random.default_rng(0)
images = rng.uniform(-1, 1, (16, 28, 28, 1)).astype("float32")
gan = ConditionalGAN(8, generator=build_generator(8, filters=(8, 4)), discriminator=build_discriminator(filters=(4, 8)))
gan.compile()
gan.fit(images, np.arange(16) % 10, batch_size=16, epochs=1, verbose=0)
print(int(gan.optimizer.iterations))
from cgan_keras.metrics.judge import load_judge  # its weights and reference features are package data
print(load_judge().accuracy > 0.99)
"""


def test_pip_install_gives_a_package_a_script_elsewhere_can_fit(tmp_path):
    # The package's files only, so the build leaves nothing in the repository.
    source = tmp_path / "source"
    shutil.copytree(ROOT / "cgan_keras", source / "cgan_keras", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    # A venv that sees this interpreter's packages, so the declared dependencies resolve with no download.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-index",
               "--no-build-isolation", str(source)]  # fmt: skip
    installed = subprocess.run(install, capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr

    env = {
        name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "CGAN_KERAS_DEFER_TENSORFLOW")
    }
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run([str(python), "-c", SCRIPT], capture_output=True, text=True, cwd=elsewhere, env=env)
    assert result.returncode == 0, result.stderr
    registered, module_path, steps, judge_loaded = result.stdout.split()
    assert registered == "True"
    assert Path(module_path).is_relative_to(venv) and steps == "1" and judge_loaded == "True"
