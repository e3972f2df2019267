"""The kernel audit, the Triton overlay and the vLLM kernel loader.

Unit tests compile tiny kernels with the installed triton 3.5.1 (its bundled ptxas; no GPU).
Tests marked `upstream` fetch the vLLM 0.14.0 sdist (cached) and audit a representative subset
of vLLM's kernels: unpatched, they must fail as the seeds describe (evict_last on sm_61, prefix
prefill's 64 KB, atomics' memory-order qualifiers); with patches/vllm and patches/triton they
must compile for pascal and volta. The subset (head sizes 64 and 256, plus the atomics kernels)
keeps them near two minutes on two cores; `stackforge audit kernels` runs all 53 shapes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import jsonschema
import pytest

from stackforge.core.console import Failure
from stackforge.core.git import HERMETIC
from stackforge.cuda.caps import CAPABILITIES
from stackforge.verify.kernels import overlay as triton_overlay
from stackforge.verify.kernels.audit import audit
from stackforge.verify.kernels.loader import KernelLoader
from stackforge.verify.numerics import checks, records
from stackforge.verify.numerics import gpu as numerics
from stackforge.verify.numerics.records import RECORD_SCHEMA

REPO = Path(__file__).resolve().parents[1]
TRITON_SERIES = sorted((REPO / "patches" / "triton").glob("*.patch"))
VLLM_SERIES = sorted((REPO / "patches" / "vllm").glob("*.patch"))


@pytest.fixture(scope="session")
def overlay(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return triton_overlay.prepare(tmp_path_factory.mktemp("state"), TRITON_SERIES).path


# --- the overlay -----------------------------------------------------------------------------------


def test_series_maps_repo_paths_to_wheel_paths() -> None:
    assert TRITON_SERIES, "patches/triton is empty"
    for patch in TRITON_SERIES:
        mapped = triton_overlay.map_patch(patch.read_text(), patch)
        headers = [
            line for line in mapped.splitlines() if line.startswith(("diff --git", "--- a/", "+++ b/"))
        ]
        assert headers and not any("third_party/" in line for line in headers)
        assert (
            "diff --git a/triton/backends/nvidia/compiler.py b/triton/backends/nvidia/compiler.py" in mapped
        )
        assert "+++ b/triton/backends/nvidia/compiler.py" in mapped


def test_patch_to_a_file_the_wheel_lacks_is_refused(tmp_path: Path) -> None:
    patch = tmp_path / "0001-cxx.patch"
    patch.write_text(
        "diff --git a/lib/Dialect/X.cpp b/lib/Dialect/X.cpp\n--- a/lib/Dialect/X.cpp\n+++ b/lib/Dialect/X.cpp\n"
    )
    with pytest.raises(Failure, match=r"0001-cxx.patch changes lib/Dialect/X.cpp"):
        triton_overlay.map_patch(patch.read_text(), patch)


def test_overlay_applies_inside_a_git_work_tree(tmp_path: Path) -> None:
    # The workspace is a git repository: `git apply` there skips paths outside the current
    # folder unless the overlay keeps git from finding it.
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True, env={**os.environ, **HERMETIC})
    setup = triton_overlay.prepare(tmp_path / ".stackforge", TRITON_SERIES)
    assert setup.how == "overlay"
    compiler = (setup.path / "triton" / "backends" / "nvidia" / "compiler.py").read_text()
    assert "strip_cache_hints_pre_sm70" in compiler and "_cas_loop_pre_sm70" in compiler
    lib = Path("_C") / "libtriton.so"  # binaries are links to the installation, not copies
    assert (setup.path / "triton" / lib).resolve() == (triton_overlay.installed_triton()[0] / lib).resolve()
    assert triton_overlay.already_patched(setup.path / "triton", TRITON_SERIES)
    assert not triton_overlay.already_patched(triton_overlay.installed_triton()[0], TRITON_SERIES)
    again = triton_overlay.prepare(tmp_path / ".stackforge", TRITON_SERIES)
    assert again.path == setup.path  # cached by installation + patch bytes


# --- tiny kernels through the overlay ---------------------------------------------------------------

PROBE = textwrap.dedent(
    """
    import json, sys
    import triton, triton.language as tl
    from triton.compiler import ASTSource
    from triton.backends.compiler import GPUTarget

    @triton.jit
    def evict(X, Y, N: tl.constexpr):
        o = tl.arange(0, N)
        tl.store(Y + o, tl.load(X + o, eviction_policy="evict_last"), eviction_policy="evict_first")

    @triton.jit
    def atomic(X, Y, N: tl.constexpr, SEM: tl.constexpr):
        o = tl.arange(0, N)
        tl.atomic_add(Y + (o % 64), tl.load(X + o), sem=SEM)

    @triton.jit
    def cas16(Y, C, V, N: tl.constexpr):
        o = tl.arange(0, N)
        tl.atomic_cas(Y + o, tl.load(C + o), tl.load(V + o))

    aligned = [["tt.divisibility", 16]]
    cases = {
        "evict": (evict, {"X": "*fp16", "Y": "*fp16", "N": "constexpr"}, {"N": 1024}),
        "atomic_f32_acq_rel": (atomic, {"X": "*fp32", "Y": "*fp32", "N": "constexpr", "SEM": "constexpr"},
                               {"N": 1024, "SEM": "acq_rel"}),
        "atomic_f16_relaxed": (atomic, {"X": "*fp16", "Y": "*fp16", "N": "constexpr", "SEM": "constexpr"},
                               {"N": 1024, "SEM": "relaxed"}),
        "cas_f16": (cas16, {"Y": "*fp16", "C": "*fp16", "V": "*fp16", "N": "constexpr"}, {"N": 256}),
    }
    out = {}
    for arch in (61, 70):
        for name, (fn, sig, const) in cases.items():
            attrs = {(i,): aligned for i, v in enumerate(sig.values()) if v != "constexpr"}
            try:
                k = triton.compile(ASTSource(fn, sig, const, attrs), target=GPUTarget("cuda", arch, 32))
                out[f"{name}/{arch}"] = {"ok": True, "ptx": k.asm["ptx"]}
            except Exception as exc:
                out[f"{name}/{arch}"] = {"ok": False, "error": str(exc)}
    with open(sys.argv[1], "w") as f:
        json.dump(out, f)
    """
)


def probe(tmp_path: Path, overlay: Path | None) -> dict:
    tmp_path.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path / "cache")}
    env["PYTHONPATH"] = str(overlay) if overlay else ""
    (tmp_path / "probe.py").write_text(PROBE)  # Triton reads a kernel's source from its file
    subprocess.run(
        [sys.executable, "probe.py", "out.json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    return json.loads((tmp_path / "out.json").read_text())


@pytest.fixture(scope="module")
def probes(tmp_path_factory: pytest.TempPathFactory, overlay: Path) -> tuple[dict, dict]:
    tmp = tmp_path_factory.mktemp("probe")
    return probe(tmp / "plain", None), probe(tmp / "patched", overlay)


def test_installed_triton_fails_for_sm61_as_the_seeds_say(probes: tuple[dict, dict]) -> None:
    plain, _ = probes
    assert "Modifier '.evict_last' on 'ld' requires .target sm_70 or higher" in plain["evict/61"]["error"]
    assert "Feature '.acq_rel' requires .target sm_70 or higher" in plain["atomic_f32_acq_rel/61"]["error"]
    assert "Feature '.relaxed' requires .target sm_70 or higher" in plain["atomic_f16_relaxed/61"]["error"]
    assert "requires .target sm_70 or higher" in plain["cas_f16/61"]["error"]
    assert all(
        plain[f"{name}/70"]["ok"] for name in ("evict", "atomic_f32_acq_rel", "atomic_f16_relaxed", "cas_f16")
    )


def test_patched_triton_compiles_them_for_sm61_and_keeps_sm70_ptx(probes: tuple[dict, dict]) -> None:
    plain, patched = probes
    assert all(r["ok"] for r in patched.values()), {k: r.get("error", "")[:300] for k, r in patched.items()}
    evict = patched["evict/61"]["ptx"]
    assert "::evict_" not in evict and "ld.global" in evict and "st.global" in evict
    f32 = patched["atomic_f32_acq_rel/61"]["ptx"]
    assert ".acq_rel" not in f32 and "atom.global.gpu.add.f32" in f32
    # acq_rel: a fence before and after each atom
    assert f32.count("membar.gl;") == 2 * f32.count("atom.global.gpu.add.f32")
    f16 = patched["atomic_f16_relaxed/61"]["ptx"]
    assert ".relaxed" not in f16 and "atom.add" not in f16 and "membar" not in f16  # relaxed: no fence
    assert "atom.global.gpu.cas.b32" in f16 and "add.rn.f16x2" in f16  # the packed CAS loop
    cas = patched["cas_f16/61"]["ptx"]
    assert "cas.b16" not in cas and "selp.b16" in cas and "membar.gl;" in cas
    for name in ("evict", "atomic_f32_acq_rel", "atomic_f16_relaxed", "cas_f16"):  # sm_70 untouched
        assert _same_code(patched[f"{name}/70"]["ptx"], plain[f"{name}/70"]["ptx"]), name
    assert "L1::evict_last" in patched["evict/70"]["ptx"]


def _same_code(a: str, b: str) -> bool:
    """PTX equal up to its debug sections (they name the triton files, which live elsewhere in the
    overlay)."""
    return a.split("\t.file")[0] == b.split("\t.file")[0]


# --- the vLLM kernel loader -------------------------------------------------------------------------

KERNEL_FILE = textwrap.dedent(
    """
    import torch
    import numpy_is_not_installed_here
    from vllm.distributed import get_tp_group
    from vllm.platforms import current_platform
    from vllm.triton_utils import tl, triton
    from vllm.v1.attention.ops.helpers import double

    BASE_BLOCK = 128 if current_platform.has_device_capability(80) else 64
    FP8_MAX = torch.finfo(current_platform.fp8_dtype()).max

    @triton.jit
    def kernel(X, N: tl.constexpr, LIMIT: tl.constexpr = FP8_MAX):
        o = tl.arange(0, N)
        tl.store(X + o, double(tl.load(X + o)))

    @torch.inference_mode()
    def launcher(x: torch.Tensor | None) -> None:
        get_tp_group()
    """
)
HELPER_FILE = textwrap.dedent(
    """
    from vllm.triton_utils import tl, triton

    @triton.jit
    def double(x):
        return x * 2
    """
)


def fake_tree(root: Path) -> Path:
    ops = root / "vllm" / "v1" / "attention" / "ops"
    ops.mkdir(parents=True)
    (root / "vllm" / "__init__.py").write_text("raise RuntimeError('vllm/__init__.py must not run')\n")
    (ops / "kern.py").write_text(KERNEL_FILE)
    (ops / "helpers.py").write_text(HELPER_FILE)
    return root


@pytest.mark.parametrize(("arch", "block"), [(61, 64), (70, 64), (80, 128)])
def test_loader_runs_kernel_files_without_vllm_or_torch(tmp_path: Path, arch: int, block: int) -> None:
    import triton

    loader = KernelLoader(fake_tree(tmp_path), arch)
    with loader.active():
        mod = loader.load("vllm.v1.attention.ops.kern")
    assert block == mod.BASE_BLOCK
    assert mod.FP8_MAX == 448.0  # float8_e4m3fn, as torch.finfo says
    assert isinstance(mod.kernel, triton.runtime.jit.JITFunction)
    assert isinstance(mod.double, triton.runtime.jit.JITFunction)  # real helper from another kernel file
    assert not any(name == "vllm" or name.startswith("vllm.") for name in sys.modules)
    if loader.torch_standin:
        assert "torch" not in sys.modules


def test_loaded_kernel_compiles_for_sm61(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    loader = KernelLoader(fake_tree(tmp_path), 61)
    with loader.active():
        mod = loader.load("vllm.v1.attention.ops.kern")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "cache"))
    k = triton.compile(
        ASTSource(mod.kernel, {"X": "*fp32", "N": "constexpr"}, {"N": 128}), target=GPUTarget("cuda", 61, 32)
    )
    assert ".target sm_61" in k.asm["ptx"] and k.metadata.shared == 0


# --- --run and the numerics module ----------------------------------------------------------------


def workspace(root: Path) -> Path:
    """A workspace with this repository's manifest and GPU environments."""
    (root / "recipes" / "variants").mkdir(parents=True)
    shutil.copy(REPO / "git-repos.txt", root / "git-repos.txt")
    for variant in (REPO / "recipes" / "variants").glob("*.yaml"):
        shutil.copy(variant, root / "recipes" / "variants" / variant.name)
    return root


