"""`audit kernels --vllm-src pypi[:X.Y.Z]`: audit before cloning anything, from the release's PyPI
sdist with the workspace's vllm series applied (cached by the series' digest); without a checkout
and without the option, a usage error that says so."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import online

from stackforge.verify.upstream import repos

REPO = Path(__file__).resolve().parents[1]


def workspace(root: Path) -> Path:
    """This repository's stack, manifest, series and GPU environments, nothing cloned."""
    shutil.copytree(REPO / "recipes" / "variants", root / "recipes" / "variants")
    shutil.copytree(REPO / "patches", root / "patches")
    for name in ("git-repos.txt", "stack.yaml"):
        shutil.copy(REPO / name, root / name)
    return root


def audit(root: Path, *extra: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "stackforge", "--root", str(root), "audit", "kernels", "-e", "pascal"]
    return subprocess.run([*argv, *extra], capture_output=True, text=True)


def test_no_checkout_and_no_option_is_a_usage_error(tmp_path: Path) -> None:
    done = audit(workspace(tmp_path / "ws"))
    assert done.returncode == 2, done.stderr
    assert "is not cloned" in done.stderr and "--vllm-src pypi" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_folder_that_is_not_a_vllm_tree_is_a_usage_error(tmp_path: Path) -> None:
    done = audit(workspace(tmp_path / "ws"), "--vllm-src", str(tmp_path))
    assert done.returncode == 2 and "not a vLLM source tree" in done.stderr, done.stderr


@pytest.mark.upstream
def test_audit_of_the_pypi_sdist_with_the_series(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = workspace(tmp_path / "ws")
    series = sorted((root / "patches" / "vllm").glob("*.patch"))
    tree = online(lambda: repos.patched_sdist_tree("0.14.0", series))
    assert (tree / "vllm").is_dir() and repos.patched_sdist_tree("0.14.0", series) == tree  # cached
    done = audit(
        root, "--vllm-src", "pypi", "--kernels", "unified_attention_2d", "--head-sizes", "64", "--json"
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["summary"]["failed"] == 0 and data["summary"]["compiles"] > 0
    assert str(tree) in done.stderr.replace("\n", "")
    # a changed series is another tree: the cache never serves a stale patch set
    (root / "patches" / "vllm" / series[-1].name).write_text(series[-1].read_text() + "\n")
    assert repos.patched_sdist_tree("0.14.0", sorted((root / "patches" / "vllm").glob("*.patch"))) != tree
