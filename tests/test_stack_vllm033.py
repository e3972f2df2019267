"""The stacks/vllm-0.33 series (vLLM 0.33.0, torch 2.14.0, triton 3.8.0), proven on the real PyPI
files like tests/test_upstream_patches.py proves the pinned stack (marker `upstream`: downloads
the 47 MB vLLM 0.33.0 sdist and a few wheel members into the stackforge cache once).

Every series applies with `git am --3way` to the release rebuilt by stackforge.verify.upstream; the
0.14-stack series does not (the verdicts NOTES.md records); then the effect of each patch is
checked on the patched files: CMake's arch selection by cmake, the Python gates called after
taking them out of the patched modules with ast.
"""

from __future__ import annotations

import json
import os
import subprocess
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import upstreamhelpers
from conftest import online
from tritonenv import stack_triton_python
from upstreamhelpers import (
    TORCH,
    assert_fp16_fallback,
    gemma3_dtype_and_bf16_kept_from_8_0,
    method,
    resolve_dtype,
    run_arch_logic,
    scheduler_bound,
)

from stackforge.verify.upstream import pypi
from stackforge.verify.upstream import repos as upstream_repos

pytestmark = pytest.mark.upstream

ROOT = Path(__file__).resolve().parents[1]
STACK = ROOT / "stacks/vllm-0.33"
VERSIONS = {"vllm": "0.33.0", "pytorch": "2.14.0", "triton": "3.8.0"}


class CudaGpu(upstreamhelpers.CudaGpu):
    """0.33.0's `auto` path also asks is_cpu() (a POWER CPU special case)."""

    def is_cpu(self) -> bool:
        return False


def series(name: str) -> list[Path]:
    return sorted((STACK / "patches" / name).glob("*.patch"))


def old_series(name: str) -> list[Path]:
    return sorted((ROOT / "patches" / name).glob("*.patch"))


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, bool], Path]:
    built: dict[tuple[str, bool], Path] = {}

    def get(name: str, patched: bool) -> Path:
        if (name, patched) not in built:
            dest = tmp_path_factory.mktemp(f"{name}-033-{'patched' if patched else 'upstream'}")
            patches = series(name)
            online(
                lambda: upstream_repos.upstream_repo(name, dest, patch_files=patches, version=VERSIONS[name])
            )
            if patched:
                upstream_repos.apply_series(dest, patches)
            built[name, patched] = dest
        return built[name, patched]

    return get


@pytest.mark.parametrize("name", ["pytorch", "vllm", "triton"])
def test_series_applies_cleanly(name: str, repos: Callable[[str, bool], Path]) -> None:
    patches = series(name)
    assert patches, f"stacks/vllm-0.33/patches/{name} is empty"
    repo = repos(name, False)
    scratch = repo.parent / f"{repo.name}-am"
    subprocess.run(["git", "clone", "-q", str(repo), str(scratch)], check=True)
    verdicts = upstream_repos.apply_series(scratch, patches)
    assert verdicts == {p.name: "clean" for p in patches}
    for patch in patches:
        text = patch.read_text()
        assert text.startswith("From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n")
        message = text.split("\n---\n", 1)[0]
        for part in ("What fails without it", "Why this is right", "How it was checked"):
            assert part in message or part.lower() in message.lower(), f"{patch.name}: lacks {part!r}"


@pytest.mark.parametrize("name", ["pytorch", "vllm", "triton"])
def test_the_014_series_does_not_apply(name: str, repos: Callable[[str, bool], Path]) -> None:
    """Applied alone and in order, every 0.14-stack patch fails on the new release, except vLLM's
    0005, which git merges three-way (and which 0.33.0 no longer needs: see NOTES.md)."""
    repo = repos(name, False)
    failing = []
    for patch in old_series(name):
        scratch = repo.parent / f"{repo.name}-old-{patch.name[:4]}"
        if not scratch.exists():
            subprocess.run(["git", "clone", "-q", str(repo), str(scratch)], check=True)
        done = subprocess.run(["git", "apply", "--check", str(patch)], cwd=scratch, capture_output=True)
        if done.returncode != 0:
            failing.append(patch.name[:4])
    expected = {"vllm": ["0001", "0002", "0003", "0004", "0005", "0020", "0021", "0022", "0023", "0024"],
                "pytorch": ["0001"], "triton": ["0001", "0002", "0003"]}[name]  # fmt: skip
    assert failing == expected


