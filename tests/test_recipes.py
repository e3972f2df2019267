"""The real recipes (recipes/triton-llvm, triton, pytorch, vllm) and the miniature ones: schema,
rendering for each GPU environment, build order, cache-key dependencies, exact pins, and
agreement with git-repos.txt. The real packages cannot be built here (no conda-forge, no CUDA
12.9 toolchain); they are rendered by rattler-build itself."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT, SCHEMAS

from stackforge.build import recipes
from stackforge.build.plan import consumed_sources, source_env
from stackforge.core.workspace import Workspace
from stackforge.demo import ministack
from stackforge.spec.envs import load_env
from stackforge.spec.manifest import load_manifest
from stackforge.spec.stack import stack_context

WS = Workspace(REPO_ROOT)
REAL = sorted(p.name for p in recipes.recipe_folders(WS))


def _validator():
    schema_file = SCHEMAS / "rattler-recipe.schema.json"
    if not schema_file.is_file():
        pytest.skip(f"schemas not found at {SCHEMAS} (they live beside the project, in ../shared/schemas)")
    import jsonschema

    schema = json.loads(schema_file.read_text())
    return jsonschema.validators.validator_for(schema)(schema)


def _errors(validator, path: Path) -> list[str]:
    data = yaml.safe_load(path.read_text())
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.path))
    return [f"{path}: {'/'.join(map(str, e.path))}: {e.message[:300]}" for e in errors]


def test_the_stack_has_its_recipes() -> None:
    assert REAL == ["pytorch", "triton", "triton-llvm", "vllm"]


@pytest.mark.parametrize("name", REAL)
def test_real_recipe_validates_against_schema(name: str) -> None:
    assert not _errors(_validator(), WS.recipes / name / "recipe.yaml")


def test_miniature_recipes_validate_against_schema(tmp_path: Path) -> None:
    validator = _validator()
    ministack.create_workspace(tmp_path)
    for folder in recipes.recipe_folders(Workspace(tmp_path)):
        assert not _errors(validator, folder / "recipe.yaml")


@pytest.mark.parametrize(("env", "tag"), [("pascal", "cuda129_sm60_61"), ("volta", "cuda129_sm70")])
def test_real_recipes_render_for_each_environment(env: str, tag: str) -> None:
    found = recipes.discover(WS, load_env(WS, env))
    assert recipes.build_order(found) == ["triton-llvm", "triton", "pytorch", "vllm"]
    for recipe in found.values():
        assert recipe.build_string == f"{tag}_h{recipes.PLACEHOLDER_HASH}_0", recipe.name
    # cache keys: a triton patch rebuilds triton only, a pytorch patch pytorch and vllm
    assert recipes.key_deps(found["vllm"], found) == ("pytorch",)
    assert recipes.key_deps(found["triton"], found) == ("triton-llvm",)
    assert recipes.key_deps(found["pytorch"], found) == ()
    assert "triton" in found["vllm"].run and "triton" in found["pytorch"].run  # run time only
    assert found["pytorch"].gib_per_job == 4 and found["vllm"].gib_per_job == 5


def test_exact_pins_where_the_abi_demands() -> None:
    import rattler_build as rb

    ctx = recipes.placeholder_context(REAL, stack_context(WS), load_env(WS, "pascal"))
    ctx.update(pytorch_version="2.9.1", pytorch_build="cuda129_sm60_61_h1a2b3c4d_0", triton_version="3.5.1")
    ctx.update(triton_llvm_version="3.5.1", triton_llvm_build="cuda129_sm60_61_h99999999_0")
    variant = rb.VariantConfig.from_file(WS.variants / "pascal.yaml")

    def requirements(name: str) -> dict:
        stage0 = rb.Stage0Recipe.from_file(WS.recipes / name / "recipe.yaml")
        return stage0.render(variant, rb.RenderConfig(extra_context=ctx))[0].recipe.requirements.to_dict()

    vllm = requirements("vllm")
    exact_torch = "pytorch ==2.9.1 cuda129_sm60_61_h1a2b3c4d_0"
    assert exact_torch in vllm["host"] and exact_torch in vllm["run"]
    assert "triton ==3.5.1 cuda129_sm60_61_*" in vllm["run"]  # same CUDA and archs, any key
    assert "triton-llvm ==3.5.1 cuda129_sm60_61_h99999999_0" in requirements("triton")["host"]
    torch = requirements("pytorch")
    assert "cudnn ==9.10.2.21" in torch["host"] and "cudnn ==9.10.2.21" in torch["run"]
    assert "triton ==3.5.1 cuda129_sm60_61_*" in torch["run"]


def test_recipes_copy_exactly_the_sources_git_repos_gives_them() -> None:
    manifest = load_manifest(WS.manifest)
    found = recipes.discover(WS, load_env(WS, "pascal"))
    consumed = {name: {s.name for s in consumed_sources(r, manifest)} for name, r in found.items()}
    assert consumed == {
        "triton-llvm": {"llvm-project"},
        "triton": {"triton"},
        "pytorch": {"pytorch"},
        "vllm": {"vllm", "flash-attention", "cutlass", "flashmla", "qutlass", "triton-kernels"},
    }
    assert {s.name for s in manifest.sources} == set().union(*consumed.values())


def test_each_source_env_var_is_exported_where_git_repos_says(tmp_path: Path) -> None:
    """git-repos.txt `env=VAR subdir=PATH` means: the consumer's build gets sources/<name>/PATH as
    $VAR. The engine hands the pairs to the recipe (stackforge_source_env), and the shared
    preamble, run here by bash as the build runs it, exports them under $SRC_DIR."""
    manifest = load_manifest(WS.manifest)
    preamble = WS.recipes / "common" / "preamble.sh"
    for consumer in sorted({s.consumer for s in manifest.sources}):
        recipe = yaml.safe_load((WS.recipes / consumer / "recipe.yaml").read_text())
        targets = {Path(e["path"]).name: e.get("target_directory") for e in recipe["source"]}
        sources = [s for s in manifest.sources if s.consumer == consumer]
        for src in sources:
            assert targets[src.name] == src.name, f"{consumer}: sources/{src.name} not at $SRC_DIR/{src.name}"
        assert recipe["build"]["script"]["env"]["STACKFORGE_SOURCE_ENV"] == "${{ stackforge_source_env }}"
        wanted = {
            s.env: f"{tmp_path}/{s.name}" + (f"/{s.subdir}" if s.subdir else "") for s in sources if s.env
        }
        names = " ".join(wanted)
        shown = subprocess.run(
            ["bash", "-c", f'. "{preamble}" 2>/dev/null; for v in {names}; do echo "$v=${{!v}}"; done'],
            env={
                "PATH": os.environ["PATH"],
                "SRC_DIR": str(tmp_path),
                "STACKFORGE_SOURCE_ENV": source_env(sources),
            },
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert shown == [f"{var}={path}" for var, path in wanted.items()], consumer


@pytest.mark.parametrize("name", REAL)
def test_build_scripts_keep_settings_out_of_the_package(name: str) -> None:
    script = (WS.recipes / name / "build.sh").read_text()
    recipe = yaml.safe_load((WS.recipes / name / "recipe.yaml").read_text())
    assert recipe["build"]["script"]["secrets"] == ["STACKFORGE_BUILD_ENV"]
    # lint (reads shell text): the shared preamble comes first, and it reads the secret with xtrace
    # off (it may hold remote compile-cache credentials)
    assert '. "$RECIPE_DIR/../common/preamble.sh"' in script.split("\n\n")[1]
    preamble = (WS.recipes / "common" / "preamble.sh").read_text()
    assert re.search(r'\{ set \+x; \} 2>/dev/null\neval "\$\{STACKFORGE_BUILD_ENV:-\}"\nset -x', preamble)
    assert recipe["build"]["script"]["env"]["SOURCE_DATE_EPOCH"] == "${{ stackforge_source_date_epoch }}"
    for source in recipe["source"]:
        assert source["filter"]["exclude"] == [".git", "**/.git"] and source["use_gitignore"] is False


def test_every_export_in_the_build_scripts_says_why() -> None:
    """Lint (reads shell text). conda-forge style: each flag has its reason on its line, or heads a block of exports whose
    comment says why (the line above the block)."""
    for name in REAL:
        lines = (WS.recipes / name / "build.sh").read_text().splitlines()
        for i, line in enumerate(lines):
            if not line.startswith("export ") or "#" in line:
                continue
            j = i - 1
            while j >= 0 and lines[j].startswith("export "):
                j -= 1
            assert j >= 0 and lines[j].lstrip().startswith("#"), (
                f"recipes/{name}/build.sh:{i + 1}: {line!r} has no reason"
            )
