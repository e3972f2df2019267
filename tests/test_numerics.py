"""Numerics of Pascal/Volta PTX: compiling the records here (NVRTC 12.9; Triton 3.5.1 with
patches/triton overlaid) needs no GPU; running them needs one (`gpu` marker: skipped without one,
saying why; run on the device machine: docs/verification.md)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import jsonschema
import pytest
from conftest import online

from stackforge.cuda.caps import CAPABILITIES
from stackforge.verify.kernels import overlay as triton_overlay
from stackforge.verify.numerics import checks, nvrtc
from stackforge.verify.numerics import gpu as numerics
from stackforge.verify.numerics import records as record_format
from stackforge.verify.numerics import suite as numerics_build
from stackforge.verify.numerics.gpu import ptx_param_types, unchecked
from stackforge.verify.numerics.nvrtc import FALLBACK_HEADER, HALF_ATOMIC_SOURCE, nvrtc_compile
from stackforge.verify.numerics.records import RECORD_SCHEMA, load_records

REPO_ROOT = Path(__file__).resolve().parents[1]
FALLBACK_PATCH = next((REPO_ROOT / "patches" / "vllm").glob("*atomicAdd*.patch"), None)
TRITON_SERIES = sorted((REPO_ROOT / "patches" / "triton").glob("*.patch"))
VLLM_SERIES = sorted((REPO_ROOT / "patches" / "vllm").glob("*.patch"))
ATOMICS = ("add_contended", "add_returns_old", "cas_returns_old", "last_program_reduces")

needs_nvrtc = pytest.mark.skipif(
    nvrtc._nvidia_file("cuda_nvrtc", "lib", "libnvrtc.so.12") is None
    or nvrtc._nvidia_file("cuda_runtime", "include") is None,
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


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Overlay and Triton cache shared by this module's builds."""
    return tmp_path_factory.mktemp("numerics-state")


def check_records(folder: Path) -> list[tuple[Path, dict]]:
    """Every record validates, and every launch's arguments match its PTX's .entry parameters
    (plus Triton's two scratch pointers)."""
    records = load_records(folder)
    for path, record in records:
        jsonschema.validate(record, RECORD_SCHEMA)
        for launch in record["launches"]:
            ptx = (path.parent / launch["ptx"]).read_text()
            assert f".target sm_{record['arch']}" in ptx
            types = ptx_param_types(ptx, launch["entry"])
            extra = 2 if "global_scratch" in launch else 0
            assert len(types) == len(launch["args"]) + extra, path
            for arg, ty in zip(launch["args"], types, strict=False):
                if "tensor" in arg:  # Triton records describe their tensors; the NVRTC ones make their own
                    assert ty == "u64" and arg["tensor"] in record.get("tensors", {arg["tensor"]: 0}), (
                        path,
                        arg,
                    )
    return records


# --- CUDA C++: the half atomicAdd fallback (NVRTC 12.9) -------------------------------------------


@needs_nvrtc
def test_native_half_atomic_does_not_exist_below_sm70() -> None:
    plain = HALF_ATOMIC_SOURCE.replace('#include "cuda_atomic_compat.cuh"\n', "")
    with pytest.raises(RuntimeError, match='no instance of overloaded function "atomicAdd"'):
        nvrtc_compile(plain, 60)
    assert "atom.add.noftz.f16" in nvrtc_compile(plain, 70)


@needs_nvrtc
def test_patch_fallback_compiles_to_a_cas_loop_for_sm60(fallback_tree: Path, tmp_path: Path) -> None:
    built = nvrtc.build_half_atomic(tmp_path / "out", fallback_tree, archs=(60, 70))
    assert all(b.ok for b in built) and len(built) == 6
    sm60 = (tmp_path / "out" / "half_atomic_add-ones-sm60.ptx").read_text()
    sm70 = (tmp_path / "out" / "half_atomic_add-ones-sm70.ptx").read_text()
    assert ".target sm_60" in sm60 and "atom.cas.b32" in sm60 and "atom.add.noftz.f16" not in sm60
    assert "atom.add.noftz.f16" in sm70  # sm_70 keeps the hardware instruction
    records = check_records(tmp_path / "out")
    assert {r["arch"] for _, r in records} == {60, 70}


def test_unpatched_tree_is_reported_not_hidden(tmp_path: Path) -> None:
    built = nvrtc.build_half_atomic(tmp_path / "out", tmp_path)
    assert not any(b.ok for b in built)
    assert "cuda_atomic_compat.cuh does not exist" in built[0].detail


# --- Triton atomics: stock Triton refuses sm_61, the overlay of patches/triton compiles them ---------


def test_stock_triton_cannot_compile_atomics_for_sm61(tmp_path: Path) -> None:
    """This process imports the installed triton 3.5.1 as it is: every atomics record fails ptxas."""
    items = [i for i in numerics_build.suite_items() if i.name.startswith(ATOMICS)]
    built = numerics_build.build_triton(tmp_path, None, (61,), items)
    assert len(built) == 8 and not any(b.ok for b in built)
    assert all("requires .target sm_70 or higher" in b.detail for b in built), [b.detail for b in built]
    assert any("'.acq_rel'" in b.detail for b in built) and any("'.relaxed'" in b.detail for b in built)


