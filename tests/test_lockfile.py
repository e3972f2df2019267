"""`stackforge lock` and `lock --check` on the miniature stack."""

from __future__ import annotations

import hashlib
import json

import pytest
from minihelpers import MiniWs


@pytest.mark.build
def test_lock_records_sources_patches_trees_and_packages(built: MiniWs) -> None:
    assert built.run("lock") == 0
    path = built.root / "stackforge.lock"
    text = path.read_text()
    lock = json.loads(text)
    vllm = lock["sources"]["minivllm"]
    assert vllm["url"] == "https://example.invalid/stackforge-demo/minivllm.git"
    assert [p["file"] for p in vllm["patches"]] == [
        "0001-support-pascal-and-volta.patch",
        "0002-smaller-tiles-for-48k-smem.patch",
    ]
    patch = built.root / "patches" / "minivllm" / "0001-support-pascal-and-volta.patch"
    assert vllm["patches"][0]["sha256"] == hashlib.sha256(patch.read_bytes()).hexdigest()
    assert len(vllm["patched_tree"]) == 40
    packages = lock["packages"]["pascal"]
    assert sorted(packages) == ["mini-torch", "mini-triton", "mini-vllm"]
    for entry in packages.values():
        file = built.channel / entry["file"]
        assert entry["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    assert "volta" not in lock["packages"]  # nothing built for it
    assert text == json.dumps(lock, indent=2, sort_keys=True) + "\n"  # sorted, stable
    assert built.run("lock") == 0
    assert path.read_text() == text  # same state, same bytes
    assert built.run("lock", "--check") == 0


@pytest.mark.build
def test_lock_check_names_a_changed_patch(built: MiniWs, capsys: pytest.CaptureFixture[str]) -> None:
    assert built.run("lock") == 0
    built.edit_patch("minivllm", "MINICUTLASS_TILE(49152)", "MINICUTLASS_TILE(32768)")
    assert built.run("lock", "--check") == 1
    captured = capsys.readouterr()
    assert "sources.minivllm.patches: 0002-smaller-tiles-for-48k-smem.patch changed (sha256" in captured.out
    assert "does not match the workspace" in captured.err


@pytest.mark.build
def test_lock_check_names_rebuilt_packages_and_new_trees(
    built: MiniWs, capsys: pytest.CaptureFixture[str]
) -> None:
    assert built.run("lock") == 0
    built.edit_patch("minitorch", "{ return 60; }", "{ return 61; }")
    built.sync()
    built.build()
    assert built.run("lock", "--check") == 1
    out = capsys.readouterr().out
    assert "sources.minitorch.patched_tree: lock has" in out
    assert "packages.pascal.mini-torch.file: lock has linux-64/mini-torch-0.1.0-cuda129_sm60_61_h" in out
    assert "packages.pascal.mini-vllm.sha256" in out
    assert "mini-triton" not in out


def test_lock_needs_current_checkouts(mini: MiniWs, capsys: pytest.CaptureFixture[str]) -> None:
    mini.edit_patch("minitorch", "{ return 60; }", "{ return 62; }")
    assert mini.run("lock") == 1
    assert "cannot lock: checkouts not at pin + series: minitorch" in capsys.readouterr().err
    assert mini.run("lock", "--check") == 1  # no lock yet