def test_run_without_a_gpu_fails_after_the_report(tmp_path: Path) -> None:
    """`--run` on a machine without a GPU: the compile report first, then a plain "no GPU" failure
    that says what to do (exit 1); --json keeps one document and carries the reason."""
    if numerics.gpu_present() is None:
        pytest.skip("this machine has a GPU: --run runs the records here")
    argv = [sys.executable, "-m", "stackforge", "--root", str(workspace(tmp_path / "ws")), "audit", "kernels"]
    argv += ["-e", "pascal", "--vllm-src", str(fake_tree(tmp_path / "vllm")), "--kernels", "mrope"]
    argv += ["--triton-patches", "none", "--run"]
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 1
    assert "audited 1 kernels at 1 shapes for 2 arch(s)" in done.stdout  # the report came first
    assert "error: no GPU: " in done.stderr and "so --run cannot run the records" in done.stderr
    assert (
        "add --save-ptx DIR" in done.stderr and "python -m stackforge.verify.numerics.gpu DIR" in done.stderr
    )
    done = subprocess.run([*argv, "--json"], capture_output=True, text=True)
    assert done.returncode == 1
    data = json.loads(done.stdout)
    assert data["summary"]["compiles"] == 2 and data["numerics"]["error"].startswith("no GPU: ")


