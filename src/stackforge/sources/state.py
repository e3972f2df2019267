"""The state of a patched checkout that a build or a lock records: its git tree and commit time."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from stackforge.core.workspace import Workspace
from stackforge.spec.manifest import Source


@dataclass
class SourceState:
    name: str
    tree: str | None  # git tree of the patched checkout; None when it is not there or not current
    epoch: int  # commit time of the patched HEAD
    problem: str = ""


def source_state(ws: Workspace, src: Source) -> SourceState:
    from stackforge.sources.checkouts import Checkouts, patched_tree

    status = Checkouts(ws, quiet=True).status(src)
    if not status.up_to_date or status.dirty:
        what = "has uncommitted changes" if status.dirty else status.state
        return SourceState(src.name, None, 0, what)
    tree = patched_tree(ws, src)
    epoch = subprocess.run(
        ["git", "log", "-1", "--format=%ct", "HEAD"],
        cwd=ws.checkout(src.name),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return SourceState(src.name, tree, int(epoch))
