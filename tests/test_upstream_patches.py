"""The patch series, proven on real upstream source (marker `upstream`: downloads once into the
stackforge cache, ~20 MB for the vLLM sdist plus a few hundred kB of wheel members).

Every patch in patches/{pytorch,vllm,triton} is applied with `git am --3way`, in order, to the
pinned release rebuilt by stackforge.verify.upstream.repos; then the effect of each part-A patch is checked
on the patched files themselves: CMake's arch selection is run by cmake, the Python gates are
taken out of the patched modules (ast) and called.
"""

from __future__ import annotations

import re
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from conftest import online
from upstreamhelpers import (
    FALLBACK,
    TORCH,
    CudaGpu,
    assert_fp16_fallback,
    device_capability,
    gemma3_dtype_and_bf16_kept_from_8_0,
    load_defs,
    method,
    nested_function,
    resolve_dtype,
    run_arch_logic,
    scheduler_bound,
)

from stackforge.core.workspace import Workspace
from stackforge.sources.patches import check_series
from stackforge.spec.envs import list_envs, load_env
from stackforge.verify.upstream import repos as upstream_repos

pytestmark = pytest.mark.upstream

ROOT = Path(__file__).resolve().parents[1]
WS = Workspace(ROOT)
T = TypeVar("T")


def series(name: str) -> list[Path]:
    return sorted(WS.patch_dir(name).glob("*.patch"))


def part_a(patch: Path, name: str) -> bool:
    """This helper's patches: all of pytorch's, vLLM's 0001-0019 (part B numbers from 0020)."""
    return name == "pytorch" or (name == "vllm" and int(patch.name[:4]) < 20)


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, bool], Path]:
    """(name, patched) -> a git repository of the pinned upstream, built once per module."""
    built: dict[tuple[str, bool], Path] = {}

    def get(name: str, patched: bool) -> Path:
        if (name, patched) not in built:
            dest = tmp_path_factory.mktemp(f"{name}-{'patched' if patched else 'upstream'}")
            patches = series(name)
            online(lambda: upstream_repos.upstream_repo(name, dest, patch_files=patches))
            if patched:
                upstream_repos.apply_series(dest, patches)
            built[name, patched] = dest
        return built[name, patched]

    return get


# --- every patch applies --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pytorch", "vllm", "triton"])
def test_series_applies_to_the_pinned_release(name: str, tmp_path: Path) -> None:
    patches = series(name)
    if not patches:
        pytest.skip(f"patches/{name}/ holds no patch yet")
    repo = online(lambda: upstream_repos.upstream_repo(name, tmp_path / name, patch_files=patches))
    verdicts = upstream_repos.apply_series(repo, patches)
    assert list(verdicts) == [p.name for p in patches]
    # Each patch was made on exactly this tree, so none should need git's three-way fallback.
    assert {n: v for n, v in verdicts.items() if v != "clean"} == {}
    log = upstream_repos._git(repo, "log", "--format=%an <%ae>", f"-{len(patches)}").splitlines()
    assert log == ["stackforge <stackforge@users.noreply.github.com>"] * len(patches)


@pytest.mark.parametrize("name", ["pytorch", "vllm", "triton"])
def test_patches_check_reports_every_patch_clean_at_the_pin(name: str, tmp_path: Path) -> None:
    """What `stackforge patches check NAME` reports, run on the upstream release rebuilt from PyPI."""
    patches = series(name)
    if not patches:
        pytest.skip(f"patches/{name}/ holds no patch yet")
    repo = online(lambda: upstream_repos.upstream_repo(name, tmp_path / name, patch_files=patches))
    results = check_series(repo, upstream_repos._git(repo, "rev-parse", "HEAD"), patches)
    assert [(r.patch, r.verdict) for r in results] == [(p.name, "clean") for p in patches]