def test_limits_are_what_triton_may_opt_into() -> None:
    assert CAPABILITIES[60].smem_per_block_optin == CAPABILITIES[61].smem_per_block_optin == 49152
    assert CAPABILITIES[70].smem_per_block_optin == 98304


# --- vLLM 0.14.0 itself (downloads the sdist once) ---------------------------------------------------

ATOMICS = ["lora_shrink", "bincount"]
SUBSET = [
    "paged_attention_2d",
    "prefix_prefill",
    "encoder_prefill_attention",
    "unified_attention_2d/h",  # the generic cases; the model cases have their own finding (docs)
    *ATOMICS,
]


@pytest.fixture(scope="session")
def vllm_trees(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(unpatched sdist tree, the same tree with patches/vllm applied by `git am`)."""
    from stackforge.verify.upstream import pypi as upstream
    from stackforge.verify.upstream import repos

    plain = upstream.vllm_sdist()
    patched = repos.upstream_repo("vllm", tmp_path_factory.mktemp("vllm") / "src")
    done = subprocess.run(
        ["git", "am", "--quiet", *map(str, VLLM_SERIES)],
        cwd=patched,
        env={**os.environ, **HERMETIC},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return plain, patched


@pytest.fixture(scope="session")
def audit_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audit-state")  # one Triton cache for the upstream tests


@pytest.mark.upstream
def test_unpatched_v0140_fails_for_pascal_as_the_seeds_say(
    vllm_trees: tuple[Path, Path], audit_state: Path
) -> None:
    plain, _ = vllm_trees
    report = audit(
        None,
        "pascal",
        [61],
        plain,
        [],
        kernels=SUBSET,
        head_sizes=(64,),
        state=audit_state,
        show_progress=False,
    )
    by = {r.case: r for r in report.results}
    assert by["paged_attention_2d/h64"].status == "ptxas-error"
    assert (
        "Modifier '.evict_last' on 'ld' requires .target sm_70 or higher"
        in by["paged_attention_2d/h64"].message
    )
    assert by["prefix_prefill/h64"].status == "shared-memory"
    assert (by["prefix_prefill/h64"].shared, by["prefix_prefill/h64"].limit) == (65536, 49152)
    assert "Feature '.relaxed' requires .target sm_70" in by["lora_shrink/s1"].message
    assert "Feature '.acq_rel' requires .target sm_70" in by["bincount/p3100"].message
    assert by["unified_attention_2d/h64"].ok  # what TRITON_ATTN runs compiles as shipped
    assert report.summary()["failed"] >= 5


@pytest.mark.upstream
@pytest.mark.parametrize(("env", "archs"), [("pascal", [60, 61]), ("volta", [70])])
def test_series_compiles_for_pascal_and_volta(
    vllm_trees: tuple[Path, Path], audit_state: Path, tmp_path: Path, env: str, archs: list[int]
) -> None:
    _, patched = vllm_trees
    report = audit(
        None, env, archs, patched, TRITON_SERIES, kernels=SUBSET, head_sizes=(64, 256),
        state=audit_state, save=tmp_path / "ptx", show_progress=False,
    )  # fmt: skip
    assert not report.failures, [(r.case, r.arch, r.status, r.message) for r in report.failures]
    assert report.triton["how"] == "overlay" and len(report.triton["patches"]) == len(TRITON_SERIES)
    for r in report.results:
        assert 0 <= r.shared <= CAPABILITIES[r.arch].smem_per_block_optin
        assert r.occupancy is not None and r.occupancy.blocks >= 1  # what compiles can launch
    pp = {r.arch: r for r in report.results if r.case == "prefix_prefill/h256"}
    assert all(r.shared <= 49152 for a, r in pp.items() if a < 70)
    saved = sorted((tmp_path / "ptx").glob("sm_*/*.json"))
    assert len(saved) == len(report.results)
    for path in saved:
        record = json.loads(path.read_text())  # the one record format: stackforge.verify.numerics.gpu runs it
        jsonschema.validate(record, RECORD_SCHEMA)
        (launch,) = record["launches"]
        ptx = (path.parent / launch["ptx"]).read_text()
        assert f".target sm_{record['arch']}" in ptx
        assert len(numerics.ptx_param_types(ptx, launch["entry"])) == len(launch["args"]) + 2  # + scratch
        assert record["check"] == record["kernel"] and all(
            a["tensor"] in record["tensors"] for a in launch["args"] if "tensor" in a
        )
    runnable = {r["check"] for _, r in records.load_records(tmp_path / "ptx") if r["check"] in checks.CHECKS}
    assert runnable == {"prefix_prefill", "encoder_prefill_attention", "unified_attention_2d"}


@pytest.mark.upstream
def test_cli_json_and_exit_code(vllm_trees: tuple[Path, Path], tmp_path: Path) -> None:
    plain, _ = vllm_trees
    ws = workspace(tmp_path / "ws")
    argv = ["--root", str(ws), "audit", "kernels", "-e", "pascal", "--vllm-src", str(plain)]
    argv += ["--kernels", "paged_attention_2d", "--head-sizes", "64", "--json"]
    run = [sys.executable, "-m", "stackforge", *argv, "--triton-patches"]
    done = subprocess.run([*run, "none"], capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    data = json.loads(done.stdout)
    assert data["summary"]["compiles"] == 2 and data["summary"]["by_status"] == {"ptxas-error": 2}
    assert {r["arch"] for r in data["results"]} == {60, 61}
    done = subprocess.run([*run, str(REPO / "patches" / "triton")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["summary"]["failed"] == 0


# --- issue 13: opt-in backends, the queue, lost workers, usage errors, cubin figures --------------


def test_the_default_audit_is_what_a_default_configuration_reaches() -> None:
    """Without options: TRITON_ATTN at the audit's head sizes and the layers of families outside
    the model list; `--model KEY` adds that model's launches and layers, `--options` the kernels of
    vLLM options; what is left out is named with the flag that audits it."""
    from stackforge.core.console import UsageError
    from stackforge.verify.kernels.audit import select_cases

    default, skipped = select_cases(None, (64,))
    assert {c.reach for c in default} == {"default", "model"} and not any(c.model for c in default)
    assert {"unified_attention_2d", "encoder_prefill_attention", "mrope"} <= {c.kernel for c in default}
    assert skipped["ssd_chunk_scan"].endswith("--model granite4")
    assert skipped["fla_chunk_o"].endswith("--model qwen3next") and "--options" in skipped["lora_shrink"]
    gemma, _ = select_cases(None, (64,), models=("gemma2",))
    assert {c.id for c in gemma} - {c.id for c in default} == {
        f"{k}/gemma2{layer}-fp16" for k in ("reshape_and_cache_flash", "unified_attention_2d",
        "unified_attention_3d", "reduce_segments") for layer in ("", "-full")}  # fmt: skip
    hybrid, left = select_cases(None, (64,), models=("granite4",))
    assert {"ssd_chunk_scan", "causal_conv1d_fwd", "fused_moe"} <= {c.kernel for c in hybrid}
    assert "ssd_chunk_scan" not in left and "fla_chunk_o" in left
    options, _ = select_cases(None, (64,), options=True)
    assert {"lora_shrink", "bincount", "eagle_prepare_inputs"} <= {c.kernel for c in options}
    with pytest.raises(UsageError, match="no model llama9"):
        select_cases(None, (64,), models=("llama9",))


def test_rocm_attn_kernels_are_opt_in() -> None:
    """TRITON_ATTN is what vLLM picks below sm_80: ROCM_ATTN's kernels are audited on request only,
    and the report says how; every case says who reaches it."""
    from stackforge.verify.kernels.audit import select_cases

    rocm = {"prefix_prefill", "prefix_prefill_alibi", "paged_attention_2d"}
    default, skipped = select_cases(None, (64,))
    assert not {c.kernel for c in default} & rocm
    assert rocm <= set(skipped) and all("--backends rocm_attn" in skipped[k] for k in rocm)
    everything, left = select_cases(None, (64,), ("rocm_attn",))
    assert set(left) == set(skipped) - rocm and len(everything) == len(default) + 3
    named, _ = select_cases(["prefix_prefill"], (64,))
    assert {c.kernel for c in named} == {"prefix_prefill", "prefix_prefill_alibi"}
    everything, none = select_cases(None, (64,), ("rocm_attn",), models=("all",), options=True)
    assert none == {}
    assert {c.reach for c in everything} <= {"default", "model", "option", "not-default-backend"}
    costs = [c.cost for c in everything]
    assert max(costs) > 1 and min(costs) == 1  # a static estimate: the queue hands out the longest first


WORKER_MODULE = textwrap.dedent(
    """
    import os, sys, time
    from stackforge.verify.kernels.worker import serve

    def handle(req):
        print("noise on stdout goes to the log")
        if req["do"] == "die":
            os._exit(3)
        if req["do"] == "hang":
            time.sleep(60)
        yield {"event": "echo", "value": req["do"]}

    if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
        sys.exit(serve(handle))
    """
)


def test_worker_protocol_survives_noise_and_reports_death_and_hangs(tmp_path: Path) -> None:
    from stackforge.verify.kernels.worker import Worker, WorkerLost

    (tmp_path / "toy_worker.py").write_text(WORKER_MODULE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO / "src")])}
    worker = Worker("toy_worker", env, tmp_path / "logs" / "w.log")
    assert list(worker.request({"do": "a"})) == [{"event": "echo", "value": "a"}]
    assert list(worker.request({"do": "b"})) == [
        {"event": "echo", "value": "b"}
    ]  # one process, many requests
    with pytest.raises(WorkerLost, match="exit 3"):
        list(worker.request({"do": "die"}))
    assert "noise on stdout" in (tmp_path / "logs" / "w.log").read_text()
    worker = Worker("toy_worker", env, tmp_path / "logs" / "w2.log")
    with pytest.raises(WorkerLost, match="no answer in 1 s"):
        list(worker.request({"do": "hang"}, timeout=1))


def test_a_lost_worker_costs_its_own_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One compile whose worker dies or hangs gets worker-died / timeout; every other case keeps its
    result, a fresh worker takes over, the queue serves the costliest first and logs are per run."""
    from stackforge.verify.kernels import audit as audit_mod
    from stackforge.verify.kernels.cases import all_cases
    from stackforge.verify.kernels.worker import WorkerLost

    started, served, logs = [], [], []

    class FakeWorker:
        def __init__(self, module: str, env: dict, log: Path) -> None:
            started.append(module)
            logs.append(log)

        def request(self, req: dict, timeout: float | None = None):
            if "describe" in req:  # the twin keys (`audit._twins`): none alike here
                yield {"event": "keys", "keys": {}}
                return
            served.append(req["case"])
            if req["case"] == "fused_moe/m4":
                raise WorkerLost("worker died (exit -9)")
            if req["case"] == "mrope/qwen2.5vl":
                raise WorkerLost("no answer in 1 s (killed)")
            for arch in req["archs"]:
                yield {
                    "event": "result",
                    "case": req["case"],
                    "kernel": "k",
                    "shape": "s",
                    "arch": arch,
                    "status": "ok",
                }

        def close(self) -> None:
            pass

    monkeypatch.setattr(audit_mod, "Worker", FakeWorker)
    cases = [c for c in all_cases((64,)) if c.kernel in ("fused_moe", "mrope", "lora_shrink", "bincount")]
    kw = dict(vllm_src=tmp_path, archs=[60, 61, 70], cases=cases, head_sizes=(64,), triton_path=None,
              state=tmp_path / "state", jobs=1, cache=tmp_path / "cache")  # fmt: skip
    results = audit_mod.run_audit(**kw)
    by = {(r.case, r.arch): r.status for r in results}
    assert len(results) == len(cases) * 3
    assert by[("fused_moe/m4", 60)] == by[("fused_moe/m4", 61)] == "worker-died"
    assert by[("mrope/qwen2.5vl", 70)] == "timeout"
    assert by[("fused_moe/m256", 60)] == by[("bincount/p3100", 70)] == "ok"
    assert served[0].startswith("lora_shrink/s3") and len(served) == len(cases) * 2  # a group per major
    assert len(started) >= 3  # fresh workers after each loss
    audit_mod.run_audit(**kw)
    assert all(f"-{os.getpid()}" in log.parent.name for log in logs)  # per run: time and pid


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--head-sizes", "abc"], "not a whole number"), (["--head-sizes", "0"], "too small"),
     (["--jobs", "0"], "must be at least 1"), (["--backends", "flash"], "unknown backend")],
)  # fmt: skip
def test_bad_options_are_usage_errors(tmp_path: Path, extra: list[str], message: str) -> None:
    argv = [sys.executable, "-m", "stackforge", "--root", str(workspace(tmp_path / "ws")), "audit", "kernels"]
    argv += ["-e", "pascal", "--vllm-src", str(fake_tree(tmp_path / "vllm")), *extra]
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


