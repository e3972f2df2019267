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
    "pins-resolve": [],  # every line of the miniature stack is pinned: reads nothing, exit 0
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
    assert PIXI["dependencies"]["cuda-version"].startswith(
        "12."
    )  # every environment: the build audits with it


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


# --- what a first real `pixi install` / `pixi run build-cuda` meets (docs/recipes-vs-feedstocks.md) ---

RUNTIME = tomllib.loads((REPO_ROOT / "runtime" / "pixi.toml").read_text())


def _tables(manifest: dict) -> list[dict]:
    return [manifest, *manifest.get("feature", {}).values()]


def test_building_has_no_cuda_system_requirement():
    """pixi 0.71+ refuses an environment whose `cuda` system requirement the machine's driver
    does not meet (unless CONDA_OVERRIDE_CUDA is set); building needs no GPU, running does."""
    for table in _tables(PIXI):
        assert "cuda" not in table.get("system-requirements", {}), table.get("system-requirements")
    assert RUNTIME["system-requirements"]["cuda"] == "12"


def test_default_environment_needs_no_unreleased_conda_package():
    """py-rattler >=0.28 / py-rattler-build >=0.73: conda-forge's feedstocks stop at 0.23.2 /
    0.67.0. They come from PyPI as dependencies of the editable stackforge install."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for manifest in (PIXI, RUNTIME):
        for table in _tables(manifest):
            for name in ("py-rattler", "py-rattler-build"):
                assert name not in table.get("dependencies", {}), name
        assert manifest["pypi-dependencies"]["stackforge"]["editable"] is True
    assert {"py-rattler>=0.28", "py-rattler-build>=0.73"} <= set(project)


def test_build_task_works_from_the_default_environment(task_workspace: Path):
    """`pixi run build-cuda -e pascal` runs the task in the default environment with `-e pascal`
    appended: no STACKFORGE_ENV, no TORCH_CUDA_ARCH_LIST, none of the pascal feature's packages."""
    assert "build-cuda" in PIXI["tasks"]  # a workspace task: every environment has it
    assert not any("build-cuda" in f.get("tasks", {}) for f in PIXI["feature"].values())
    env = {k: v for k, v in os.environ.items() if k not in ("STACKFORGE_ENV", "TORCH_CUDA_ARCH_LIST")}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        STACKFORGE_ROOT=str(task_workspace),
    )
    proc = subprocess.run(
        ["bash", "-c", f"{PIXI['tasks']['build-cuda']['cmd']} -e pascal --dry-run"],
        cwd=task_workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "build plan for pascal" in proc.stdout + proc.stderr  # rich writes the plan to stderr


# == pins of runtime/pixi.toml and the conda-forge feedstock (recipe file, commit) that shows the
# version; a pin not here was not checked against conda-forge and fails the test
CONDA_FORGE_PINS = {
    "lm-format-enforcer": ("0.11.3", "lm-format-enforcer-feedstock recipe/meta.yaml"),
    "outlines-core": ("0.2.11", "outlines-core-feedstock recipe/recipe.yaml"),
    "diskcache": ("5.6.3", "diskcache-feedstock recipe/meta.yaml"),
    "lark": ("1.2.2", "lark-feedstock recipe/meta.yaml"),
    "xgrammar": ("0.1.32", "xgrammar-feedstock recipe/recipe.yaml @7376b54 (0.1.29 never built)"),
    "compressed-tensors": ("0.13.0", "compressed-tensors-feedstock recipe/meta.yaml"),
    "anthropic": ("0.71.0", "anthropic-feedstock recipe/meta.yaml"),
    "numba": ("0.61.2", "numba-feedstock recipe/meta.yaml"),
}


def test_runtime_exact_pins_exist_on_conda_forge():
    exact = {
        n: s[2:] for n, s in RUNTIME["dependencies"].items() if isinstance(s, str) and s.startswith("==")
    }
    assert exact == {n: v for n, (v, _) in CONDA_FORGE_PINS.items()}


def test_pypi_packages_cannot_replace_our_torch():
    """pixi hands uv the conda packages by PyPI name; for a channel other than conda-forge it
    knows none (same-name heuristic off), so ../output's mapping names them, and no PyPI
    dependency is one of our three."""
    mapping = RUNTIME["workspace"]["conda-pypi-map"]["../output"]["mapping"]
    assert mapping == {"pytorch": "torch", "triton": "triton", "vllm": "vllm"}
    assert RUNTIME["workspace"]["requires-pixi"] == ">=0.71"  # per-channel maps
    for table in _tables(RUNTIME):
        assert not {"torch", "pytorch", "triton", "vllm"} & set(table.get("pypi-dependencies", {}))