@pytest.mark.parametrize("name", ["pytorch", "vllm"])
def test_part_a_patches_are_format_patch_output_with_an_explained_message(name: str) -> None:
    mine = [p for p in series(name) if part_a(p, name)]
    assert mine, f"no part-A patch in patches/{name}"
    for patch in mine:
        text = patch.read_text()
        assert re.fullmatch(r"\d{4}-[A-Za-z0-9._-]+\.patch", patch.name), patch.name
        assert text.startswith("From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n")
        assert "\nSubject: [PATCH] " in text  # -N: no "1/5" numbering
        assert re.search(r"^index [0-9a-f]{40}\.\.[0-9a-f]{40}", text, re.M), f"{patch.name}: --full-index"
        assert not re.search(r"^-- \n\d", text, re.M), f"{patch.name}: has a signature"
        message = text.split("\n---\n", 1)[0]
        for part in ("What fails without it", "Why this is right", "How it was checked"):
            assert part in message, f"{patch.name}: commit message lacks {part!r}"


# --- vLLM: CMake selects 6.0/6.1 and 7.0, and no sm_75+ kernel family -------------------------


@pytest.mark.parametrize("env_name", list_envs(WS))
def test_cmake_builds_the_environment_archs_and_no_newer_kernel_family(
    env_name: str, repos: Callable[[str, bool], Path], tmp_path: Path
) -> None:
    env = load_env(WS, env_name)
    rc, results, output = run_arch_logic(
        repos("vllm", True), env.cuda_version, env.torch_cuda_arch_list, tmp_path
    )
    assert rc == 0, output
    assert results.pop("CUDA_ARCHS") == env.torch_cuda_arch_list
    assert len(results) >= 20, output  # Marlin, CUTLASS, Machete, Hadacore, QuTLASS ... all seen
    assert {k: v for k, v in results.items() if v} == {}, "kernel families selected for an old GPU"


def test_unpatched_cmake_drops_pascal(repos: Callable[[str, bool], Path], tmp_path: Path) -> None:
    rc, results, output = run_arch_logic(repos("vllm", False), "12.9", "6.0;6.1", tmp_path)
    assert rc == 0 and results["CUDA_ARCHS"] == "", output


@pytest.mark.parametrize("requested", ["6.0;6.1", "7.0"])
def test_cmake_stops_when_cuda_13_cannot_build_the_archs(
    requested: str, repos: Callable[[str, bool], Path], tmp_path: Path
) -> None:
    rc, _, output = run_arch_logic(repos("vllm", True), "13.0", requested, tmp_path)
    assert rc != 0
    flat = " ".join(output.split())
    assert f"None of the requested CUDA architectures ({requested}) can be built with CUDA 13.0" in flat
    assert "Compute capability 6.x and 7.0 need CUDA 12.x." in flat


# --- vLLM: dtype and attention backend choices, run from the patched modules ------------------


