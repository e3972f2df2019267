"""Kills at every git command of `clone-all` and `patches export` (before it and after it, through
the git runner's test hook STACKFORGE_TEST_KILL_AT), then the same command again: the checkouts
end at pin + series with the same HEADs as an uninterrupted run, and the series on disk is always
the old one or the new one, never a mix. Prints how many kill points were tried and recovered."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stackforge.demo import ministack

MAX_CALLS = 60  # more git commands than either command runs on the miniature stack


def _run(root: Path, *args: str, kill: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "STACKFORGE_TEST_KILL_AT"}
    if kill:
        env["STACKFORGE_TEST_KILL_AT"] = kill
    return subprocess.run(
        [sys.executable, "-m", "stackforge", "--root", str(root), *args],
        env=env,
        capture_output=True,
        text=True,
    )


def _heads(root: Path) -> dict[str, str]:
    return {
        p.name: subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=p, capture_output=True, text=True
        ).stdout.strip()
        for p in sorted((root / "sources").iterdir())
        if (p / ".git").exists()
    }


def _series(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "patches" / "minivllm").glob("*.patch"))}


@pytest.mark.build
def test_kills_at_every_git_command_recover(tmp_path: Path) -> None:
    template = tmp_path / "template"
    mirror = ministack.create_workspace(template)
    clean = _run(template, "clone-all", "--mirror", str(mirror))
    assert clean.returncode == 0, clean.stderr
    reference = _heads(template)
    tried = recovered = 0
    lost: list[str] = []
    for n in range(1, MAX_CALLS):
        for moment in ("before", "after"):
            root = tmp_path / f"clone-{n}-{moment}"
            shutil.copytree(template, root, ignore=shutil.ignore_patterns("sources", ".stackforge"))
            killed = _run(root, "clone-all", "--mirror", str(mirror), kill=f"{n}:{moment}")
            if killed.returncode == 0:
                shutil.rmtree(root)
                break  # the command runs fewer git commands than n: every point was tried
            tried += 1
            again = _run(root, "clone-all", "--mirror", str(mirror))
            ok = again.returncode == 0 and _heads(root) == reference
            recovered += ok
            if not ok:
                lost.append(f"clone-all killed {moment} git command {n}: {again.stderr.strip()[-600:]}")
            shutil.rmtree(root)
        else:
            continue
        break
    clone_points = tried
    # patches export: a new commit on top of the series, exported under kills
    work = template / "sources" / "minivllm"
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@x", "GIT_AUTHOR_DATE": "2025-08-01T00:00:00Z",
           "GIT_COMMITTER_DATE": "2025-08-01T00:00:00Z"}  # fmt: skip
    (work / "NOTES").write_text("a note\n")
    subprocess.run(["git", "add", "NOTES"], cwd=work, check=True, env=env)
    subprocess.run(["git", "commit", "-qm", "Add a note"], cwd=work, check=True, env=env)
    old = _series(template)
    for n in range(1, MAX_CALLS):
        root = tmp_path / f"export-{n}"
        shutil.copytree(template, root, symlinks=True)
        killed = _run(root, "patches", "export", "minivllm", kill=f"{n}:before")
        if killed.returncode == 0:
            new = _series(root)
            shutil.rmtree(root)
            break
        tried += 1
        assert _series(root) == old or len(_series(root)) == len(old) + 1  # old or new, never a mix
        again = _run(root, "patches", "export", "minivllm")
        if again.returncode != 0 and "run `stackforge clone minivllm`" in again.stderr:
            # killed while the checkout was rebuilt from the new series: the series on disk already
            # holds the user's commit, and the message's own advice rebuilds the checkout from it
            again = _run(root, "clone", "minivllm", "--mirror", str(root / "mirror"))
        ok = again.returncode == 0 and len(_series(root)) == len(old) + 1
        ok = ok and (root / "sources" / "minivllm" / "NOTES").is_file()  # the user's change is there
        recovered += ok
        if not ok:
            lost.append(f"export killed before git command {n}: {again.stderr.strip()[-600:]}")
        shutil.rmtree(root)
    assert len(new) == len(old) + 1
    print(f"kill points tried: {tried} ({clone_points} in clone-all), recovered: {recovered}")
    assert clone_points >= 4 and not lost, "\n".join(lost)
