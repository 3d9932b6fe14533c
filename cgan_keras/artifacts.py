"""Atomic writes: an artifact is either absent, the old one, or the new one.

Every file or directory the project writes goes first to a temporary name in
the destination's own directory (same filesystem, so the rename is atomic) and
is renamed into place only once it is complete. A write that fails (a full
disk, an I/O error) raises `ArtifactWriteError` and leaves nothing behind; a
write killed outright leaves a `.NAME.XXXXXXXX.partial` staging directory,
which `remove_partial` clears.
"""

import contextlib
import ctypes
import errno
import os
import shutil
import signal
import tempfile
from pathlib import Path

_LIBC = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_PARTIAL_SUFFIX = ".partial"
# Fault-injection point for tests of a kill at a known moment of a write: with
# CGAN_KERAS_STOP_AT=generator:staged, the process stops itself (SIGSTOP) once
# `generator` is complete in its staging directory, for the test to SIGKILL it.
_STOP_AT = os.environ.get("CGAN_KERAS_STOP_AT")


class ArtifactWriteError(OSError):
    """An artifact could not be written (disk full, I/O error, no permission); the old one is kept.

    `filename` is the artifact's path, `strerror` the reason, and `str(error)`
    one line with both.
    """

    def __init__(self, path, reason, code=None):
        super().__init__(code, reason, str(path))

    def __str__(self):
        return f"cannot write {self.filename}: {self.strerror}"


@contextlib.contextmanager
def atomic_path(final_path, directory=False):
    """Yields a temporary path that is renamed to `final_path` on success.

    Args:
        final_path: where the finished artifact must end up.
        directory: whether the artifact is a directory (e.g. a SavedModel).

    Yields:
        A `pathlib.Path` beside `final_path` that does not exist yet; write
        the artifact there. If the block raises, it is removed and
        `final_path` is left as it was.

    Raises:
        ArtifactWriteError: an `OSError` while writing or renaming, with the
            artifact's path in its message.

    Example:

    >>> with atomic_path("out/config.json") as tmp:
    ...     tmp.write_text("{}")
    """
    final_path = Path(final_path)
    staging = None
    try:
        final_path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{final_path.name}.", suffix=_PARTIAL_SUFFIX, dir=final_path.parent))
        temporary = staging / final_path.name
        yield temporary
        _stop_here(final_path, "staged")
        if directory and final_path.is_dir():
            _exchange(temporary, final_path)  # the old directory lands in staging, removed below
        else:
            os.replace(temporary, final_path)
        _stop_here(final_path, "renamed")
    except ArtifactWriteError:
        raise
    except OSError as error:
        raise ArtifactWriteError(final_path, _reason(error), error.errno) from error
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def remove_partial(directory):
    """Removes the staging directories that killed writes left under `directory`; returns them.

    Only safe while no other process writes there (`train.py` holds the run's lock).
    """
    removed = sorted(Path(directory).rglob(f".*{_PARTIAL_SUFFIX}"))
    for staging in removed:
        shutil.rmtree(staging, ignore_errors=True)
    return removed


def _reason(error):
    return os.strerror(error.errno) if error.errno is not None else first_line(error)


def first_line(error):
    """The first line of an exception's message, or its type's name when the message is empty.

    Libraries (h5py, TensorFlow, onnxruntime) may put several lines in one message.
    """
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _stop_here(final_path, moment):
    if _STOP_AT == f"{final_path.name}:{moment}":
        os.kill(os.getpid(), signal.SIGSTOP)


def _exchange(new_path, old_path):
    """Swaps two directories atomically (Linux `renameat2(RENAME_EXCHANGE)`).

    A plain rename cannot replace a non-empty directory. Where the exchange is
    not available (another OS, an old kernel or filesystem), falls back to two
    renames, with a moment in which `old_path` is missing.
    """
    if hasattr(_LIBC, "renameat2"):
        source, target = os.fsencode(new_path), os.fsencode(old_path)
        if _LIBC.renameat2(_AT_FDCWD, source, _AT_FDCWD, target, _RENAME_EXCHANGE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), str(old_path))
    retired = Path(new_path).with_name(Path(new_path).name + ".retired")
    os.replace(old_path, retired)
    os.replace(new_path, old_path)
    os.replace(retired, new_path)