def test_patched_triton_compiles_atomics_for_pascal(tmp_path: Path, state: Path) -> None:
    """The suite's build process with the overlay on PYTHONPATH (what `audit kernels --run` starts):
    sm_60/61 PTX without memory-order qualifiers or 16-bit atomics; sm_70 PTX keeps both."""
    setup = triton_overlay.prepare(state, TRITON_SERIES)
    assert setup.how == "overlay"
    built, log = numerics_build.build_in_subprocess(
        tmp_path, tmp_path, (60, 61, 70), setup.path, state, only=ATOMICS
    )
    assert [b.detail for b in built if not b.ok] == [] and len(built) == 24, log
    records = check_records(tmp_path)
    assert len(records) == 24
    for path, record in records:
        ptx = (path.parent / record["launches"][0]["ptx"]).read_text()
        if record["arch"] < 70:
            assert ".acq_rel" not in ptx and ".relaxed" not in ptx, path
            assert not any("atom" in ln and ".f16" in ln for ln in ptx.splitlines()), path
        assert record["tolerance"] == record_format.TOLERANCES[record["check"]]
    f16 = (tmp_path / "add_contended-f16-neighbours-sm61.ptx").read_text()
    assert "atom.global.gpu.cas.b32" in f16 and "membar.gl;" in f16  # the CAS loop, fenced (acq_rel)
    assert ".acq_rel" in (tmp_path / "add_contended-f16-neighbours-sm70.ptx").read_text()
    assert "add.noftz.f16x2" in (tmp_path / "add_contended-f16-neighbours-sm70.ptx").read_text()


# --- the record format ------------------------------------------------------------------------------


def test_scalars_take_the_width_of_their_param() -> None:
    assert numerics._scalar(-3, "u32").value == -3  # two's complement in 32 bits
    assert numerics._scalar(2**32 + 5, "u64").value == 2**32 + 5
    assert numerics._scalar(True, "u8").value == 1
    assert numerics._scalar(0.5, "f32").value == 0.5


def test_launches_share_tensors_by_role() -> None:
    tensors: dict[str, dict] = {}
    out = {"dtype": "float16", "shape": [4, 8], "strides": [8, 1], "role": "output"}
    assert record_format._tensor_key(tensors, out, "output_ptr") == "output"
    assert record_format._tensor_key(tensors, dict(out), "Out") == "output"  # same tensor
    other = out | {"shape": [2, 8]}
    assert record_format._tensor_key(tensors, other, "O2") == "output.O2"
    assert set(tensors) == {"output", "output.O2"}


def test_records_without_a_reference_are_listed_not_run(tmp_path: Path) -> None:
    record = {"schema": record_format.SCHEMA, "check": "fused_moe", "arch": 61, "launches": []}
    (tmp_path / "sm_61").mkdir()
    (tmp_path / "sm_61" / "fused_moe__m4.json").write_text(json.dumps(record))
    (tmp_path / "results.json").write_text(json.dumps({"device": "x"}))  # not a record
    (tmp_path / "broken.json").write_text("{")
    assert [r["check"] for _, r in load_records(tmp_path)] == ["fused_moe"]
    assert unchecked(tmp_path) == {"fused_moe": 1}
    assert unchecked(tmp_path, (70,)) == {}


# --- vLLM's kernels (downloads the sdist once) ------------------------------------------------------


@pytest.fixture(scope="module")
def patched_vllm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from stackforge.verify.upstream import repos

    return online(lambda: repos.patched_repo("vllm", tmp_path_factory.mktemp("vllm") / "src", VLLM_SERIES))


@pytest.mark.upstream
def test_suite_compiles_for_pascal_and_volta(patched_vllm: Path, state: Path, tmp_path: Path) -> None:
    """Every record of the suite for sm_61 and sm_70 with the patched vLLM tree and Triton: within the
    arch's shared memory, arguments matching the PTX. About a minute on two cores, cold."""
    setup = triton_overlay.prepare(state, TRITON_SERIES)
    built, log = numerics_build.build_in_subprocess(tmp_path, patched_vllm, (61, 70), setup.path, state)
    assert [b.detail for b in built if not b.ok] == [], log
    records = check_records(tmp_path)
    assert len(records) == len(built) and {r["check"] for _, r in records} <= set(checks.CHECKS)
    for _, record in records:
        for launch in record["launches"]:
            assert launch["shared"] <= CAPABILITIES[record["arch"]].smem_per_block_optin
    pp = json.loads((tmp_path / "prefix_prefill-h256-sm61.json").read_text())
    assert "BLOCK_M=16 BLOCK_N=16 BLOCK_SIZE=16" in pp["label"]  # 0020's tiles for 48 KB, head 256


@pytest.mark.gpu
@pytest.mark.upstream
@needs_nvrtc
def test_records_run_correctly_on_the_gpu(patched_vllm: Path, state: Path, tmp_path: Path) -> None:
    """Build the whole suite here and run it through the driver JIT: every case within tolerance."""
    why = numerics.gpu_present()
    if why:
        pytest.skip(f"no GPU to run the PTX on: {why}")
    setup = triton_overlay.prepare(state, TRITON_SERIES)
    built, log = numerics_build.build_in_subprocess(tmp_path, patched_vllm, (60, 61, 70), setup.path, state)
    assert built and all(b.ok for b in built), log
    results = numerics.run_checks(tmp_path)
    assert len(results) == len(built) and [r for r in results if not r.ok] == []
