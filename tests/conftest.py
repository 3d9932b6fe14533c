"""Tiny models and data shared by the tests: every test builds in well under a second."""

import errno
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

# Two logical CPU devices for the tf.distribute tests; this must happen before
# TensorFlow starts its runtime, and costs the other tests nothing (they run on
# the first device, on the same cores).
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from cgan_keras import models  # noqa: E402
from cgan_keras.gan import ConditionalGAN  # noqa: E402

LATENT_DIM = 8
ROOT = Path(__file__).resolve().parents[1]
HOLD_LOCK = (
    "import sys; from cgan_keras.run_lock import RunLock; lock = RunLock(sys.argv[1]).acquire(); "
    "print('locked', flush=True); sys.stdin.read()"
)


def tiny_gan(seed=0, compile=True, ema_decay=0.999, **compile_kwargs):
    """A ConditionalGAN with a few hundred weights, compiled with the defaults."""
    keras.utils.set_random_seed(seed)
    gan = ConditionalGAN(
        LATENT_DIM,
        generator=models.build_generator(LATENT_DIM, filters=(8, 4)),
        discriminator=models.build_discriminator(filters=(4, 8)),
        ema_decay=ema_decay,
        seed=seed,
    )
    if compile:
        gan.compile(**compile_kwargs)
    return gan


@pytest.fixture
def digits():
    """64 fake 'digits': float32 (64, 28, 28, 1) in [-1, 1] and int32 labels (64,) covering 0..9."""
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (64, 28, 28, 1)).astype("float32")
    labels = (np.arange(64) % 10).astype("int32")
    return images, labels


def mount_tmpfs(directory, size):
    """Mounts a tmpfs of `size` (e.g. "3m") on the new `directory`; returns whether that was allowed."""
    directory.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                                 capture_output=True).returncode == 0  # fmt: skip
    except FileNotFoundError:
        mounted = False
    return mounted


class FullDisk:
    """A directory on a 4 MB tmpfs that `fill` fills up.

    Where mounting is not allowed, `fill` makes the given writer raise ENOSPC
    instead, so a test asserts the same behaviour either way.
    """

    def __init__(self, path, mounted, monkeypatch):
        self.path, self.mounted, self._monkeypatch = path, mounted, monkeypatch

    def fill(self, writer, leave=0):
        """Leaves `leave` bytes free; `writer` is the `(owner, name)` to patch without a tmpfs."""
        if not self.mounted:

            def no_space(*args, **kwargs):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            self._monkeypatch.setattr(*writer, no_space)
            return
        ballast = self.path / "ballast"
        descriptor = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            while True:
                os.write(descriptor, bytes(1 << 16))
        except OSError as error:
            assert error.errno == errno.ENOSPC
        finally:
            os.close(descriptor)
        os.truncate(ballast, max(0, ballast.stat().st_size - leave))


@pytest.fixture
def full_disk(tmp_path, monkeypatch):
    path = tmp_path / "disk"
    mounted = mount_tmpfs(path, "4m")
    yield FullDisk(path, mounted, monkeypatch)
    if mounted:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def hold_lock(directory):
    """Starts a process that holds the `run_lock.RunLock` of `directory` until it is killed; returns it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert holder.stdout.readline() == "locked\n"
    return holder