@pytest.mark.parametrize("capability", [(6, 0), (6, 1), (7, 0)])
@pytest.mark.parametrize("requested", ["auto", "bfloat16"])
def test_bf16_runs_in_fp16_below_8_0_with_one_warning(
    capability: tuple[int, int],
    requested: str,
    repos: Callable[[str, bool], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert_fp16_fallback(monkeypatch, repos("vllm", True), capability, requested)


def test_bf16_is_kept_from_8_0_and_fp16_models_fall_back_to_fp32(
    repos: Callable[[str, bool], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    dtype, messages = gemma3_dtype_and_bf16_kept_from_8_0(monkeypatch, repos("vllm", True))
    assert dtype is TORCH.float32  # vLLM refuses float16 for gemma3
    assert messages[0] == ("WARNING", FALLBACK.format("6.1", "torch.float32") + " for compatibility.")


def test_unpatched_vllm_keeps_an_explicit_bf16_on_pascal(
    repos: Callable[[str, bool], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the patch fixes: v0.14.0 accepts bf16 here and fails later in the worker."""
    dtype, messages = resolve_dtype(
        monkeypatch, repos("vllm", False), CudaGpu((6, 1), "Tesla P40"), "bfloat16", TORCH.bfloat16
    )
    assert (dtype, messages) == (TORCH.bfloat16, [])


def test_attention_backends_on_old_gpus(repos: Callable[[str, bool], Path]) -> None:
    """As shipped, v0.14.0 already leaves only TRITON_ATTN below 7.5 (no patch needed)."""
    tree = repos("vllm", True)
    capability = device_capability(tree)
    backends = tree / "vllm/v1/attention/backends"
    gates = {
        cls: method(backends / f, cls, "supports_compute_capability", {"DeviceCapability": capability})
        for f, cls in (
            ("flash_attn.py", "FlashAttentionBackend"),
            ("flashinfer.py", "FlashInferBackend"),
            ("triton_attn.py", "TritonAttentionBackend"),
        )
    }
    for old in ((6, 0), (6, 1), (7, 0)):
        assert {cls: gate(None, capability(*old)) for cls, gate in gates.items()} == {
            "FlashAttentionBackend": False,
            "FlashInferBackend": False,
            "TritonAttentionBackend": True,
        }


def test_triton_attn_refuses_fp8_kv_cache_below_8_9(repos: Callable[[str, bool], Path]) -> None:
    tree = repos("vllm", True)
    capability = device_capability(tree)
    namespace = {
        "DeviceCapability": capability,
        "current_platform": types.SimpleNamespace(is_cuda=lambda: True),
    }
    path = tree / "vllm/v1/attention/backends/triton_attn.py"
    check = method(path, "TritonAttentionBackend", "supports_combination", namespace)

    def reason(kv: str, cap: tuple[int, int]) -> str | None:
        return check(None, 128, TORCH.float16, kv, 16, False, False, False, capability(*cap))

    for kv, cap in (("fp8", (6, 1)), ("fp8_e4m3", (7, 0)), ("fp8_e5m2", (6, 0)), ("fp8", (8, 6))):
        text = reason(kv, cap)
        assert text is not None and "needs compute capability 8.9" in text and "--kv-cache-dtype auto" in text
        assert "{}.{}".format(*cap) in text
    assert reason("auto", (6, 1)) is None
    assert reason("fp8", (8, 9)) is None
    unpatched = repos("vllm", False) / "vllm/v1/attention/backends/triton_attn.py"
    assert "def supports_combination" not in unpatched.read_text()  # v0.14.0 accepts fp8 anywhere


# --- PyTorch: Inductor's Triton gates admit major 6 -------------------------------------------


@pytest.mark.parametrize("patched", [False, True])
def test_inductor_triton_gates(patched: bool, repos: Callable[[str, bool], Path]) -> None:
    tree = repos("pytorch", patched)
    lowest = 6 if patched else 7

    def props(major: int) -> Any:
        return types.SimpleNamespace(major=major, minor=0)

    extra = nested_function(tree / "torch/utils/_triton.py", "has_triton", "cuda_extra_check")
    worker = types.SimpleNamespace(get_device_properties=lambda: props(current))
    torch = types.SimpleNamespace(
        version=types.SimpleNamespace(hip=None),
        cuda=types.SimpleNamespace(get_device_properties=lambda device=None: props(current)),
    )
    capable = method(
        tree / "torch/_dynamo/device_interface.py", "CudaInterface", "is_triton_capable", {"torch": torch}
    )
    for current in (5, 6, 7, 8):
        assert extra(types.SimpleNamespace(Worker=worker)) is (current >= lowest)
        assert capable(None) is (current >= lowest)
    assert scheduler_bound(tree) == lowest
    message = (tree / "torch/_inductor/exc.py").read_text()
    assert f"Triton only supports devices of CUDA Capability >= {lowest}.0" in message


def test_unified_attention_tile_fits_pascal_in_fp32(repos: Callable[[str, bool], Path]) -> None:
    """vllm 0022, read from the patched tree: Gemma 2/3 in fp32 (head 256, BLOCK_M 16) get tile 16
    on a 48 KB Pascal GPU; fp16, and a V100's 96 KB, keep vLLM's 32; the unpatched tree has none."""
    rel = "vllm/v1/attention/ops/triton_unified_attention.py"
    fit = load_defs(repos("vllm", True) / rel, {"fma_tile_size"}, {})["fma_tile_size"]
    assert (fit(32, 16, 256, 4, 49152), fit(32, 16, 256, 4, 98304), fit(32, 16, 256, 2, 49152)) == (
        16,
        32,
        32,
    )
    assert "fma_tile_size" not in (repos("vllm", False) / rel).read_text()
