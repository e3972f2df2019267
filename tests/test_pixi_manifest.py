"""pixi.toml cannot be run here (no pixi binary, no conda-forge), so it is checked by schema, by
its agreement with the variant files, and by running every task's command on a workspace."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import REPO_ROOT, SCHEMAS

from stackforge.cli import main
from stackforge.core.workspace import Workspace
from stackforge.demo import ministack
from stackforge.spec.envs import load_env

PIXI = tomllib.loads((REPO_ROOT / "pixi.toml").read_text())

# What each task is run with here, on the miniature stack (real sources from a local mirror, real
# rattler-build builds), cloned and built before the first task runs. A task with no entry fails
# the test: every new task must say how it is checked. Three run with --help only, each for a
# reason: serve and run-simple need a GPU (their real paths run in test_run_simple.py against
# nvidia-smi stand-ins), and the miniature packages carry no CUDA code for `audit binaries`
# (test_binary_audit.py runs it on real cubins).
PROBES: dict[str, list[str]] = {
    "clone-all": [],
    "clone": ["minivllm"],
    "status": [],
    "patches-check": [],
    "patches-export": ["minivllm", "--dry-run"],
    "test": ["--collect-only", "-q", "tests/test_manifest.py"],
    "lint": [],
    "serve": ["--help"],
    "run-simple": ["--help"],
    "audit": ["binaries", "--help"],
    "build-cuda": [],
    "verify": ["mini-torch"],
    "lock": [],
    "demo": ["demo-here"],
    "doctor": ["--json"],  # no GPU here: a plain report, exit 0
}


def all_tasks() -> dict[str, dict]:
    tasks = dict(PIXI.get("tasks", {}))
    for feature in PIXI.get("feature", {}).values():
        tasks.update(feature.get("tasks", {}))
    return {name: (t if isinstance(t, dict) else {"cmd": t}) for name, t in tasks.items()}


@pytest.mark.parametrize("manifest", ["pixi.toml", "runtime/pixi.toml"])
def test_manifest_validates_against_pixi_schema(manifest: str):
    schema_file = SCHEMAS / "pixi-manifest.schema.json"
    if not schema_file.is_file():
        pytest.skip(f"schemas not found at {SCHEMAS} (they live beside the project, in ../shared/schemas)")
    import jsonschema

    schema = json.loads(schema_file.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    data = tomllib.loads((REPO_ROOT / manifest).read_text())
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_gpu_environments_agree_with_variant_files():
    ws = Workspace(REPO_ROOT)
    for env in ("pascal", "volta"):
        activation = PIXI["feature"][env]["activation"]["env"]
        gpu = load_env(ws, env)
        assert activation["STACKFORGE_ENV"] == env
        assert activation["TORCH_CUDA_ARCH_LIST"] == gpu.torch_cuda_arch_list
        assert gpu.cuda_version.startswith("12.")
        assert env in PIXI["environments"]
    assert load_env(ws, "pascal").archs == (60, 61) and load_env(ws, "volta").archs == (70,)
    assert PIXI["feature"]["cuda-build"]["dependencies"]["cuda-version"].startswith("12.")


def test_every_task_is_described_and_probed():
    tasks = all_tasks()
    assert {"clone-all", "clone", "status", "test"} <= set(tasks)
    missing = sorted(set(tasks) - set(PROBES))
    assert not missing, f"tasks without a probe in {__file__}: {missing}"
    for name, task in tasks.items():
        assert task.get("description"), f"task {name} has no description"


@pytest.fixture(scope="module")
def task_workspace(tmp_path_factory, session_build_root: Path) -> Path:
    """The miniature stack as a workspace, with this project's pixi.toml and run_simple.sh:
    cloned through its mirror and built for pascal, so every task meets a real workspace."""
    root = tmp_path_factory.mktemp("pixi-tasks") / "ws"
    mirror = ministack.create_workspace(root)
    for item in ("pixi.toml", "pyproject.toml", "run_simple.sh"):
        shutil.copy2(REPO_ROOT / item, root / item)
    for item in ("src", "tests", "benchmarks"):
        (root / item).symlink_to(REPO_ROOT / item)
    assert main(["--root", str(root), "clone-all", "--mirror", str(mirror)]) == 0
    assert main(["--root", str(root), "build", "-e", "pascal"]) == 0
    return root


@pytest.mark.parametrize("name", sorted(all_tasks()))
def test_task_command_runs(name: str, task_workspace: Path):
    task = all_tasks()[name]
    if name not in PROBES:
        pytest.fail(f"task {name} has no probe")
    bindir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
        "PIXI_PROJECT_ROOT": str(task_workspace),
        "STACKFORGE_ROOT": str(task_workspace),
        "STACKFORGE_ENV": "pascal",
        "STACKFORGE_MIRROR": str(task_workspace / "mirror"),
        "TORCH_CUDA_ARCH_LIST": "6.0;6.1",
    }
    # pixi appends the user's extra arguments to the command, as done here
    command = " ".join([task["cmd"], *PROBES[name]])
    proc = subprocess.run(
        ["bash", "-c", command], cwd=task_workspace, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, (
        f"{name}: `{command}` exited {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    )


def test_test_environment_matches_pyproject_test_extra():
    """`pixi run test` and `pip install -e '.[test]'` must install the same pinned tools."""
    import re

    extra = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][
        "test"
    ]
    pinned = {m.group(1).lower(): m.group(2) for r in extra if (m := re.fullmatch(r"([\w.-]+)==([\w.]+)", r))}
    pypi = {k.lower(): v for k, v in PIXI["feature"]["test"]["pypi-dependencies"].items()}
    for name, version in pinned.items():
        assert pypi.get(name) == f"=={version}", (
            f"pixi.toml [feature.test.pypi-dependencies] lacks {name}=={version}"
        )
