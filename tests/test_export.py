import json
import subprocess
import sys

import keras
import numpy as np
import tensorflow as tf
from conftest import LATENT_DIM, tiny_gan

from cgan_keras.export import export_generator, save_model

# Runs in a fresh interpreter that never imports cgan_keras (asserted), as a user's server would.
LOAD_AND_RUN = """
import json, sys
import numpy as np, tensorflow as tf
signature = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
noise = np.load(sys.argv[2])
images = signature(digit=tf.constant([0, 3, 9], tf.int32), noise=tf.constant(noise))["images"].numpy()
np.save(sys.argv[3], images)
print(json.dumps({
    "inputs": {name: [spec.dtype.name, spec.shape.as_list()]
               for name, spec in signature.structured_input_signature[1].items()},
    "outputs": list(signature.structured_outputs),
    "cgan_keras_imported": any(name.startswith("cgan_keras") for name in sys.modules),
}))
"""


def test_saved_model_loads_and_runs_without_this_package(tmp_path):
    gan = tiny_gan()
    export_generator(gan, tmp_path / "generator")
    noise = np.random.default_rng(5).standard_normal((3, LATENT_DIM)).astype("float32")
    np.save(tmp_path / "noise.npy", noise)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            LOAD_AND_RUN,
            str(tmp_path / "generator"),
            str(tmp_path / "noise.npy"),
            str(tmp_path / "images.npy"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {
        "inputs": {"digit": ["int32", [None]], "noise": ["float32", [None, LATENT_DIM]]},
        "outputs": ["images"],
        "cgan_keras_imported": False,
    }
    images = np.load(tmp_path / "images.npy")
    assert images.shape == (3, 28, 28, 1) and images.min() >= 0 and images.max() <= 1
    expected = (np.asarray(gan((np.array([0, 3, 9], "int32"), noise), training=False)) + 1) / 2
    np.testing.assert_allclose(images, expected, atol=1e-6)


def test_export_replaces_an_existing_saved_model_whole(tmp_path):
    first, second = tiny_gan(seed=0), tiny_gan(seed=1)
    export_generator(first, tmp_path / "generator")
    export_generator(second, tmp_path / "generator")
    signature = tf.saved_model.load(str(tmp_path / "generator")).signatures["serving_default"]
    noise = np.zeros((1, LATENT_DIM), "float32")
    images = signature(digit=tf.constant([4]), noise=tf.constant(noise))["images"].numpy()
    np.testing.assert_allclose(images, (np.asarray(second((np.array([4], "int32"), noise))) + 1) / 2, atol=1e-6)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["generator"]


def test_generator_keras_file_reloads_with_the_same_outputs(tmp_path):
    gan = tiny_gan()
    save_model(gan.generator, tmp_path / "generator.keras")
    reloaded = keras.models.load_model(tmp_path / "generator.keras")
    inputs = {"digit": np.array([2], "int32"), "noise": np.ones((1, LATENT_DIM), "float32")}
    np.testing.assert_allclose(reloaded(inputs), gan.generator(inputs), atol=1e-6)
