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


# --- traps of a first real build (docs/recipes-vs-feedstocks.md) --------------------------------


def _rendered(name: str, env: str = "pascal") -> dict:
    import rattler_build as rb

    ctx = recipes.placeholder_context(REAL, stack_context(WS), load_env(WS, env))
    variant = rb.VariantConfig.from_file(WS.variants / f"{env}.yaml")
    stage0 = rb.Stage0Recipe.from_file(WS.recipes / name / "recipe.yaml")
    return stage0.render(variant, rb.RenderConfig(extra_context=ctx))[0].recipe.to_dict()


def _names(specs: list[str]) -> set[str]:
    return {s.split()[0].split("[")[0] for s in specs if isinstance(s, str)}  # pin_compatible() stays a dict


def _preimages(patch: str) -> dict[str, list[str]]:
    """The files a patch expects, rebuilt from its own hunks (context and removed lines at the
    hunk's line numbers, filler elsewhere): `git apply --check` on them proves the patch is
    well-formed and its line counts right; the context itself is what the feedstock's patch for
    the same release shows (cited in each patch's header and in recipe.yaml)."""
    files: dict[str, list[str]] = {}
    current: list[str] = []
    lines = patch.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("--- a/"):
            current = files.setdefault(lines[i + 1][len("+++ b/") :], [])
            i += 2
            continue
        m = re.match(r"@@ -(\d+),(\d+) \+\d+,\d+ @@", line)
        if m:
            start, count = int(m.group(1)), int(m.group(2))
            while len(current) < start - 1:
                current.append(f"# filler {len(current) + 1}")
            i += 1
            taken = 0
            while taken < count and i < len(lines):
                if lines[i][:1] in (" ", "-"):
                    current.append(lines[i][1:])
                    taken += 1
                i += 1
            continue
        i += 1
    return files


@pytest.mark.parametrize("name", ["triton", "pytorch"])
def test_recipe_patches_are_listed_and_apply(name: str, tmp_path: Path) -> None:
    folder = WS.recipes / name
    listed = [p for s in _rendered(name)["source"] for p in s.get("patches", [])]
    assert listed and sorted(listed) == sorted(
        f"patches/{p.name}" for p in (folder / "patches").glob("*.patch")
    )
    for rel in listed:
        text = (folder / rel).read_text()
        tree = tmp_path / Path(rel).stem
        for path, content in _preimages(text).items():
            (tree / path).parent.mkdir(parents=True, exist_ok=True)
            (tree / path).write_text("\n".join([*content, "# end"]) + "\n")
        subprocess.run(["git", "apply", "--check", "-p1", str(folder / rel)], cwd=tree, check=True)


def test_triton_builds_without_werror() -> None:
    """triton-feedstock@9ffe6be (3.5.1) shows this line in CMakeLists.txt: our patch must take
    -Werror out of exactly it, and leave every other flag."""
    upstream = (
        '  set(CMAKE_CXX_FLAGS "${CMAKE_CXX_FLAGS} -Werror -Wno-covered-switch-default -fvisibility=hidden")'
    )
    patch = (
        WS.recipes / "triton" / "patches" / "0001-cmake-do-not-turn-warnings-into-errors.patch"
    ).read_text()
    assert f"-{upstream}\n" in patch
    assert f"+{upstream.replace(' -Werror', '')}\n" in patch


def _run_unit_test_switch(tmp_path: Path, cmake: str) -> subprocess.CompletedProcess:
    (tmp_path / "CMakeLists.txt").write_text(cmake)
    script = WS.recipes / "triton" / "no-unit-tests.sh"
    return subprocess.run(
        ["bash", "-c", f'set -e; . "{script}"'], cwd=tmp_path, capture_output=True, text=True
    )


def test_triton_unit_tests_are_switched_off_in_cmake(tmp_path: Path) -> None:
    """Runs the step build.sh sources: the option's default becomes OFF (so CMake never reaches
    FetchContent(googletest)), and a tree without the option line stops the build."""
    cmake = (
        'option(TRITON_BUILD_PYTHON_MODULE "Build Python Triton bindings" OFF)\n'
        'option(TRITON_BUILD_PROTON "Build the Triton Proton profiler" ON)\n'
        'option(TRITON_BUILD_UT "Build C++ Triton Unit Tests" ON)\n'
        "if(TRITON_BUILD_UT)\n  include(AddTritonUnitTest)\nendif()\n"
    )
    done = _run_unit_test_switch(tmp_path, cmake)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "CMakeLists.txt").read_text() == cmake.replace('Unit Tests" ON)', 'Unit Tests" OFF)')
    missing = _run_unit_test_switch(tmp_path, "project(triton)\n")
    assert missing.returncode != 0 and "TRITON_BUILD_UT" in missing.stderr
    script = (WS.recipes / "triton" / "build.sh").read_text()
    assert script.index('. "$RECIPE_DIR/no-unit-tests.sh"') < script.index("pip install")
    assert "export TRITON_BUILD_UT" not in script  # it would read as if it worked


