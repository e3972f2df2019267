"""The patch series on disk: patches/<name>/NNNN-*.patch, read strictly and replaced atomically.

Nothing is skipped quietly: a `.diff`, a file that is not a patch, or a patch folder for a
source that git-repos.txt does not list is an error that names it, so renaming a source (or a
patch) cannot build without its patches.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from pathlib import Path

from stackforge.core.console import UsageError, info
from stackforge.core.workspace import Workspace
from stackforge.spec.manifest import Manifest

# Files a patch folder may hold besides the series: notes for humans.
_NOTES = re.compile(r"(README|NOTES)(\.\w+)?|.*\.md", re.I)
_MAIL = re.compile(rb"^(From [0-9a-f]{40} |From: |Subject: )", re.M)
_DIFF = re.compile(rb"^(diff --git |--- \S)", re.M)


def series_files(ws: Workspace, name: str) -> list[Path]:
    """patches/<name>/*.patch in the order `git am` applies them (by file name), each checked to be
    a patch `git am` can read; anything else in the folder that is not a note is refused by name."""
    folder = ws.patch_dir(name)
    if not folder.is_dir():
        return []
    patches = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue  # our own temporary folders (see replace_series) and editor files
        if path.suffix == ".patch" and path.is_file():
            problem = patch_problem(path.read_bytes())
            if problem:
                raise UsageError(f"{path}: {problem}", hint="fix or remove it; `git am` would refuse it")
            patches.append(path)
        elif path.suffix in (".diff", ".rej", ".orig") or not (
            _NOTES.fullmatch(path.name) and path.is_file()
        ):
            raise UsageError(
                f"{path}: not part of the series (only *.patch files are applied)",
                hint="rename it NNNN-subject.patch if it is a patch (made with `git format-patch`), "
                "else move it out of patches/",
            )
    return patches


def patch_problem(data: bytes) -> str | None:
    """Why `data` is not a patch `git am` applies ("No valid patches in input"), or None."""
    if not _MAIL.search(data):
        return (
            "not a git patch: no 'From <sha>', 'From:' or 'Subject:' header (make it with git format-patch)"
        )
    if not _DIFF.search(data) and b"\nGIT binary patch" not in data:
        return "no diff in it"
    return None


def series_digest(files: list[Path]) -> list[dict[str, str]]:
    return [{"file": f.name, "sha256": hashlib.sha256(f.read_bytes()).hexdigest()} for f in files]


def orphan_patch_dirs(ws: Workspace, manifest: Manifest) -> list[Path]:
    """patches/<x>/ folders for which git-repos.txt has no source x."""
    if not ws.patches.is_dir():
        return []
    known = {s.name for s in manifest.sources}
    return sorted(
        p for p in ws.patches.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in known
    )


def refuse_orphans(ws: Workspace, manifest: Manifest) -> None:
    orphans = orphan_patch_dirs(ws, manifest)
    if orphans:
        names = ", ".join(f"patches/{p.name}/" for p in orphans)
        raise UsageError(
            f"{names}: no source of that name in {manifest.path}; its patches would not be applied",
            hint="rename the folder to the source's name in git-repos.txt, or remove it if it is obsolete",
        )


def describe_change(recorded: list[dict[str, str]], on_disk: list[dict[str, str]]) -> list[str]:
    """What differs between two series digests, one line per patch file."""
    old = {d["file"]: d["sha256"] for d in recorded}
    new = {d["file"]: d["sha256"] for d in on_disk}
    lines = [f"{f}: on disk but not in the checkout" for f in new if f not in old]
    lines += [f"{f}: in the checkout but gone from disk" for f in old if f not in new]
    lines += [
        f"{f}: edited on disk since the checkout was made" for f in new if f in old and old[f] != new[f]
    ]
    return lines


def replace_series(ws: Workspace, name: str, staged: list[Path]) -> Path | None:
    """Make patches/<name>/ hold exactly `staged` (plus the old folder's notes), all at once.

    The new folder is built beside the old one and swapped in with one atomic exchange
    (renameat2), so a kill leaves the old series or the new one. The old series is first
    copied to .stackforge/backups/; that path is returned (None when there was none)."""
    target = ws.patch_dir(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(ws, name)
    backup = None
    if target.is_dir() and any(target.iterdir()):
        backup = ws.state / "backups" / f"patches-{name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        shutil.copytree(target, backup, dirs_exist_ok=True)
        info(f"previous series saved in {backup}")
    swap = target.with_name(f".{name}.swap-{os.getpid()}")
    swap.mkdir()
    if target.is_dir():
        for note in (p for p in target.iterdir() if p.is_file() and p.suffix != ".patch"):
            shutil.copy2(note, swap / note.name)
    for f in staged:
        shutil.copy2(f, swap / f.name)
    _fsync_dir(swap)
    if target.is_dir():
        _exchange(swap, target)
        shutil.rmtree(swap)  # now the old series, already backed up
    else:
        os.rename(swap, target)
    _fsync_dir(target.parent)
    return backup


def clean_leftovers(ws: Workspace, name: str) -> None:
    """Remove patches/.<name>.swap-* left by a killed export: each is either a new series that was
    never swapped in, or an old one already copied to .stackforge/backups/."""
    old, target = ws.patch_dir(name).with_name(f".{name}.swap-old"), ws.patch_dir(name)
    if old.is_dir() and not target.exists():  # killed between the fallback's two renames
        os.rename(old, target)
    for left in ws.patches.glob(f".{name}.swap-*") if ws.patches.is_dir() else []:
        info(f"removing {left} left by an interrupted `patches export`")
        shutil.rmtree(left, ignore_errors=True)


def _exchange(a: Path, b: Path) -> None:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); else two renames."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is not None and fn(-100, os.fsencode(a), -100, os.fsencode(b), 2) == 0:  # AT_FDCWD, EXCHANGE
        return
    # No renameat2 (old libc, other OS, a file system without it): the window between the two
    # renames leaves no patches/<name>/; the backup copy made first still holds the old series.
    tmp = b.with_name(f".{b.name}.swap-old")
    os.rename(b, tmp)
    os.rename(a, b)
    os.rename(tmp, a)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        for f in path.iterdir():
            if f.is_file():
                with f.open("rb+") as fh:
                    os.fsync(fh.fileno())
        os.fsync(fd)
    finally:
        os.close(fd)
