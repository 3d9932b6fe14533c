"""Atomic writes: an artifact is either absent, the old one, or the new one.

Every file or directory the project writes goes first to a temporary name in
the destination's own directory (same filesystem, so the rename is atomic) and
is renamed into place only once it is complete.
"""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


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
            # A directory cannot replace a non-empty one in one rename: move the
            # old one aside first, so a crash leaves it recoverable beside.
            retired = staging / "retired"
            os.replace(final_path, retired)
        os.replace(temporary, final_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