def _pytorch_exports(pattern: str, env: dict[str, str]) -> dict[str, str]:
    lines = [
        line
        for line in (WS.recipes / "pytorch" / "build.sh").read_text().splitlines()
        if re.match(rf"export ({pattern})=", line)
    ]
    names = [line.split()[1].split("=")[0] for line in lines]
    out = subprocess.run(
        ["bash", "-c", "\n".join([*lines, *(f'echo "{n}=${{{n}}}"' for n in names)])],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


def test_pytorch_roots_cuda_at_the_host_prefix() -> None:
    got = _pytorch_exports(
        "IN_PYTORCH_BUILD|CUDAToolkit_[A-Za-z_]+|CUDA_TOOLKIT_ROOT_DIR|CUDA_HOME",
        {"PREFIX": "/host", "BUILD_PREFIX": "/build"},
    )
    assert got == {
        "CUDA_HOME": "/build",  # nvcc
        "IN_PYTORCH_BUILD": "1",  # patches/0001: the compiler's root does not win
        "CUDAToolkit_ROOT": "/host",
        "CUDAToolkit_ROOT_DIR": "/host",
        "CUDA_TOOLKIT_ROOT_DIR": "/host",
        "CUDAToolkit_BIN_DIR": "/build/bin",
        "CUDAToolkit_TARGET_DIR": "/host/targets/x86_64-linux",  # cublas_v2.h, cupti.h (patches/0002)
    }


def test_pytorch_links_lazily_and_keeps_its_libraries() -> None:
    conda = "-Wl,-O2 -Wl,--sort-common -Wl,--as-needed -Wl,-z,relro -Wl,-z,now -Wl,--disable-new-dtags"
    flags = _pytorch_exports("LDFLAGS", {"LDFLAGS": conda})["LDFLAGS"].split()
    assert "-Wl,--as-needed" not in flags and "-Wl,-z,now" not in flags
    assert "-Wl,-z,lazy" in flags and "-Wl,-z,relro" in flags and "-Wl,-O2" in flags


def test_pytorch_version_has_no_post_suffix_and_one_openmp() -> None:
    rendered = _rendered("pytorch")
    assert rendered["build"]["script"]["env"]["PYTORCH_BUILD_NUMBER"] == "0"
    req = rendered["requirements"]
    assert "llvm-openmp" in _names(req["build"]) and "llvm-openmp" in _names(req["host"])
    assert "llvm-openmp" in _names(req["run"])
    assert "six" in _names(req["host"])  # NNPACK's, instead of its download


def test_configure_time_downloads_are_switched_off() -> None:
    """The downloads docs/recipes-vs-feedstocks.md lists, each switched off where the build does."""
    script = {name: (WS.recipes / name / "build.sh").read_text() for name in REAL}
    assert "export TRITON_OFFLINE_BUILD=1" in script["triton"]  # LLVM, pybind11, json, nvidia tools
    assert '. "$RECIPE_DIR/no-unit-tests.sh"' in script["triton"]  # googletest
    assert ": > third_party/NNPACK/cmake/DownloadSix.cmake" in script["pytorch"]  # six
    assert "-DFETCHCONTENT_FULLY_DISCONNECTED=ON" in script["vllm"]  # cutlass, flash-attention, ...
    assert "export VLLM_USE_PRECOMPILED=0" in script["vllm"]  # the precompiled wheel
    assert "-DLLVM_INCLUDE_TESTS=OFF" in script["triton-llvm"]  # tests, benchmarks, examples off


def test_vllm_package_test_needs_no_gpu_driver() -> None:
    tests = _rendered("vllm")["tests"]
    imports = [m for t in tests if "python" in t for m in t["python"]["imports"]]
    assert imports == ["vllm"]  # vllm._C links libcuda.so.1 (CUDA::cuda_driver)
    scripts = " ".join(str(t["script"]) for t in tests if "script" in t)
    assert "find_spec('vllm._C')" in scripts and "import vllm._C" not in scripts
