"""Issue 13's kernels the model list reaches: Mamba2 (causal conv1d, selective state update, the SSD
chunk kernels), Qwen3-Next's gated delta net (FLA), GPTQ MoE, MoE LoRA and EAGLE.

Offline: the audit's view of `@triton.autotune` / `@triton.heuristics` (`tuning`), a config the
tree's own pruning drops (status "pruned", not a failure) and the report's autotune summary, on a
tiny real kernel. Marked `upstream`: the real v0.14.0 kernels, unpatched and with patches/vllm
(0023 prunes the SSD configs over the shared-memory limit), for pascal and volta.
"""

from __future__ import annotations

import importlib.util
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from stackforge.cuda.caps import CAPABILITIES
from stackforge.verify.kernels import tuning
from stackforge.verify.kernels.audit import audit, select_cases
from stackforge.verify.kernels.cases import all_cases
from stackforge.verify.kernels.cases_ssm import tuned
from stackforge.verify.kernels.launch import Case, Tensor
from stackforge.verify.kernels.report import Report, Result, autotune_lines

REPO = Path(__file__).resolve().parents[1]

TUNED_KERNEL = textwrap.dedent(
    """
    import triton
    import triton.language as tl

    def fitting(configs, kwargs, max_shared_mem):  # the rule patches/vllm 0023 attaches to its hook
        return [c for c in configs if 4 * c.kwargs["BLOCK"] * kwargs["K"] <= max_shared_mem]

    def prune(configs, nargs, **kwargs):
        return fitting(configs, kwargs, 49152)

    prune.fitting = fitting

    @triton.heuristics({"HAS_B": lambda args: args["B"] is not None})
    @triton.autotune(
        configs=[triton.Config({"BLOCK": 32}, num_warps=2), triton.Config({"BLOCK": 128}, num_warps=8, num_stages=2)],
        key=["K"],
        prune_configs_by={"early_config_prune": prune},
    )
    @triton.jit
    def rowdot(A, B, Y, K: tl.constexpr, BLOCK: tl.constexpr, HAS_B: tl.constexpr):
        rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        a = tl.load(A + rows[:, None] * K + tl.arange(0, K)[None, :]).to(tl.float32)
        b = tl.load(B + tl.arange(0, K)).to(tl.float32) if HAS_B else 1.0
        tl.store(Y + rows, tl.sum(a * b[None, :], axis=1))
    """
)


