"""Kills at random points of a miniature build and of `lock`: after each, the channel holds only
whole packages, the index matches the files, and the same command run again finishes with the
byte-identical packages an uninterrupted build makes. Prints how many kill points were tried and
how many recovered (run with -s to see it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from minihelpers import MiniWs

from stackforge.build import channel
from stackforge.core.files import sha256_file

KILL_AFTER = (0.3, 0.7, 1.1, 1.5, 2.0, 2.6, 3.3, 4.2)  # seconds into `stackforge build`


def _start(mini: MiniWs, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "stackforge", "--root", str(mini.root), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # the kill takes rattler-build's children (cmake, ninja) with it
    )


def _kill_after(proc: subprocess.Popen, seconds: float) -> bool:
    """SIGKILL the command's whole process group after `seconds`; False if it had finished."""
    try:
        proc.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


def _channel_is_whole(mini: MiniWs) -> None:
    out = mini.root / "output"
    for sub in channel.SUBDIRS:
        partials = list((out / sub).glob(".*.partial"))  # a killed copy: never a current name
        assert all(p.name.startswith(".") for p in partials)
    current = {p.name for p in channel.packages(out)}
    assert all(name.endswith(".conda") for name in current)
    for path in channel.packages(out):  # every current package is a whole .conda (a zip)
        assert path.read_bytes()[:2] == b"PK", path


@pytest.mark.build
def test_kills_during_build_and_lock_recover(mini: MiniWs, tmp_path: Path) -> None:
    reference = None
    tried = recovered = 0
    for seconds in KILL_AFTER:
        for folder in (mini.root / "output", mini.root / ".stackforge"):
            subprocess.run(["rm", "-rf", str(folder)], check=True)
        killed = _kill_after(_start(mini, "build", "-e", "pascal"), seconds)
        _channel_is_whole(mini)
        assert mini.run("build", "-e", "pascal") == 0  # the same command repairs and finishes
        shas = {p.name: sha256_file(p) for p in channel.packages(mini.root / "output")}
        assert channel.indexed_files(mini.root / "output") == set(shas)
        reference = reference or shas
        assert shas == reference  # byte-identical to the builds that were not interrupted
        tried += killed
        recovered += killed
    lock = mini.root / "stackforge.lock"
    assert mini.run("lock") == 0
    before = lock.read_bytes()
    for seconds in (0.05, 0.15, 0.3, 0.5):
        killed = _kill_after(_start(mini, "lock"), seconds)
        json.loads(lock.read_text())  # the old lock or the new one, never a part
        assert lock.read_bytes() == before  # same inputs: the same lock
        tried += killed
        recovered += killed
    print(f"kill points tried: {tried}, recovered: {recovered}")
    assert tried >= 4 and recovered == tried
