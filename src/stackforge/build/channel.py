"""The local conda channel in `output/`: publish a finished package atomically, then index it.

A package enters the channel only complete: it is copied to a dot-file beside its final name and
renamed into place (atomic on one file system), and the channel is re-indexed with py-rattler.
A run killed at any moment leaves either no file or the whole file, never a partial one; stray
dot-files of a killed copy are removed the next time the channel is opened.

Exactly one build of a package is current per environment: when another one becomes current, the
old file is moved to output/superseded/<subdir>/ (kept, never deleted; outside the index, so no
solver can pick it), and moved back if its inputs come back.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

SUBDIRS = ("linux-64", "noarch")
SUPERSEDED = "superseded"


def channel_url(channel: Path) -> str:
    return channel.resolve().as_uri()


def packages(channel: Path) -> list[Path]:
    return sorted(p for sub in SUBDIRS for p in (channel / sub).glob("*.conda"))


def find(channel: Path, subdir: str, name: str, version: str, build: str) -> Path | None:
    """The package file, current or superseded (`make_current` brings the latter back)."""
    for folder in (channel / subdir, channel / SUPERSEDED / subdir):
        path = folder / f"{name}-{version}-{build}.conda"
        if path.is_file():
            return path
    return None


def _name_and_build(file_name: str) -> tuple[str, str]:
    name, _version, build = file_name.removesuffix(".conda").rsplit("-", 2)
    return name, build


def make_current(channel: Path, subdir: str, file_name: str, build_tag: str) -> list[Path]:
    """Make `file_name` the one current build of its package for the environment whose build strings
    start with `build_tag`: bring it back from superseded/ if it is there, move every other build
    of that package and environment there. Returns what moved; the caller re-indexes."""
    current, aside = channel / subdir, channel / SUPERSEDED / subdir
    moved = []
    if not (current / file_name).is_file() and (aside / file_name).is_file():
        os.replace(aside / file_name, current / file_name)
        moved.append(current / file_name)
    name, _ = _name_and_build(file_name)
    for other in sorted(current.glob(f"{name}-*.conda")):
        other_name, other_build = _name_and_build(other.name)
        if other.name != file_name and other_name == name and other_build.startswith(f"{build_tag}_"):
            aside.mkdir(parents=True, exist_ok=True)
            os.replace(other, aside / other.name)
            moved.append(aside / other.name)
    return moved


def clean_partials(channel: Path) -> None:
    for sub in SUBDIRS:
        for stray in (channel / sub).glob(".*.partial"):
            stray.unlink(missing_ok=True)


def index(channel: Path) -> None:
    """(Re)write repodata.json for every subdir: packages are found by name, version and build."""
    from rattler.index import index_fs

    for sub in SUBDIRS:
        (channel / sub).mkdir(parents=True, exist_ok=True)
    # incremental: only new or removed files are read, so a channel of GB-sized packages indexes fast;
    # an unreadable repodata.json is rewritten from the files
    force = any(_unreadable(channel / sub / "repodata.json") for sub in SUBDIRS)
    result = index_fs(channel, write_zst=False, write_shards=False, force=force)
    if asyncio.iscoroutine(result):
        asyncio.run(result)


def _records(channel: Path, repodata: Path) -> list:
    """The records of one subdir's index, read by rattler; none when it is empty or cut (a full
    disk, a kill): the caller re-indexes."""
    import rattler

    try:
        return rattler.RepoData.from_path(repodata).into_repo_data(rattler.Channel(str(channel)))
    except Exception:  # rattler's parse error: the file is not a whole repodata.json
        return []


def _unreadable(repodata: Path) -> bool:
    if not repodata.is_file():
        return False
    import rattler

    try:
        rattler.RepoData.from_path(repodata)
    except Exception:
        return True
    return False


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
            names.update(r.file_name for r in _records(channel, repodata))
    return names


def index_is_stale(channel: Path) -> bool:
    """Whether repodata.json misses a package file or lists one that is gone, or is unreadable."""
    on_disk = {p.name for p in packages(channel)}
    return on_disk != indexed_files(channel) or not (channel / "noarch" / "repodata.json").is_file()


def extract_package(package: Path, dest: Path) -> Path:
    """Unpack a .conda or .tar.bz2 with rattler (the same code pixi installs with)."""
    from rattler.package_streaming import extract  # imported late: rattler's import is not free

    from stackforge.core.console import Failure

    dest.mkdir(parents=True, exist_ok=True)
    try:
        extract(package, dest)
    except Exception as exc:  # rattler raises its own exception types
        raise Failure(
            f"{package}: cannot extract: {exc}", hint="delete or rebuild it; it may be truncated"
        ) from exc
    return dest
