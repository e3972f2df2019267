"""The state of a patched checkout that a build or a lock records: its git tree and commit time."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
import yaml
from filelock import FileLock
from stackforge.build import machine as buildenv
from stackforge.build import channel
from stackforge.build import recipes
from stackforge.core.console import Failure, UsageError, err, print_json
from stackforge.spec.envs import GpuEnv, load_env
from stackforge.spec.manifest import Manifest, Source, load_manifest
from stackforge.build.recipes import Recipe
from stackforge.build.repack import (
    REPACK_VERSION,
    compare_packages,
    normalize_package,
    path_replacements,
    sha256_file,
    zstd_version,
)
from stackforge.core.workspace import Workspace, find_workspace


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