@pytest.fixture(scope="module")
def rowdot(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("tuned") / "rowdot.py"
    path.write_text(TUNED_KERNEL)  # Triton reads a kernel's source from its file
    spec = importlib.util.spec_from_file_location("rowdot", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _build(config: int):
    def build(mod, arch: int, smem: int):
        kw = {
            "A": Tensor("float16", (256, 128)),
            "B": Tensor("float16", (128,)),
            "Y": Tensor("float32", (256,)),
            "K": 128,
        }
        return tuned(mod, "rowdot", (), kw, config, lambda k: (256 // k["BLOCK"],), {}, smem)

    return build


def test_layers_above_the_jit_function_are_walked_as_triton_runs_them(rowdot) -> None:
    from triton.runtime.jit import JITFunction

    assert isinstance(tuning.jit_function(rowdot.rowdot), JITFunction)
    assert tuning.n_configs(rowdot.rowdot) == 2 and tuning.n_configs(tuning.jit_function(rowdot.rowdot)) == 1
    args = (Tensor("float16", (256, 128)), None, Tensor("float32", (256, 128)), 128)
    assert tuning.launch_kwargs(rowdot.rowdot, args, {}, 1) == {
        "HAS_B": False, "BLOCK": 128, "num_warps": 8, "num_ctas": 1, "num_stages": 2,
    }  # fmt: skip
    with pytest.raises(ValueError, match="autotuned: name one of its 2 configs"):
        tuning.launch_kwargs(rowdot.rowdot, args, {})
    # 4 * BLOCK * K bytes: 16 KB fits Pascal's 48 KB, 64 KB fits neither 48 KB nor 32 KB
    assert not tuning.pruned(rowdot.rowdot, {"K": 128}, 0, 49152)
    assert tuning.pruned(rowdot.rowdot, {"K": 128}, 1, 49152)
    assert not tuning.pruned(rowdot.rowdot, {"K": 128}, 1, 98304)
    assert not tuning.pruned(tuning.jit_function(rowdot.rowdot), {"K": 128}, 0, 1)  # no autotuner, no pruning


def test_a_pruned_config_is_not_compiled_and_not_a_failure(
    rowdot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stackforge.verify.kernels.audit_worker import run_case

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "cache"))
    results = []
    for i in (0, 1):
        case = Case(f"rowdot/k128@c{i}", "rowdot", "rowdot", "rowdot", "test", "test", "K 128", _build(i),
                    reach="model", config=i, configs=2)  # fmt: skip
        for arch in (61, 70):
            res, compiled = run_case(case, rowdot, arch, None)
            results.append(res)
            assert (compiled is None) == (res.status == "pruned")
    by = {(r.case, r.arch): r for r in results}
    assert by["rowdot/k128@c0", 61].ok and by["rowdot/k128@c0", 61].shared <= 49152
    assert by["rowdot/k128@c1", 61].status == "pruned" and "49152" in by["rowdot/k128@c1", 61].message
    assert by["rowdot/k128@c1", 70].ok  # 96 KB on Volta: kept, compiled
    report = Report("test", [61, 70], "-", {}, results)
    assert report.failures == [] and report.coverage() == {
        "reached": 1, "audited": 1, "passing": 1, "models": 0, "models_audited": 0, "models_passing": 0}  # fmt: skip
    assert autotune_lines(report) == ["autotune rowdot/k128: sm_61 1 of 2 fit (1 pruned); sm_70 2 of 2 fit"]


def test_autotune_summary_counts_configs_over_the_limit_as_failures() -> None:
    results = [
        Result("k/s@c0", "k", "s", 61, "ok", shared=8192, limit=49152, config=0, configs=3),
        Result("k/s@c1", "k", "s", 61, "shared-memory", shared=65536, limit=49152, config=1, configs=3),
        Result("k/s@c2", "k", "s", 61, "ptxas-error", limit=49152, config=2, configs=3),
        Result("plain/x", "plain", "x", 61, "ok", shared=0, limit=49152),
    ]
    report = Report("pascal", [61], "-", {}, results)
    assert [r.case for r in report.failures] == ["k/s@c1", "k/s@c2"]
    (group,) = report.autotune()
    assert (group["fit"], group["over"], group["other"], group["configs"]) == (1, 1, 1, 3)
    assert autotune_lines(report) == ["autotune k/s: sm_61 1 of 3 fit (1 over the limit, 1 failed)"]
    assert report.summary()["autotune"] == [group]


PIPELINED = textwrap.dedent(
    """
    import triton
    import triton.language as tl

    @triton.jit
    def matmul(A, B, C, K: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        m, n, k = tl.arange(0, BM), tl.arange(0, BN), tl.arange(0, BK)
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for i in range(0, K, BK):
            a = tl.load(A + m[:, None] * K + (i + k)[None, :])
            b = tl.load(B + (i + k)[:, None] * BN + n[None, :])
            acc += tl.dot(a, b)
        tl.store(C + m[:, None] * BN + n[None, :], acc)
    """
)


def test_num_stages_changes_no_code_below_sm80(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What lets the audit compile one of the autotune configs that differ only in num_stages
    (`audit_worker.twin_key`): a pipelined K loop, identical PTX for 2 and 4 stages on sm_61 and
    sm_70, different on sm_80, where Triton's pipeliner runs."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    (tmp_path / "pipelined.py").write_text(PIPELINED)
    spec = importlib.util.spec_from_file_location("pipelined", tmp_path / "pipelined.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "cache"))
    sig = {"A": "*fp16", "B": "*fp16", "C": "*fp32", "K": "constexpr", "BM": "constexpr", "BN": "constexpr",
           "BK": "constexpr"}  # fmt: skip
    consts = {"K": 256, "BM": 32, "BN": 32, "BK": 32}

    def ptx(arch: int, stages: int) -> str:
        aligned = {(i,): [["tt.divisibility", 16]] for i in range(3)}  # as a launch of torch tensors gets
        src = ASTSource(mod.matmul, sig, consts, aligned)
        return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_stages": stages}).asm[
            "ptx"
        ]

    for arch in (61, 70):
        assert ptx(arch, 2) == ptx(arch, 4)
    assert ptx(80, 2) != ptx(80, 4)


# v0.14.0's autotune lists (the @triton.autotune configs of each file), as the cases number them
CONFIGS = {"ssd_chunk_cumsum": 6, "ssd_chunk_state": 9, "ssd_state_passing": 6, "ssd_bmm_chunk": 9,
           "ssd_chunk_scan": 11, "fla_chunk_local_cumsum": 4, "fla_chunk_scaled_dot_kkt": 27, "fla_solve_tril": 12,
           "fla_recompute_w_u": 9, "fla_chunk_delta_h": 12, "fla_chunk_o": 36}  # fmt: skip
NEW = {"causal_conv1d_fwd", "causal_conv1d_update", "selective_state_update", "mamba_rms_norm_gated",
       "fused_gdn_gating", "fla_l2norm", "fla_fused_recurrent", "fla_rms_norm_gated", "fused_moe_gptq_awq",
       "fused_moe_lora", "eagle_prepare_next_token", "eagle_prepare_inputs", *CONFIGS}  # fmt: skip


def test_new_kernels_are_in_the_full_audit_one_case_per_config() -> None:
    cases = all_cases()
    default, skipped = select_cases(None, (64,), models=("all",), options=True)
    assert {c.kernel for c in default} >= NEW and not NEW & set(skipped)
    per_kernel = Counter(c.kernel for c in cases if c.config is not None)
    assert per_kernel == CONFIGS
    for c in cases:
        if c.kernel in CONFIGS:
            assert c.configs == CONFIGS[c.kernel] and c.id.endswith(f"@c{c.config}") and c.cost >= 1
    reach = {c.kernel: c.reach for c in cases if c.kernel in NEW and "mtp" not in c.id}
    assert reach["fused_moe_lora"] == reach["eagle_prepare_inputs"] == "option"
    assert reach["ssd_chunk_scan"] == reach["fla_chunk_o"] == reach["fused_moe_gptq_awq"] == "model"


# --- vLLM 0.14.0 itself (downloads the sdist once) ---------------------------------------------------

TRITON_SERIES = sorted((REPO / "patches" / "triton").glob("*.patch"))
SSD_DOTS = ["ssd_chunk_state", "ssd_bmm_chunk", "ssd_chunk_scan"]
# configs over the per-block limit on the unpatched tree (Granite-4.0-H: dstate 128, chunk 256)
OVER = {
    60: {"ssd_chunk_state/granite4@c0", "ssd_bmm_chunk/granite4@c0", *(f"ssd_chunk_scan/granite4@c{i}" for i in range(8))},
    70: {"ssd_chunk_scan/granite4@c0", "ssd_chunk_scan/granite4@c1"},
}  # fmt: skip
OVER[61] = OVER[60]


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the v0.14.0 sdist, the same with patches/vllm applied by git am)."""
    import os
    import subprocess

    from stackforge.core.git import HERMETIC
    from stackforge.verify.upstream import pypi as upstream
    from stackforge.verify.upstream import repos

    patched = repos.upstream_repo("vllm", tmp_path_factory.mktemp("vllm") / "src")
    series = sorted((REPO / "patches" / "vllm").glob("*.patch"))
    done = subprocess.run(["git", "am", "--quiet", *map(str, series)], cwd=patched,
                          env={**os.environ, **HERMETIC}, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return upstream.vllm_sdist(), patched


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audit-state")  # one Triton cache for these tests


@pytest.mark.upstream
def test_case_config_counts_and_dtypes_are_the_trees(trees: tuple[Path, Path]) -> None:
    """The cases number v0.14.0's autotune lists; the module constants the FLA lists depend on
    (check_shared_mem, is_nvidia_hopper) are False on these GPUs, as the stand-ins make them; the
    model families run in float16 there."""
    from stackforge.verify.kernels.dtypes import auto_dtype
    from stackforge.verify.kernels.loader import KernelLoader

    plain, patched = trees
    cases = {c.kernel: c for c in all_cases() if c.kernel in NEW}
    for tree in (plain, patched):
        mods = KernelLoader(tree, 61).load_all(sorted({c.module for c in cases.values()}))
        for kernel, case in cases.items():
            assert tuning.n_configs(getattr(mods[case.module], case.function)) == case.configs, kernel
        chunk_o = tuning.autotuner(mods["vllm.model_executor.layers.fla.ops.chunk_o"].chunk_fwd_kernel_o)
        assert {c.kwargs["BK"] for c in chunk_o.configs} == {32, 64}
        assert {c.num_warps for c in chunk_o.configs} == {2, 4, 8}
    for model_type in ("granitemoehybrid", "nemotron_h", "mamba2", "qwen3_next", "mixtral"):
        assert auto_dtype(plain, 61, model_type) == auto_dtype(plain, 70, model_type) == "float16"


# Volta: chunk_scan's two configs over 96 KB and the cheaper ones that fit (the 64x128 and 128x128
# tiles that fit take minutes to compile; the full audit compiles them)
VOLTA_SSD = [f"ssd_chunk_scan/granite4@c{i}" for i in (0, 1, 7, 8, 9)]  # "@c1" selects c10 too


@pytest.mark.upstream
@pytest.mark.parametrize(
    ("env", "archs", "kernels"), [("pascal", [60, 61], SSD_DOTS), ("volta", [70], VOLTA_SSD)]
)
def test_ssd_configs_over_the_limit_fail_unpatched_and_are_pruned_by_0023(
    trees: tuple[Path, Path], state: Path, env: str, archs: list[int], kernels: list[str]
) -> None:
    plain, patched = trees
    kw = dict(kernels=kernels, state=state, show_progress=False)
    before = audit(None, env, archs, plain, TRITON_SERIES, **kw)
    after = audit(None, env, archs, patched, TRITON_SERIES, **kw)
    for arch in archs:
        limit = CAPABILITIES[arch].smem_per_block_optin
        over = {r.case for r in before.failures if r.arch == arch}
        assert over == OVER[arch]
        assert all(r.status == "shared-memory" and r.shared > limit for r in before.failures)
        # 0023's estimate decides as Triton's allocation does: it prunes exactly those configs
        assert {r.case for r in after.results if r.arch == arch and r.status == "pruned"} == over
    assert after.failures == []
    for r in after.results:
        if r.ok:
            assert r.shared <= CAPABILITIES[r.arch].smem_per_block_optin
            assert r.occupancy is not None and r.occupancy.blocks >= 1
    kept = {(r.case, r.arch): r.shared for r in after.results if r.ok}
    assert kept == {(r.case, r.arch): r.shared for r in before.results if r.ok}  # the same kernels


# the new kernels that are not SSD dots, with the largest-tile config of each FLA autotune list
REST = ["causal_conv1d", "selective_state_update", "mamba_rms_norm_gated", "ssd_chunk_cumsum/granite4@c5",
        "ssd_state_passing/granite4@c5", "fused_gdn_gating", "fla_l2norm", "fla_fused_recurrent", "fla_rms_norm_gated",
        "fla_chunk_local_cumsum/qwen3next@c3", "fla_chunk_scaled_dot_kkt/qwen3next@c26", "fla_solve_tril/qwen3next@c11",
        "fla_recompute_w_u/qwen3next@c8", "fla_chunk_delta_h/qwen3next@c11", "fla_chunk_o/qwen3next@c26",
        "fused_moe_gptq_awq", "fused_moe_lora", "eagle_prepare"]  # fmt: skip


@pytest.mark.upstream
@pytest.mark.parametrize(("env", "archs"), [("pascal", [60, 61]), ("volta", [70])])
def test_the_other_new_kernels_compile_for_pascal_and_volta(
    trees: tuple[Path, Path], state: Path, env: str, archs: list[int]
) -> None:
    _, patched = trees
    report = audit(None, env, archs, patched, TRITON_SERIES, kernels=REST, state=state, show_progress=False)
    assert not report.failures, [(r.case, r.arch, r.status, r.message) for r in report.failures]
    assert {r.kernel for r in report.results} == NEW - set(SSD_DOTS)
    for r in report.results:
        assert 0 <= r.shared <= CAPABILITIES[r.arch].smem_per_block_optin
        assert r.occupancy is not None and r.occupancy.blocks >= 1, r.case  # what compiles can launch


@pytest.mark.upstream
def test_0023_prunes_by_the_devices_limit_below_sm80_only(trees: tuple[Path, Path]) -> None:
    """0023's rule read from the patched tree for each arch: Pascal's 48 KB and a V100's 96 KB
    prune the configs listed above, sm_80 prunes nothing, and a limit no config fits keeps all."""
    from stackforge.verify.kernels.loader import KernelLoader

    _, patched = trees
    ops = "vllm.model_executor.layers.mamba.ops."
    kernels = {"ssd_bmm_chunk": ("ssd_bmm", "_bmm_chunk_fwd_kernel"),
               "ssd_chunk_state": ("ssd_chunk_state", "_chunk_state_fwd_kernel"),
               "ssd_chunk_scan": ("ssd_chunk_scan", "_chunk_scan_fwd_kernel")}  # fmt: skip
    kwargs = {"BLOCK_SIZE_DSTATE": 128}  # dstate 128: chunk_scan's C @ states dot is 128 deep
    for arch, limit in ((61, 49152), (70, 98304), (80, 166912)):
        mods = KernelLoader(patched, arch).load_all(sorted({ops + m for m, _ in kernels.values()}))
        for kernel, (module, function) in kernels.items():
            tuner = tuning.autotuner(getattr(mods[ops + module], function))
            fitting = tuner.early_config_prune.fitting
            dropped = {f"{kernel}/granite4@c{i}" for i, c in enumerate(tuner.configs)
                       if c not in fitting(tuner.configs, kwargs, limit)}  # fmt: skip
            assert dropped == {c for c in OVER.get(arch, set()) if c.startswith(kernel + "/")}
            assert fitting(tuner.configs, kwargs, 1) == list(tuner.configs)  # none fits: all kept
