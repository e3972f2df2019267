"""Untracked (and ignored) files in a checkout survive a pin change: the README promises that
they are never touched, while `git checkout --force` and `git am` would overwrite or trip on
those whose paths the new tree uses. Those are moved to .stackforge/backups/ first, and said so."""

from __future__ import annotations

import os
import time
from pathlib import Path

from stackforge.core.console import err, escape
from stackforge.core.git import Git


def colliding_untracked(dest: Path, git: Git, commit: str, touched: set[str]) -> list[str]:
    """Untracked or ignored files in `dest` whose path (or a parent of it) `commit` or the series uses."""
    others = git.out(["ls-files", "--others", "-z"], dest).split("\0")
    others = [p for p in others if p]
    if not others:
        return []
    tree = set(git.out(["ls-tree", "-r", "-z", "--name-only", commit], dest).split("\0")) | touched
    used = set(tree)
    for path in tree:  # the folders of tracked files: an untracked *file* there collides too
        parts = path.split("/")
        used.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return [
        p
        for p in others
        if p in used or any("/".join(p.split("/")[:i]) in tree for i in range(1, p.count("/") + 1))
    ]


def save_untracked(dest: Path, paths: list[str], backups: Path) -> Path | None:
    """Move `paths` (relative to `dest`) into a fresh folder under `backups`; return it."""
    if not paths:
        return None
    folder = backups / f"untracked-{dest.name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}"
    for rel in paths:
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(dest / rel, target)
    err.print(
        f"[yellow]saved[/yellow] {len(paths)} untracked file(s) of {escape(dest.name)} that the new tree "
        f"would overwrite: {escape(str(folder))}  ({escape(', '.join(paths[:5]))}{' ...' if len(paths) > 5 else ''})"
    )
    return folder
