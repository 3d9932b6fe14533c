"""Atomic writes: an artifact is either absent, the old one, or the new one.

Every file or directory the project writes goes first to a temporary name in
the destination's own directory (same filesystem, so the rename is atomic) and
is renamed into place only once it is complete.
"""

import contextlib
import ctypes
import errno
import os
import shutil
import tempfile
from pathlib import Path

_LIBC = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


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

    Example:

    >>> with atomic_path("out/config.json") as tmp:
    ...     tmp.write_text("{}")
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final_path.name}.", dir=final_path.parent))
    temporary = staging / final_path.name
    try:
        yield temporary
        if directory and final_path.is_dir():
            _exchange(temporary, final_path)  # the old directory lands in staging, removed below
        else:
            os.replace(temporary, final_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
