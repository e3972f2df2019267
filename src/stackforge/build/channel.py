"""The local conda channel in `output/`: publish a finished package atomically, then index it.

A package enters the channel only complete: it is copied to a dot-file beside its final name and
renamed into place (atomic on one file system), and the channel is re-indexed with py-rattler.
A run killed at any moment leaves either no file or the whole file, never a partial one; stray
dot-files of a killed copy are removed the next time the channel is opened.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

SUBDIRS = ("linux-64", "noarch")


def channel_url(channel: Path) -> str:
    return channel.resolve().as_uri()


def packages(channel: Path) -> list[Path]:
    return sorted(p for sub in SUBDIRS for p in (channel / sub).glob("*.conda"))


def find(channel: Path, subdir: str, name: str, version: str, build: str) -> Path | None:
    path = channel / subdir / f"{name}-{version}-{build}.conda"
    return path if path.is_file() else None


def clean_partials(channel: Path) -> None:
    for sub in SUBDIRS:
        for stray in (channel / sub).glob(".*.partial"):
            stray.unlink(missing_ok=True)


def index(channel: Path) -> None:
    """(Re)write repodata.json for every subdir: packages are found by name, version and build."""
    from rattler.index import index_fs

    for sub in SUBDIRS:
        (channel / sub).mkdir(parents=True, exist_ok=True)
    # incremental: only new or removed files are read, so a channel of GB-sized packages indexes fast
    result = index_fs(channel, write_zst=False, write_shards=False, force=False)
    if asyncio.iscoroutine(result):
        asyncio.run(result)


def publish(built: Path, channel: Path, subdir: str) -> Path:
    """Move a finished package into the channel atomically and index the channel."""
    target_dir = channel / subdir
    target_dir.mkdir(parents=True, exist_ok=True)
    final = target_dir / built.name
    partial = target_dir / f".{built.name}.partial"
    shutil.copyfile(built, partial)
    os.chmod(partial, 0o644)
    os.replace(partial, final)
    index(channel)
    return final


def indexed_files(channel: Path) -> set[str]:
    """File names that the channel's repodata.json lists."""
    names: set[str] = set()
    for sub in SUBDIRS:
        repodata = channel / sub / "repodata.json"
        if repodata.is_file():
            data = json.loads(repodata.read_text())
            names.update(data.get("packages.conda", {}))
            names.update(data.get("packages", {}))
    return names
