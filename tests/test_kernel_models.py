"""The model list (`model_table`) and the TRITON_ATTN launch branches it drives.

Unit tests check the table and that it, not code, decides the model cases. Tests marked
`upstream` use the real vLLM 0.14.0 sdist with patches/vllm (cached): the hybrid block size is
evaluated from that tree's own functions, and a sinks case, a hybrid-block case and a set of
identically specialising cases are compiled with Triton for sm_61 (no GPU needed).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from stackforge.verify.kernels import models
from stackforge.verify.kernels.audit import audit
from stackforge.verify.kernels.cases import all_cases, model_cases
from stackforge.verify.kernels.model_table import ROWS

REPO = Path(__file__).resolve().parents[1]
TRITON_SERIES = sorted((REPO / "patches" / "triton").glob("*.patch"))
KERNELS = {"reshape_and_cache_flash", "unified_attention_2d", "unified_attention_3d", "reduce_segments"}


def test_every_row_loads_and_names_its_source() -> None:
    table = models.models()
    assert len(table) == len(ROWS) and len({m.key for m in table}) == len(table)
    keys = {m.key for m in table}
    for m in table:
        assert m.source.strip() and isinstance(m.verified, bool), m.key
        if not m.verified:  # an unlocated source says so in its own words
            assert "not located" in m.source or "not identified" in m.source, m.key
        if m.attention_of:
            assert m.attention_of in keys and not m.head_dim, m.key
            continue
        assert m.head_dim > 0 and m.num_attention_heads % m.num_key_value_heads == 0, m.key
        assert set(m.layers) <= {"sliding", "full"} and m.layers, m.key
        assert ("sliding" in m.layers) == bool(m.sliding_window), m.key
    with pytest.raises(TypeError):  # a misspelt field is refused, not ignored
        models.models([dict(ROWS[0], num_kv_heads=8)])


def test_the_table_drives_the_cases() -> None:
    """A row is all it takes: its heads, window, softcap and sinks become the cases' launch
    branches, one scenario per kind of attention layer, in both dtypes (the audit keeps vLLM's)."""
    row = dict(key="probe", model_type="probe", name="Probe 1B", head_dim=80, num_attention_heads=20,
               num_key_value_heads=4, sliding_window=512, layers=("sliding", "full"), softcap=30.0,
               sinks=True, source="test", verified=True)  # fmt: skip
    cases = model_cases(models.models([row]))
    assert {c.id.split("/")[1] for c in cases} == {
        "probe-fp16", "probe-fp32", "probe-full-fp16", "probe-full-fp32"}  # fmt: skip
    assert {c.kernel for c in cases} == KERNELS and all(c.model == "probe" for c in cases)
    sliding = models.models([row])[0].attention("float16")
    assert [(k, a.sliding_window, a.softcap, a.sinks, a.qpk) for k, a in sliding] == [
        ("sliding", 512, 30.0, True, 5), ("full", 0, 30.0, True, 5)]  # fmt: skip
    branches = sliding[0][1].branches()
    assert branches["USE_SINKS"] and branches["sink_ptr"].dtype_name == "float16"  # the model's dtype
    assert branches["USE_SOFTCAP"] and branches["SLIDING_WINDOW"] == 512
    # the shipped table: every attention row has its cases, the int4 note row has none
    ids = {c.id for c in all_cases()}
    for m in models.models():
        for kernel in KERNELS:
            assert (f"{kernel}/{m.key}-fp16" in ids) == (not m.attention_of), (m.key, kernel)


def test_the_model_list_reaches_more_than_attention() -> None:
    reached = models.reached_kernels(all_cases())
    assert reached >= KERNELS
    assert {"ssd_chunk_scan", "fla_chunk_o", "fused_moe", "fused_moe_gptq_awq"} <= reached  # hybrids, MoE
    assert not reached & {"lora_shrink", "bincount", "prefix_prefill"}  # options and ROCM_ATTN: not models


@pytest.fixture(scope="module")
def tree() -> Path:
    from stackforge.verify.upstream.repos import patched_sdist_tree

    return patched_sdist_tree("0.14.0", sorted((REPO / "patches" / "vllm").glob("*.patch")))


@pytest.mark.upstream
def test_hybrid_block_size_is_the_trees(tree: Path) -> None:
    """The state shapes come from the tree's get_mamba_state_shape_from_config; the block is the
    least multiple of 16 whose attention page holds the mamba page (HybridAttentionMambaModelConfig)."""
    for m in (m for m in models.models() if m.hybrid):
        cfg = {k: v for k, v in m.hybrid.items() if k != "architecture"}
        shapes = models.state_shapes(tree, m.hybrid["architecture"], tuple(sorted(cfg.items())))
        assert len(shapes) == 2 and shapes[0][0] == 3, (m.key, shapes)  # conv state: kernel 4 - 1 rows
        for dtype in ("float16", "float32"):
            block = models.hybrid_block_size(tree, m, dtype)
            ssm = models.ssm_cache_dtype(tree, m.hybrid["architecture"], cfg)
            size = {"float16": 2, "float32": 4}
            page = (
                math.prod(shapes[0]) * size[dtype]
                + math.prod(shapes[1]) * size[dtype if ssm == "auto" else ssm]
            )
            per_token = 2 * m.num_key_value_heads * m.head_dim * size[dtype]
            assert block % 16 == 0 and block * per_token >= page > (block - 16) * per_token, (m.key, dtype)
            assert block > 16  # larger than the default: the branch the generic cases never take
    granite = next(m for m in models.models() if m.key == "granite4")
    conv = granite.hybrid["mamba_expand"] * granite.hybrid["hidden_size"] + 2 * 128  # + 2 x groups x state
    shapes = models.state_shapes(tree, "GraniteMoeHybridForCausalLM",
                                 tuple(sorted((k, v) for k, v in granite.hybrid.items() if k != "architecture")))  # fmt: skip
    assert shapes == [(3, conv), (48, 64, 128)]
    assert models.ssm_cache_dtype(tree, "NemotronHForCausalLM", {}) == "float16"  # NemotronH's own rule
    assert models.ssm_cache_dtype(tree, "GraniteMoeHybridForCausalLM", {}) == "auto"


def _records(folder: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("sm_61/*.json")}


@pytest.mark.upstream
def test_sinks_and_hybrid_cases_compile_with_the_launchers_constexprs(tree: Path, tmp_path: Path) -> None:
    report = audit(None, "pascal", [61], tree, TRITON_SERIES,
                   kernels=["unified_attention_2d/gptoss", "unified_attention_3d/granite4"],
                   state=tmp_path / "state", save=tmp_path / "ptx", show_progress=False)  # fmt: skip
    assert not report.failures, [(r.case, r.message) for r in report.failures]
    assert {r.case for r in report.results} == {"unified_attention_2d/gptoss-fp16",
        "unified_attention_2d/gptoss-full-fp16", "unified_attention_3d/granite4-fp16"}  # fmt: skip
    recs = _records(tmp_path / "ptx")
    table = {m.key: m for m in models.models()}
    for case, (key, window) in {"unified_attention_2d__gptoss-fp16": ("gptoss", 128),
                                "unified_attention_2d__gptoss-full-fp16": ("gptoss", 0),
                                "unified_attention_3d__granite4-fp16": ("granite4", 0)}.items():  # fmt: skip
        m, (launch,) = table[key], recs[case]["launches"]
        c = launch["constexprs"]
        qpk = m.num_attention_heads // m.num_key_value_heads
        block_m = 16 if qpk <= 16 else 1 << (qpk - 1).bit_length()  # unified_attention's rule
        assert (c["num_queries_per_kv"], c["BLOCK_M"], c["BLOCK_Q"]) == (qpk, block_m, block_m // qpk), case
        assert c["SLIDING_WINDOW"] == window and c["USE_SINKS"] == m.sinks and c["HEAD_SIZE"] == m.head_dim
        block = models.hybrid_block_size(tree, m, "float16") if m.hybrid else 16
        assert c["BLOCK_SIZE"] == block, case
        tensors = recs[case]["tensors"]
        if m.sinks:
            assert any(t["role"] == "sinks" and t["dtype"] == "float16" for t in tensors.values())
    assert report.coverage()["models"] == len(report.model_kernels) > len(KERNELS)


@pytest.mark.upstream
def test_launches_that_specialise_the_same_compile_once(tree: Path, tmp_path: Path) -> None:
    """Llama 3.1 8B and Qwen3 8B launch the generic head-128 case's kernel (32 over 8 heads, no
    window): one compile; Mistral's window is a constexpr, so it compiles on its own."""
    report = audit(None, "pascal", [61], tree, TRITON_SERIES, head_sizes=(128,),
                   kernels=["unified_attention_2d/h128", "unified_attention_2d/llama3-",
                            "unified_attention_2d/qwen3-", "unified_attention_2d/mistral"],
                   state=tmp_path / "state", show_progress=False)  # fmt: skip
    by = {r.case: r for r in report.results}
    assert set(by) == {"unified_attention_2d/h128", "unified_attention_2d/llama3-fp16",
                       "unified_attention_2d/qwen3-fp16", "unified_attention_2d/mistral-fp16"}  # fmt: skip
    first = by["unified_attention_2d/h128"]
    assert first.ok and first.seconds > 0
    for twin in ("unified_attention_2d/llama3-fp16", "unified_attention_2d/qwen3-fp16"):
        r = by[twin]
        assert "compiled once as unified_attention_2d/h128" in r.message and r.seconds == 0
        assert (r.status, r.shared, r.stats, r.reach) == (first.status, first.shared, first.stats, "model")
    assert "compiled once" not in by["unified_attention_2d/mistral-fp16"].message
    assert report.summary()["twins"] == 2


@pytest.mark.upstream
def test_a_tree_that_sizes_hybrid_blocks_elsewhere_is_not_guessed(tree: Path) -> None:
    """The 0.33.0 tree sizes the hybrid attention block in the platform, with prefix caching on:
    its hybrid cases are left out, named, not compiled with the older tree's block."""
    from stackforge.verify.upstream import pypi as upstream

    newer = upstream.vllm_sdist("0.33.0")
    assert models.block_rule_known(tree) and not models.block_rule_known(newer)
    left = models.unfollowed(all_cases(), newer)
    hybrid = {m.key for m in models.models() if m.hybrid}
    assert left and {i.partition("/")[2].rsplit("-", 1)[0] for i in left} == hybrid
    assert models.unfollowed(all_cases(), tree) == {}
    granite = next(m for m in models.models() if m.key == "granite4")
    with pytest.raises(NotImplementedError, match="not followed yet"):
        models.hybrid_block_size(newer, granite, "float16")


def test_windowed_scenarios_are_longer_than_their_window() -> None:
    """A windowed layer's prefill batch runs its first sequence past the window (so the numerics
    run sees keys masked), by whole 16-token steps: the block table's stride stays a multiple of 16
    and the lengths are runtime tensors, so the compile does not change."""
    from stackforge.verify.kernels.cases_attention import DECODE, PREFILL, Attn

    for window in (128, 1024, 2047, 4096):
        a = Attn(128, sliding_window=window)
        queries, seqs = a.pick(PREFILL)
        assert queries == PREFILL[0] and seqs[1:] == PREFILL[1][1:]
        assert seqs[0] - queries[0] >= window and (seqs[0] - PREFILL[1][0]) % 16 == 0
        assert a.batch(queries, seqs)["max_blocks_per_seq"] % 16 == 0
    assert Attn(128).pick(PREFILL) == (PREFILL[0], PREFILL[1])
    assert Attn(128, lens=((3,), (9,)), sliding_window=128).pick(DECODE) == ([3], [9])
