"""`stackforge demo`: the whole pipeline on the miniature stack, and a re-run that builds nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stackforge.cli import main


@pytest.mark.build
def test_demo_runs_the_pipeline_and_rerun_rebuilds_nothing(
    tmp_path: Path, build_root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["demo"]) == 0
    folder = tmp_path / "stackforge-demo"  # the default DIR, under the current directory
    captured = capsys.readouterr()
    assert "3 package(s) built, 0 already up to date" in captured.out
    assert f"packages: {folder / 'output'}" in captured.out
    # the installed mini-vllm ran, with every patch of the series in effect
    assert "mini-vllm: archs 6.0,6.1, tile 12, attention(8) = 4.0, compiler path from sm_60" in captured.err
    lock = json.loads((folder / "stackforge.lock").read_text())
    assert sorted(lock["packages"]["pascal"]) == ["mini-torch", "mini-triton", "mini-vllm"]
    assert sorted(p.name for p in (folder / "output" / "logs").glob("*.log")) == [
        "mini-torch.log",
        "mini-triton.log",
        "mini-vllm.log",
    ]
    mtimes = {p: p.stat().st_mtime_ns for p in (folder / "output" / "linux-64").glob("*.conda")}
    assert main(["demo", str(folder)]) == 0
    assert "0 package(s) built, 3 already up to date" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (folder / "output" / "linux-64").glob("*.conda")} == mtimes


@pytest.mark.build
def test_demo_for_volta_in_a_named_dir(
    tmp_path: Path, build_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", str(tmp_path / "v"), "-e", "volta"]) == 0
    captured = capsys.readouterr()
    assert "mini-vllm: archs 7.0" in captured.err
    assert all("_sm70_h" in p.name for p in (tmp_path / "v" / "output" / "linux-64").glob("*.conda"))


def test_demo_refuses_a_folder_it_did_not_make(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`stackforge demo .` inside a real workspace would mix the miniature stack into it."""
    (tmp_path / "git-repos.txt").write_text("# a real workspace\n")
    (tmp_path / "recipes").mkdir()
    assert main(["demo", str(tmp_path)]) == 1
    assert "is not a demo workspace" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["git-repos.txt", "recipes"]  # nothing written
