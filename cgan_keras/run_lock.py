"""One run per directory: an exclusive operating-system lock on a run's `--out`.

`train.py` takes it before anything touches the directory and holds it until
the process ends. It is an `fcntl.flock` on `--out/.lock`, which the operating
system releases when its holder dies in any way (`kill -9` included), so a
lock is never stale. The file itself stays: deleting it would let a second
run lock a new file while a third still holds the old one.
"""

import errno
import fcntl
import os
from pathlib import Path

LOCK_NAME = ".lock"


class RunDirectoryBusy(RuntimeError):
    """Another process holds the run directory's lock."""


class RunLock:
    """An exclusive lock on a run directory, released by `release`, on exit, or when the process ends.

    The lock lives in the object's open lock file: keep a reference for as
    long as the run lasts (a dropped object closes the file and frees the lock).

    Args:
        directory: the run directory; created if missing.

    Example:

    >>> with RunLock("saved_models/cgan"):
    ...     ...  # prepare_directory, run: no other train.py can use the directory meanwhile
    """

    def __init__(self, directory):
        self.path = Path(directory) / LOCK_NAME
        self._file = None

    def acquire(self):
        """Takes the lock at once, or raises.

        Raises:
            RunDirectoryBusy: another process holds it; the message names its pid.
            OSError: the directory or its lock file cannot be created.
        """
        directory = self.path.parent
        if directory.exists() and not directory.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(directory))
        directory.mkdir(parents=True, exist_ok=True)
        lock_file = open(self.path, "a+")  # held open for as long as the lock
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            holder = lock_file.read().strip() or "unknown"
            lock_file.close()
            raise RunDirectoryBusy(
                f"--out {directory} is in use by another run (pid {holder}); wait for it to end or choose another --out"
            ) from None
        lock_file.truncate(0)
        lock_file.write(f"{os.getpid()}\n")
        lock_file.flush()
        self._file = lock_file
        return self

    def release(self):
        if self._file is not None:
            self._file.close()  # closing the last descriptor releases the flock
            self._file = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exception):
        self.release()
