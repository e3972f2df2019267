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


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write `path` so that a reader (or a kill at any point) sees the old file or the new one, never
    a part: a unique temporary file in the same folder, flushed, then renamed over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
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
def waiting_lock(path: Path, what: str = "another stackforge") -> Iterator[None]:
    """Hold the file lock at `path`; when it is taken, say who we wait for instead of hanging mute."""
    from filelock import FileLock, Timeout

    from stackforge.core.console import info

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=1)
    except Timeout:
        info(f"waiting for {path} held by {what}")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
