"""`stackforge stack new` on the real vLLM 0.33.0 sdist and the torch 2.14.0 / triton 3.8.0
wheels (marker `upstream`: about 70 MB into the stackforge cache once, less when the other
upstream tests filled it). What it reads must be what stacks/vllm-0.33 was written from by hand
(its git-repos.txt, its NOTES.md verdicts for the 0.14 series), and that stack's own series
must come out clean."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import REPO_ROOT, online

from stackforge.cli import main
from stackforge.core.workspace import Workspace
from stackforge.spec.manifest import load_manifest
from stackforge.spec.stack import load_stack

pytestmark = pytest.mark.upstream


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This project's default stack and stacks/vllm-0.33, copied (stack new writes into stacks/)."""
    root = tmp_path_factory.mktemp("ws")
    for item in ("git-repos.txt", "stack.yaml"):
        shutil.copy2(REPO_ROOT / item, root / item)
    shutil.copytree(REPO_ROOT / "patches", root / "patches")
    shutil.copytree(REPO_ROOT / "stacks" / "vllm-0.33", root / "stacks" / "vllm-0.33")
    return root


def _new(root: Path, name: str, source: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    code = online(
        lambda: main(
            ["--root", str(root), "stack", "new", name, "--vllm", "0.33.0", "--from", source, "--json"]
        )
    )
    return code, json.loads(capsys.readouterr().out)


def _verdicts(report: dict) -> dict[str, list[str]]:
    return {s["name"]: [v["verdict"] for v in s["verdicts"]] for s in report["series"]}


def test_the_0_14_series_on_0_33_0_gets_the_verdicts_of_the_notes(workspace: Path, capsys) -> None:
    code, report = _new(workspace, "from-default", "default", capsys)
    assert code == 1 and report["versions"] == load_stack(Workspace(REPO_ROOT, "vllm-0.33")).versions
    verdicts = _verdicts(report)
    # NOTES.md: every vllm patch fails but 0005, which applies only by a 3-way merge (0022 came later)
    vllm_series = next(s for s in report["series"] if s["name"] == "vllm")["verdicts"]
    vllm = {v["patch"][:4]: v["verdict"] for v in vllm_series}
    assert {p for p, v in vllm.items() if v == "3way"} == {"0005", "0022"}
    assert {v for p, v in vllm.items() if p not in ("0005", "0022")} == {"conflict"}
    assert verdicts["pytorch"] == ["conflict"] and verdicts["triton"] == ["conflict"] * 3
    # the pins stacks/vllm-0.33/git-repos.txt holds are exactly the ones read here, and its '-'
    # lines (to be resolved) are the ones `stack new` could only comment out
    stack = load_manifest(REPO_ROOT / "stacks/vllm-0.33/git-repos.txt").sources
    theirs = {s.name: s.commit for s in stack if s.resolved}
    ours = {s.name: s.commit for s in load_manifest(workspace / "stacks/from-default/git-repos.txt").sources}
    assert ours == theirs
    new = (workspace / "stacks/from-default/git-repos.txt").read_text()
    assert {s.name for s in stack if not s.resolved} == set(re.findall(r"^#(\S+) +https://", new, re.M))


def test_the_0_33_series_is_clean_on_its_release(workspace: Path, capsys) -> None:
    code, report = _new(workspace, "from-033", "vllm-0.33", capsys)
    assert code == 0 and report["conflicts"] == []
    assert set(_verdicts(report)) == {"vllm", "pytorch", "triton"}
    assert {v for vs in _verdicts(report).values() for v in vs} == {"clean"}
