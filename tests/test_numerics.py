"""Numerics of Pascal/Volta PTX: compiling here (NVRTC 12.9, Triton 3.5.1) needs no GPU; running the
records needs one (`gpu` marker; skipped here, run on the device machine: docs/verification.md)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from stackforge import numerics, numerics_build
from stackforge.numerics import attention_layout, load_records, ptx_param_types
from stackforge.numerics_build import FALLBACK_HEADER, HALF_ATOMIC_SOURCE, nvrtc_compile

REPO_ROOT = Path(__file__).resolve().parents[1]
FALLBACK_PATCH = next((REPO_ROOT / "patches" / "vllm").glob("*atomicAdd*.patch"), None)

needs_nvrtc = pytest.mark.skipif(
    numerics_build._nvidia_file("cuda_nvrtc", "lib", "libnvrtc.so.12") is None
    or numerics_build._nvidia_file("cuda_runtime", "include") is None,
    reason="needs NVRTC 12.x: pip install nvidia-cuda-nvrtc-cu12==12.9.86 nvidia-cuda-runtime-cu12==12.9.79",
)


@pytest.fixture
def fallback_tree(tmp_path: Path) -> Path:
    """Only the header the vLLM atomicAdd patch creates, taken out of the patch with `git apply`."""
    if FALLBACK_PATCH is None:
        pytest.skip("patches/vllm has no atomicAdd fallback patch")
    subprocess.run(
        ["git", "apply", f"--include={FALLBACK_HEADER}", str(FALLBACK_PATCH)], cwd=tmp_path, check=True
    )
    return tmp_path


@needs_nvrtc
def test_native_half_atomic_does_not_exist_below_sm70() -> None:
    plain = HALF_ATOMIC_SOURCE.replace('#include "cuda_atomic_compat.cuh"\n', "")
    with pytest.raises(RuntimeError, match='no instance of overloaded function "atomicAdd"'):
        nvrtc_compile(plain, 60)
    assert "atom.add.noftz.f16" in nvrtc_compile(plain, 70)


@needs_nvrtc
def test_patch_fallback_compiles_to_a_cas_loop_for_sm60(fallback_tree: Path, tmp_path: Path) -> None:
    built = numerics_build.build_half_atomic(tmp_path / "out", fallback_tree)
    assert all(b.ok for b in built) and len(built) == 6
    sm60 = (tmp_path / "out" / "half_atomic_add-ones-sm60.ptx").read_text()
    sm70 = (tmp_path / "out" / "half_atomic_add-ones-sm70.ptx").read_text()
    assert ".target sm_60" in sm60 and "atom.cas.b32" in sm60 and "atom.add.noftz.f16" not in sm60
    assert "atom.add.noftz.f16" in sm70  # sm_70 keeps the hardware instruction
    records = load_records(tmp_path / "out")
    assert {r["arch"] for _, r in records} == {60, 70}
    for path, record in records:
        (launch,) = record["launches"]
        types = ptx_param_types((path.parent / launch["ptx"]).read_text(), launch["entry"])
        assert types == ["u64", "u64", "u64", "u64", "u32"]  # out, vals, idx, olds, n


def test_unpatched_tree_is_reported_not_hidden(tmp_path: Path) -> None:
    built = numerics_build.build_half_atomic(tmp_path / "out", tmp_path)
    assert not any(b.ok for b in built)
    assert "cuda_atomic_compat.cuh does not exist" in built[0].detail


def test_triton_atomic_sm61_needs_the_triton_patch(tmp_path: Path) -> None:
    """Stock Triton 3.5.1 emits atom...acq_rel, which ptxas refuses below sm_70 (FACTS.md)."""
    built = {b.arch: b for b in numerics_build.build_triton_atomic(tmp_path)}
    assert built[70].ok
    assert not built[61].ok and "'.acq_rel' requires .target sm_70" in built[61].detail
    ((path, record),) = load_records(tmp_path)
    (launch,) = record["launches"]
    types = ptx_param_types((path.parent / launch["ptx"]).read_text(), launch["entry"])
    assert len(types) == len(launch["args"]) + 2  # Triton's global and profile scratch pointers


def test_attention_layout_sizes() -> None:
    shape = {
        "seqs": [[1, 300], [40, 200]],
        "num_q_heads": 32,
        "num_kv_heads": 8,
        "head_size": 80,
        "block_size": 16,
    }
    layout = attention_layout(shape | {"segments": 16})
    assert layout["q"][0] == (41, 32, 80)
    assert layout["block_table"][0] == (2, 19)  # ceil(300 / 16)
    assert layout["k_cache"][0] == (41, 16, 8, 80)  # 2 * 19 blocks + 3 spare
    assert layout["segm_output"][0] == (41, 32, 16, 128)  # head padded to a power of two


@pytest.mark.upstream
def test_unified_attention_compiles_for_pascal_and_volta(tmp_path: Path) -> None:
    """vLLM 0.14.0's unified attention kernels (PyPI sdist, cached) at every shape, sm_61 and sm_70,
    within 48 KB of shared memory, with records whose args match the PTX parameters."""
    from stackforge.upstream import vllm_sdist

    built = numerics_build.build_unified_attention(tmp_path, vllm_sdist())
    assert [b.detail for b in built if not b.ok] == []
    assert len(built) == 2 * len(numerics_build.ATTENTION_SHAPES)
    for path, record in load_records(tmp_path):
        for launch in record["launches"]:
            ptx = (path.parent / launch["ptx"]).read_text()
            assert f".target sm_{record['arch']}" in ptx
            assert len(ptx_param_types(ptx, launch["entry"])) == len(launch["args"]) + 2
            assert launch["shared"] <= 49152
        assert json.loads(path.read_text())["schema"] == numerics.SCHEMA


@pytest.mark.gpu
@pytest.mark.upstream
@needs_nvrtc
def test_records_run_correctly_on_the_gpu(fallback_tree: Path, tmp_path: Path) -> None:
    """Build everything here and run it through the driver JIT on the GPU: every case within tolerance."""
    why = numerics.gpu_present()
    if why:
        pytest.skip(f"no GPU to run the PTX on: {why}")
    from stackforge.upstream import vllm_sdist

    out = tmp_path / "records"
    numerics_build.build_half_atomic(out, fallback_tree)
    numerics_build.build_triton_atomic(out, archs=(70,))
    numerics_build.build_unified_attention(out, vllm_sdist())
    results = numerics.run_checks(out)
    assert results and [r for r in results if not r.ok] == []