# --- vLLM ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cuda", ["12.9", "12.6"])
@pytest.mark.parametrize("requested", ["6.0;6.1", "7.0"])
def test_cmake_builds_pascal_and_volta_and_no_newer_kernel_family(
    cuda: str, requested: str, repos: Callable[[str, bool], Path], tmp_path: Path
) -> None:
    rc, results, output = run_arch_logic(repos("vllm", True), cuda, requested, tmp_path)
    assert rc == 0, output
    assert results.pop("CUDA_ARCHS") == requested
    assert len(results) >= 40, output
    assert {k: v for k, v in results.items() if v} == {}


@pytest.mark.parametrize("requested", ["6.0;6.1", "7.0"])
def test_unpatched_cmake_stops_for_old_gpus_under_cuda_12_9(
    requested: str, repos: Callable[[str, bool], Path], tmp_path: Path
) -> None:
    rc, _, output = run_arch_logic(repos("vllm", False), "12.9", requested, tmp_path)
    assert rc != 0 and "No supported CUDA architectures" in " ".join(output.split())


@pytest.mark.parametrize("requested", ["6.0;6.1", "7.0"])
def test_cuda_13_still_stops(requested: str, repos: Callable[[str, bool], Path], tmp_path: Path) -> None:
    rc, _, output = run_arch_logic(repos("vllm", True), "13.0", requested, tmp_path)
    assert rc != 0 and "No supported CUDA architectures" in " ".join(output.split())


