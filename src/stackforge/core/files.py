"""Files written whole or not at all, and their digests: the one place for both."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def sha256_file(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def atomic_write(path: Path, data: bytes | str, *, mode: int | None = None) -> None:
    """Write `path` so that a reader (or a kill at any point) sees the old file or the new one, never
    a part: a unique temporary file in the same folder, flushed, then renamed over the target.
    `mode` sets the new file's permissions (mkstemp's are 0600), e.g. those of the file replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def waiting_lock(path: Path, what: str) -> Iterator[None]:
    """Hold the file lock `path` for `what`; when another stackforge holds it, say so, then wait."""
    from filelock import FileLock, Timeout

    from stackforge.core.console import escape, info

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0.5)
    except Timeout:
        info(escape(f"waiting for {path}: another stackforge is {what} (it goes on when that one ends)"))
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