FP16_KERNEL = textwrap.dedent(
    """
    import triton
    import triton.language as tl

    @triton.jit
    def axpy(X, Y, N: tl.constexpr):
        o = tl.arange(0, N)
        tl.store(Y + o, tl.load(X + o) * 3.0 + tl.load(Y + o))
    """
)


def test_sm61_ptx_is_sm60_ptx_retargeted_and_cubin_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim the audit's one-compile-per-major rests on, and the figures read from the cubin:
    registers and the fp16 SASS instructions (fp16 math on sm_61 runs at 1/64 of fp32)."""
    import importlib.util

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from stackforge.verify.kernels.sass import cubin_stats

    (tmp_path / "fp16k.py").write_text(FP16_KERNEL)
    spec = importlib.util.spec_from_file_location("fp16k", tmp_path / "fp16k.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "cache"))
    sig = {"X": "*fp16", "Y": "*fp16", "N": "constexpr"}
    k60, k61 = (
        triton.compile(ASTSource(mod.axpy, sig, {"N": 1024}), target=GPUTarget("cuda", a, 32))
        for a in (60, 61)
    )
    assert k60.asm["ptx"].replace(".target sm_60", ".target sm_61") == k61.asm["ptx"]
    stats = cubin_stats(k60.asm["cubin"], 60, k60.metadata.num_warps, k60.metadata.shared)
    assert stats["regs"] > 0 and stats["local"] == 0 and stats["fp16_ops"] > 0
    assert set(stats["fp16_by_op"]) <= {"HADD2", "HMUL2", "HFMA2", "HSET2", "HSETP2", "HMNMX2"}
    assert cubin_stats(k60.asm["cubin"], 60, k60.metadata.num_warps, 0) == stats  # cached by cubin hash


def test_dtypes_come_from_the_vllm_tree(tmp_path: Path) -> None:
    """fp32 for the families vLLM refuses in fp16, read from vllm/config/model.py and
    vllm/platforms/cuda.py (here a tree with one family refused); the model cases follow."""
    from stackforge.verify.kernels import dtypes
    from stackforge.verify.kernels.audit import select_cases

    (tmp_path / "vllm" / "config").mkdir(parents=True)
    (tmp_path / "vllm" / "platforms").mkdir()
    (tmp_path / "vllm" / "config" / "model.py").write_text(
        '_FLOAT16_NOT_SUPPORTED_MODELS = {"gemma2": "unstable"}\n'
    )
    (tmp_path / "vllm" / "platforms" / "cuda.py").write_text(
        textwrap.dedent(
            """
            class CudaPlatform:
                @property
                def supported_dtypes(self):
                    if self.has_device_capability(80):
                        return [torch.bfloat16, torch.float16, torch.float32]
                    if self.has_device_capability(60):
                        return [torch.float16, torch.float32]
                    return [torch.float32]
            """
        )
    )
    assert dtypes.supported_dtypes(tmp_path, 61) == ["float16", "float32"]
    assert dtypes.fp16_refused(tmp_path / "elsewhere") == {}  # a partial tree: nothing refused
    assert dtypes.supported_dtypes(tmp_path, 80)[0] == "bfloat16"
    assert dtypes.auto_dtype(tmp_path, 61, "gemma2") == "float32"
    assert dtypes.auto_dtype(tmp_path, 70, "llama") == "float16"
    cases, _ = select_cases(None, (64,), (), lambda m: dtypes.auto_dtype(tmp_path, 61, m), ("all",))
    models = {c.id for c in cases if c.model}
    assert "unified_attention_2d/gemma2-fp32" in models and "unified_attention_2d/gemma2-fp16" not in models
    assert "unified_attention_2d/glm4-fp16" in models  # not refused in this tree
    gemma2 = next(c for c in cases if c.id == "unified_attention_2d/gemma2-fp32")
    launch = gemma2.build(types.SimpleNamespace(_get_tile_size=lambda *a, **k: 16), 61, 49152)
    assert launch.kwargs["USE_SOFTCAP"] and launch.kwargs["softcap"] == 50.0
    assert launch.kwargs["SLIDING_WINDOW"] == 4096 and launch.kwargs["query_ptr"].dtype_name == "float32"
