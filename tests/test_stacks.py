"""A stack is data: stacks/<name>/ holds its stack.yaml, git-repos.txt and patches/, and
`--stack NAME` (or STACKFORGE_STACK) makes every command read them; the root holds the default."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from stackforge.cli import main
from stackforge.core.workspace import find_workspace


@pytest.fixture
def two_stacks(tmp_path: Path) -> Path:
    """This project's inputs, plus a second stack whose vLLM is newer."""
    root = tmp_path / "ws"
    root.mkdir()
    for item in ("git-repos.txt", "stack.yaml"):
        shutil.copy2(REPO_ROOT / item, root / item)
    shutil.copytree(REPO_ROOT / "recipes", root / "recipes")
    other = root / "stacks" / "newer"
    (other / "patches" / "vllm").mkdir(parents=True)
    (other / "stack.yaml").write_text(
        'name: newer\npackages:\n  vllm: "9.9.0"\n  pytorch: "9.8.0"\n  triton: "9.7.0"\n'
    )
    lines = [ln for ln in (root / "git-repos.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    pinned = [
        " ".join([*ln.split()[:2], "2" * 40, *ln.split()[3:]]) if ln.startswith("vllm ") else ln
        for ln in lines
    ]
    (other / "git-repos.txt").write_text("\n".join(pinned) + "\n")  # its own vLLM commit
    return root


def test_the_stack_option_moves_every_stack_input(two_stacks: Path, monkeypatch):
    monkeypatch.setenv("STACKFORGE_STACK", "newer")
    ws = find_workspace(two_stacks)
    assert ws.manifest == two_stacks / "stacks" / "newer" / "git-repos.txt"
    assert ws.patches == two_stacks / "stacks" / "newer" / "patches"
    assert ws.lock_file == two_stacks / "stacks" / "newer" / "stackforge.lock"
    assert ws.recipes == two_stacks / "recipes" and ws.output == two_stacks / "output"  # shared
    monkeypatch.delenv("STACKFORGE_STACK")
    assert find_workspace(two_stacks).manifest == two_stacks / "git-repos.txt" and ws.stacks() == ["newer"]


def test_status_and_plan_follow_the_chosen_stack(two_stacks: Path, capsys):
    assert main(["status", "--root", str(two_stacks), "--stack", "newer", "--json"]) == 0
    pins = {r["name"]: r["pin"] for r in json.loads(capsys.readouterr().out)}
    assert pins["vllm"] == "2" * 40 and len(pins) == 9
    # the recipes take the chosen stack's versions; nothing is cloned, so the plan is blocked (exit 1)
    assert (
        main(["build", "--root", str(two_stacks), "--stack", "newer", "-e", "pascal", "--dry-run", "--json"])
        == 1
    )
    plan = {i["package"]: i["version"] for i in json.loads(capsys.readouterr().out)["plan"]}
    assert plan == {"triton-llvm": "9.7.0", "triton": "9.7.0", "pytorch": "9.8.0", "vllm": "9.9.0"}
    assert main(["build", "--root", str(two_stacks), "-e", "pascal", "--dry-run", "--json"]) == 1
    default = {i["package"]: i["version"] for i in json.loads(capsys.readouterr().out)["plan"]}
    assert default["vllm"] == "0.14.0"


def test_doctor_says_which_stack_it_checks(two_stacks: Path, capsys, monkeypatch):
    monkeypatch.setenv("STACKFORGE_NVIDIA_SMI", str(two_stacks / "no-such-nvidia-smi"))
    main(["doctor", "--root", str(two_stacks), "--stack", "newer", "--json"])
    assert json.loads(capsys.readouterr().out)["stack"] == "newer: vllm 9.9.0, pytorch 9.8.0, triton 9.7.0"


def test_an_unknown_stack_is_a_usage_error(two_stacks: Path, capsys):
    assert main(["status", "--root", str(two_stacks), "--stack", "missing"]) == 2
    assert "no stack 'missing'" in capsys.readouterr().err