@pytest.mark.parametrize("capability", [(6, 0), (6, 1), (7, 0)])
@pytest.mark.parametrize("requested", ["auto", "bfloat16"])
def test_bf16_runs_in_fp16_below_8_0_with_one_warning(
    capability: tuple[int, int], requested: str, repos: Callable[[str, bool], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    assert_fp16_fallback(monkeypatch, repos("vllm", True), capability, requested, CudaGpu)


def test_bf16_kept_from_8_0_fp32_for_gemma3_and_unpatched_keeps_bf16(
    repos: Callable[[str, bool], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    dtype, _ = gemma3_dtype_and_bf16_kept_from_8_0(monkeypatch, repos("vllm", True), CudaGpu)
    assert dtype is TORCH.float32
    unpatched = resolve_dtype(
        monkeypatch, repos("vllm", False), CudaGpu((6, 1), "Tesla P40"), "bfloat16", TORCH.bfloat16
    )
    assert unpatched == (TORCH.bfloat16, [])


def test_fp8_kv_cache_is_refused_upstream_and_the_old_0005_would_break_selection(
    repos: Callable[[str, bool], Path],
) -> None:
    """Why 0005 is not carried: 0.33.0 refuses an fp8 KV cache below 8.9 in TritonAttentionImpl
    itself, and its backend selection passes supports_combination a use_mm_prefix argument the
    0.14 patch's override lacks (git merges that patch three-way without complaint)."""
    tree = repos("vllm", True)
    triton_attn = (tree / "vllm/v1/attention/backends/triton_attn.py").read_text()
    assert "native FP8 (fp8e4nv) " in triton_attn and "requires SM89+" in triton_attn
    backend = (tree / "vllm/v1/attention/backend.py").read_text()
    call = backend[backend.index("combination_reason = cls.supports_combination(") :].split(")", 1)[0]
    assert [a.strip() for a in call.split("(", 1)[1].split(",") if a.strip()] == [
        "head_size", "dtype", "kv_cache_dtype", "block_size", "use_mla", "has_sink", "use_sparse",
        "use_mm_prefix", "device_capability",
    ]  # fmt: skip
    old = (ROOT / "patches/vllm").glob("0005-*.patch")
    assert "use_mm_prefix" not in next(old).read_text()


def test_kernel_launchers_fit_the_shared_memory(repos: Callable[[str, bool], Path]) -> None:
    tree = repos("vllm", True)
    ns: dict[str, Any] = {}
    src = (tree / "vllm/v1/attention/ops/prefix_prefill.py").read_text()
    start = src.index("def fma_dot_smem_bytes")
    exec(src[start : src.index("def max_shared_mem")], ns)
    assert ns["fwd_kernel_block_sizes"](64, 49152, True) == (64, 64, 32)
    assert ns["fwd_kernel_block_sizes"](128, 49152, True) == (32, 32, 32)
    assert ns["fwd_kernel_block_sizes"](256, 49152, True) == (16, 16, 16)
    assert ns["fwd_kernel_block_sizes"](64, 98304, True) == (128, 64, 32)
    assert ns["fwd_kernel_block_sizes"](128, 0, False) == (128, 64, 32)
    enc = (tree / "vllm/v1/attention/ops/triton_prefill_attention.py").read_text()
    start = enc.index("def fma_block_size")
    exec(enc[start : enc.index("def get_block_size")], ns)
    assert [ns["fma_block_size"](64, d, 49152) for d in (64, 128, 256)] == [64, 32, 16]
    assert [ns["fma_block_size"](64, d, 98304) for d in (64, 128, 256)] == [64, 64, 32]
    uni = (tree / "vllm/v1/attention/ops/triton_unified_attention.py").read_text()
    start = uni.index("def fma_tile_size")
    exec(uni[start : uni.index("def _get_tile_size")], ns)
    # Gemma 2/3 in float32 at head 256 (BLOCK_M 16): 16 on a 48 KB Pascal GPU, 32 on a V100;
    # float16 keeps 32 everywhere
    assert [ns["fma_tile_size"](32, 16, 256, 4, smem) for smem in (49152, 98304)] == [16, 32]
    assert ns["fma_tile_size"](32, 16, 256, 2, 49152) == 32


# --- PyTorch 2.14.0 -----------------------------------------------------------------------------


@pytest.mark.parametrize("patched", [False, True])
def test_inductor_triton_gates(patched: bool, repos: Callable[[str, bool], Path]) -> None:
    tree = repos("pytorch", patched)
    lowest = 6 if patched else 7
    current = 0

    def props(device: Any = None) -> Any:
        return types.SimpleNamespace(major=current, minor=0)

    worker = types.SimpleNamespace(get_device_properties=props)
    torch = types.SimpleNamespace(version=types.SimpleNamespace(hip=None))
    namespace = {"torch": torch, "CudaInterface": types.SimpleNamespace(Worker=worker)}
    capable = method(
        tree / "torch/_dynamo/device_interface.py", "CudaInterface", "is_triton_capable", namespace
    )
    for current in (5, 6, 7, 8):
        assert capable(None) is (current >= lowest)
    # has_triton() asks is_triton_capable() and has no bound of its own in 2.14.0 (the series
    # leaves the file alone, so it is read from the wheel).
    has_triton = online(lambda: pypi.wheel_member("torch", "2.14.0", "torch/utils/_triton.py")).decode()
    assert "device_interface.is_triton_capable()" in has_triton and "major >= 7" not in has_triton
    assert scheduler_bound(tree) == lowest
    message = (tree / "torch/_inductor/exc.py").read_text()
    assert f"Triton only supports devices of CUDA Capability >= {lowest}.0" in message


# --- the kernel audit on the 0.33.0 tree (needs the stack's triton installed) ----------------------

AUDITED = ["unified_attention_2d", "unified_attention_3d", "reduce_segments", "reshape_and_cache_flash",
           "encoder_prefill_attention", "prefix_prefill", "paged_attention_2d", "lora_shrink", "bincount"]  # fmt: skip


_AUDIT = """
import json, sys
from pathlib import Path
from stackforge.verify.kernels.audit import audit
runs = json.loads(sys.argv[1])
out = []
for run in runs:
    report = audit(None, run["env"], run["archs"], Path(run["tree"]), [Path(p) for p in run["patches"]],
                   kernels=run["kernels"], head_sizes=tuple(run["head_sizes"]), state=Path(run["state"]),
                   save=Path(run["save"]) if run.get("save") else None, show_progress=False)
    out.append(report.to_json())
print(json.dumps(out))
"""


def _audit_with_stack_triton(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`audit()` of each run in an interpreter with the stack's Triton (tests/tritonenv.py):
    the reports as JSON."""
    python = online(lambda: stack_triton_python(VERSIONS["triton"]))
    done = subprocess.run([str(python), "-c", _AUDIT, json.dumps(runs)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ""}, timeout=1800)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_kernel_audit_for_pascal_unpatched_fails_and_the_series_compiles(
    repos: Callable[[str, bool], Path], tmp_path: Path
) -> None:
    """The 0.33.0 sdist as shipped fails for sm_61 as the 0.14 one did (evict_last, prefix prefill
    and encoder shared memory, atomics' memory order); with the stack's vLLM and Triton series
    every audited kernel compiles for sm_60 and sm_61, the Gemma 2/3 float32 launches of
    TRITON_ATTN included, and every launch record is one the numerics runner reads."""
    from stackforge.verify.kernels.dtypes import auto_dtype
    from stackforge.verify.numerics.gpu import ptx_param_types
    from stackforge.verify.numerics.records import RECORD_SCHEMA

    state, tree = tmp_path / "state", repos("vllm", True)
    assert auto_dtype(tree, 61, "gemma2") == "float32"  # the model cases below run in float32
    plain, report = _audit_with_stack_triton([
        {"env": "pascal", "archs": [61], "tree": str(repos("vllm", False)), "patches": [],
         "kernels": ["paged_attention_2d", "prefix_prefill/h", "encoder_prefill_attention", "unified_attention_2d/h",
                     "lora_shrink/s1", "bincount"], "head_sizes": [128], "state": str(state)},
        {"env": "pascal", "archs": [60, 61], "tree": str(tree), "patches": [str(p) for p in series("triton")],
         "kernels": AUDITED, "head_sizes": [64, 256], "state": str(state), "save": str(tmp_path / "ptx")},
    ])  # fmt: skip
    by = {r["case"]: r for r in plain["results"]}
    assert "Modifier '.evict_last' on 'ld' requires .target sm_70" in by["paged_attention_2d/h128"]["message"]
    assert (by["prefix_prefill/h128"]["status"], by["prefix_prefill/h128"]["shared"]) == (
        "shared-memory",
        98304,
    )
    assert (by["encoder_prefill_attention/h128"]["status"], by["encoder_prefill_attention/h128"]["shared"]) == (
        "shared-memory", 65536)  # fmt: skip
    assert "Feature '.relaxed' requires .target sm_70" in by["lora_shrink/s1"]["message"]
    assert "requires .target sm_70" in by["bincount/p3100"]["message"]
    assert by["unified_attention_2d/h128"]["status"] == "ok"  # TRITON_ATTN's kernel compiles as shipped

    failures = [
        (r["case"], r["arch"], r["status"], r["message"])
        for r in report["results"]
        if r["status"] not in ("ok", "pruned")
    ]
    assert not failures, failures
    assert report["triton"]["version"] == VERSIONS["triton"] and report["triton"]["how"] == "overlay"
    by = {(r["case"], r["arch"]): r for r in report["results"]}
    for arch in (60, 61):  # Gemma 2's fp32 prefill tile (0022): 16 wide, 33792 bytes
        assert by["unified_attention_2d/gemma2-fp32", arch]["shared"] <= 49152
    saved = sorted((tmp_path / "ptx").glob("sm_*/*.json"))
    assert len(saved) == len(report["results"])
    functions = set()
    for path in saved:
        record = json.loads(path.read_text())
        jsonschema.validate(record, RECORD_SCHEMA)
        (launch,) = record["launches"]
        ptx = (path.parent / launch["ptx"]).read_text()
        assert len(ptx_param_types(ptx, launch["entry"])) == len(launch["args"]) + 2  # + Triton's scratch
        functions.add(launch["function"])
    assert "kernel_unified_attention" in functions and "kernel_unified_attention_2d" not in functions


def test_kernel_audit_for_volta_with_the_series_compiles(
    repos: Callable[[str, bool], Path], tmp_path: Path
) -> None:
    """sm_70 with the stack's series: every kernel TRITON_ATTN reaches compiles within Volta's 96 KB
    opt-in, the unified kernels at head 256 included (ROCM_ATTN's prefix prefill is left to the
    pascal test: its sm_70 tiles take minutes of ptxas each)."""
    (report,) = _audit_with_stack_triton([
        {"env": "volta", "archs": [70], "tree": str(repos("vllm", True)), "patches": [str(p) for p in series("triton")],
         "kernels": [k for k in AUDITED if k not in ("prefix_prefill", "paged_attention_2d")], "head_sizes": [64, 256],
         "state": str(tmp_path / "state")},
    ])  # fmt: skip
    assert {r["arch"] for r in report["results"]} == {70}
    failing = [
        (r["case"], r["status"], r["message"])
        for r in report["results"]
        if r["status"] not in ("ok", "pruned")
    ]
    assert not failing, failing
    by = {r["case"]: r for r in report["results"]}
    assert (
        by["unified_attention_2d/h256"]["shared"] <= 98304
        and by["encoder_prefill_attention/h256"]["status"] == "ok"
    )
