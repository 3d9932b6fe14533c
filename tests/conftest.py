"""Test-wide set-up (two logical CPU devices) and fixtures; the shared tiny config is in `support.py`."""

import errno
import os
import subprocess

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

# Two logical CPU devices for the tf.distribute tests; this must happen before
# TensorFlow starts its runtime, and costs the other tests nothing (they run on
# the first device, on the same cores).
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from support import mount_tmpfs  # noqa: E402


@pytest.fixture
def onednn_defaults(monkeypatch):
    """TensorFlow's oneDNN settings unset (oneDNN on, no ISA cap), as on a machine left alone."""
    from cgan_keras.distribute import ONEDNN_SETTINGS

    for name in ONEDNN_SETTINGS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def digits():
    """64 fake 'digits': float32 (64, 28, 28, 1) in [-1, 1] and int32 labels (64,) covering 0..9."""
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (64, 28, 28, 1)).astype("float32")
    labels = (np.arange(64) % 10).astype("int32")
    return images, labels


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
