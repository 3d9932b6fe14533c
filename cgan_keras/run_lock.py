"""One run per directory: an exclusive operating-system lock on a run's `--out`.

`train.py` takes it before anything touches the directory and holds it until
the process ends. It is an `fcntl.flock` on `--out/.lock`, which the operating
system releases when its holder dies in any way (`kill -9` included), so a
lock is never stale. The file stays once the run has written anything; the
directories the lock created go again, lock file and all, when it is released
with nothing else in them (a run that failed on its data before writing), so
a mistake leaves no empty run directory behind.
"""

import contextlib
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
        self._created = []  # the directories `acquire` made, innermost first

    def acquire(self):
        """Takes the lock at once, or raises.

        Raises:
            RunDirectoryBusy: another process holds it; the message names its pid.
            OSError: the directory or its lock file cannot be created.
        """
        directory = self.path.parent
        if directory.exists() and not directory.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(directory))
        while self._file is None:
            self._created = [path for path in (directory, *directory.parents) if not path.exists()]
            directory.mkdir(parents=True, exist_ok=True)
            try:
                lock_file = open(self.path, "a+")  # held open for as long as the lock
            except FileNotFoundError:
                if directory.is_dir():  # not a removed directory: e.g. a dangling `.lock` symlink
                    raise
                continue  # the directory went between the two lines: its last holder removed it
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock_file.seek(0)
                holder = lock_file.read().strip() or "unknown"
                lock_file.close()
                raise RunDirectoryBusy(
                    f"--out {directory} is in use by another run (pid {holder}); "
                    "wait for it to end or choose another --out"
                ) from None
            if not _is_at(lock_file, self.path):  # its holder released it and removed it meanwhile: start again
                lock_file.close()
                continue
            lock_file.truncate(0)
            lock_file.write(f"{os.getpid()}\n")
            lock_file.flush()
            self._file = lock_file
        return self

    def release(self):
        """Frees the lock; the directories it created go too if nothing but the lock file was written in them."""
        if self._file is None:
            return
        # Unlinked while still locked: a run that opened this file meanwhile sees it gone and starts again.
        with contextlib.suppress(OSError):  # e.g. a directory removed meanwhile, or written in by someone else
            if self._created and [path.name for path in self.path.parent.iterdir()] == [LOCK_NAME]:
                self.path.unlink()
                for directory in self._created:
                    directory.rmdir()
        self._file.close()  # closing the last descriptor releases the flock
        self._file = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exception):
        self.release()


def _is_at(file, path):
    """Whether the open `file` is still the file at `path` (not unlinked or replaced)."""
    try:
        return os.path.samestat(os.fstat(file.fileno()), os.stat(path))
    except FileNotFoundError:
        return False
