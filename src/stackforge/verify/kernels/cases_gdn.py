"""Qwen3-Next's gated delta net (`Qwen3NextGatedDeltaNet`, vllm/model_executor/models/qwen3_next.py):
its causal conv1d, fused_gdn_gating, the FLA chunked delta rule of a prefill
(fla/ops/chunk.py:chunk_gated_delta_rule_fwd, chunk size 64), the fused recurrent kernel of a
decode, and the gated RMSNorm (fla/ops/layernorm_guard.py).

Qwen3-Next-80B-A3B at tensor parallel 1, from vLLM's Qwen3NextConfig defaults
(vllm/transformers_utils/configs/qwen3_next.py): 16 key heads and 32 value heads of 128
(linear_num_key_heads, linear_num_value_heads, linear_key_head_dim, linear_value_head_dim), conv
kernel 4. float16 (vLLM runs the bf16 checkpoint so below sm_80), and so the SSM state cache
(mamba_ssm_cache_dtype "auto"). The FLA wrappers make every tensor contiguous (`input_guard`).

Module constants of fla/ops/utils.py (no kernels there, so the loader stands it in) are what they
are on these GPUs without asking one: `check_shared_mem()` compares the device's 48 or 96 KB
with 100 KB (False: chunk_o's BKV_LIST is [32, 64]), `is_nvidia_hopper` and `is_tma_supported`
need sm_90 (False: NUM_WARPS [2, 4, 8], USE_TMA off), USE_DEFAULT_FLA_NORM is 0 (l2norm_fwd_kernel2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType

from stackforge.verify.kernels.cases_ssm import Build, Conv1d, conv1d_fwd, conv1d_update, f32, fp16, tuned
from stackforge.verify.kernels.launch import Case, Launch, Tensor


@dataclass(frozen=True)
class Gdn:
    hk: int = 16  # key heads (Hg)
    hv: int = 32  # value heads (H)
    k: int = 128
    v: int = 128
    seqs: tuple[int, ...] = (600, 424)
    batch: int = 8
    lines: int = 257
    bt: int = 64  # chunk_gated_delta_rule_fwd's chunk size
    spec: int = 2  # MTP draft tokens per request in the speculative variant

    @property
    def tokens(self) -> int:
        return sum(self.seqs)

    @property
    def nt(self) -> int:  # prepare_chunk_indices: chunks per sequence
        return sum(math.ceil(s / self.bt) for s in self.seqs)

    @property
    def conv_dim(self) -> int:  # mixed_qkv = cat(q, k, v): contiguous
        return 2 * self.hk * self.k + self.hv * self.v

    def conv(self, spec: int = 0) -> Conv1d:
        return Conv1d(self.conv_dim, self.conv_dim, self.seqs, self.batch, self.lines, 0, spec=spec)

    def varlen(self) -> dict[str, Tensor]:
        n = len(self.seqs)
        return {"cu_seqlens": Tensor("int32", (n + 1,), role="cu_seqlens"),
                "chunk_indices": Tensor("int32", (self.nt, 2), role="chunk_indices")}  # fmt: skip

    def qk(self) -> Tensor:
        return fp16(1, self.tokens, self.hk, self.k, role="k")

    def vv(self, role: str = "v") -> Tensor:
        return fp16(1, self.tokens, self.hv, self.v, role=role)


QWEN3_NEXT = Gdn()
LABEL = "Qwen3-Next-80B-A3B: 16 key / 32 value heads of 128"


def gdn_gating(g: Gdn) -> Build:
    """qwen3_next.py:fused_gdn_gating: one program per token and 8 heads, num_warps 1."""

    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        t, h = g.tokens, g.hv
        args = (f32(1, t, h, role="g"), fp16(1, t, h, role="beta"), fp16(h, role="A_log"), fp16(t, h, role="a"),
                fp16(t, h, role="b"), fp16(h, role="dt_bias"), 1, h, 1.0, 20.0, 8)  # fmt: skip
        return Launch(args, {"num_warps": 1}, (t, 1, math.ceil(h / 8)), {"tokens": t})

    return build


def l2norm(g: Gdn) -> Build:
    """l2norm.py:l2norm_fwd on q and k (use_qk_l2norm_in_kernel): kernel2, MBLOCK 32."""

    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        rows = g.tokens * g.hk
        args = (fp16(rows, g.k, role="input"), fp16(rows, g.k, role="output"), 1e-6, rows, g.k, 32)
        return Launch(args, {}, (math.ceil(rows / 32),), {"rows": rows})

    return build


def per_chunk(g: Gdn, mod: ModuleType, kernel: str, args: tuple, kw: dict, config: int, smem: int) -> Launch:
    """The FLA chunk kernels' launch: one program per (chunk, value head), NT chunks."""
    return tuned(mod, kernel, args, kw, config, lambda k: (g.nt, g.hv), {"NT": g.nt}, smem)


def local_cumsum(g: Gdn, config: int) -> Build:
    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        vl, t = g.varlen(), g.tokens
        args = (
            f32(1, t, g.hv, role="g"),
            f32(1, t, g.hv, role="g_cumsum"),
            vl["cu_seqlens"],
            vl["chunk_indices"],
        )
        kw = dict(T=t, B=1, H=g.hv, BT=g.bt, HEAD_FIRST=False, REVERSE=False)
        return per_chunk(g, mod, "chunk_local_cumsum_scalar_kernel", args, kw, config, smem)

    return build


def scaled_dot_kkt(g: Gdn, config: int) -> Build:
    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        vl, t = g.varlen(), g.tokens
        kw = dict(k=g.qk(), g=f32(1, t, g.hv, role="g_cumsum"), beta=fp16(1, t, g.hv, role="beta"),
                  A=f32(1, t, g.hv, g.bt, role="A"), **vl, T=t, H=g.hv, Hg=g.hk, K=g.k, BT=g.bt)  # fmt: skip
        return per_chunk(g, mod, "chunk_scaled_dot_kkt_fwd_kernel", (), kw, config, smem)

    return build


def solve_tril(g: Gdn, config: int) -> Build:
    """solve_tril.py:solve_tril at BT 64 (merge_16x16_to_64x64_inverse_kernel), fp32 in, k's dtype out."""

    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        vl, t = g.varlen(), g.tokens
        kw = dict(A=f32(1, t, g.hv, g.bt, role="A"), Ai=fp16(1, t, g.hv, g.bt, role="Ai"), **vl, T=t, H=g.hv,
                  BT=g.bt, USE_TMA=False, DOT_PRECISION="ieee")  # fmt: skip
        return per_chunk(g, mod, "merge_16x16_to_64x64_inverse_kernel", (), kw, config, smem)

    return build


def recompute_w_u(g: Gdn, config: int) -> Build:
    """wy_fast.py:recompute_w_u_fwd, BK = BV = 64."""

    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        vl, t = g.varlen(), g.tokens
        kw = dict(k=g.qk(), v=g.vv(), beta=fp16(1, t, g.hv, role="beta"), w=g.vv("w"), u=g.vv("u"),
                  A=fp16(1, t, g.hv, g.bt, role="Ai"), g=f32(1, t, g.hv, role="g_cumsum"), **vl, T=t, H=g.hv,
                  Hg=g.hk, K=g.k, V=g.v, BT=g.bt, BK=64, BV=64)  # fmt: skip
        return per_chunk(g, mod, "recompute_w_u_fwd_kernel", (), kw, config, smem)

    return build


def delta_h(g: Gdn, config: int) -> Build:
    """chunk_delta_h.py:chunk_gated_delta_rule_fwd_h with the prefill's initial states (fp16, the
    cache's) and an fp32 final state."""

    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        vl, t, n = g.varlen(), g.tokens, len(g.seqs)
        kw = dict(k=g.qk(), v=g.vv("u"), w=g.vv("w"), v_new=g.vv("v_new"), g=f32(1, t, g.hv, role="g_cumsum"),
                  gk=None, h=fp16(1, g.nt, g.hv, g.k, g.v, role="h"), h0=fp16(n, g.hv, g.k, g.v, role="h0"),
                  ht=f32(n, g.hv, g.k, g.v, role="ht"), cu_seqlens=vl["cu_seqlens"],
                  chunk_offsets=Tensor("int32", (n + 1,), role="chunk_offsets"), T=t, H=g.hv, Hg=g.hk, K=g.k, V=g.v,
                  BT=g.bt)  # fmt: skip
        return tuned(mod, "chunk_gated_delta_rule_fwd_kernel_h_blockdim64", (), kw, config,
                     lambda k: (math.ceil(g.v / k["BV"]), n * g.hv), {"N": n}, smem)  # fmt: skip

    return build


def chunk_o(g: Gdn, config: int) -> Build:
    """chunk_o.py:chunk_fwd_o: BT min(64, max(16, next_power_of_2(T))), scale K ** -0.5."""

    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        vl, t = g.varlen(), g.tokens
        bt = min(g.bt, max(16, 1 << (t - 1).bit_length()))
        args = (g.qk(), g.qk(), g.vv("v_new"), fp16(1, g.nt, g.hv, g.k, g.v, role="h"),
                f32(1, t, g.hv, role="g_cumsum"), g.vv("o"), vl["cu_seqlens"], vl["chunk_indices"], g.k**-0.5)  # fmt: skip
        kw = dict(T=t, H=g.hv, Hg=g.hk, K=g.k, V=g.v, BT=bt)
        return tuned(mod, "chunk_fwd_kernel_o", args, kw, config,
                     lambda k: (math.ceil(g.v / k["BV"]), g.nt, g.hv), {"NT": g.nt}, smem)  # fmt: skip

    return build


def fused_recurrent(g: Gdn, spec: int = 0) -> Build:
    """fused_recurrent.py:fused_recurrent_gated_delta_rule_fwd of a decode (one token per request) or,
    with `spec` draft tokens, of MTP verification (num_accepted_tokens, 2-D state indices): the state
    cache updated in place, BK 128, BV 32, num_warps 1, num_stages 3."""

    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        b, t = g.batch, g.batch * (spec + 1)
        state = fp16(g.lines, g.hv, g.k, g.v, role="ssm_state")
        q = fp16(1, t, g.hk, g.k, role="q")
        indices = Tensor("int32", (b, spec + 1) if spec else (b,), role="ssm_state_indices")
        kw = dict(q=q, k=q, v=fp16(1, t, g.hv, g.v, role="v"), g=f32(1, t, g.hv, role="g"),
                  beta=fp16(1, t, g.hv, role="beta"), o=fp16(1, 1, t, g.hv, g.v, role="o"), h0=state, ht=state,
                  cu_seqlens=Tensor("int32", (b + 1,), role="cu_seqlens"), ssm_state_indices=indices,
                  num_accepted_tokens=Tensor("int32", (b,), role="num_accepted_tokens") if spec else None,
                  scale=g.k**-0.5, N=b, T=t, B=1, H=g.hk, HV=g.hv, K=g.k, V=g.v, BK=g.k, BV=32,
                  stride_init_state_token=state.stride(0), stride_final_state_token=state.stride(0),
                  stride_indices_seq=indices.stride(0), stride_indices_tok=1, IS_BETA_HEADWISE=False,
                  USE_QK_L2NORM_IN_KERNEL=True, INPLACE_FINAL_STATE=True, IS_KDA=False, num_warps=1, num_stages=3)  # fmt: skip
        return tuned(mod, "fused_recurrent_gated_delta_rule_fwd_kernel", (), kw, None,
                     lambda k: (1, math.ceil(g.v / 32), b * g.hv), {"batch": b, "spec": spec})  # fmt: skip

    return build


def rms_norm_gated(g: Gdn) -> Build:
    """layernorm_guard.py:layer_norm_fwd through RMSNormGated (norm_before_gate, one group of 128):
    BLOCK_N 128, num_warps 1, ROWS_PER_BLOCK min(4, next_power_of_2(cdiv(M, 2 * SMs))): 4 from
    M = 32 * tokens on any of these GPUs (30 to 80 SMs)."""

    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        m, n = g.tokens * g.hv, g.v
        args = (fp16(m, n, role="input"), fp16(m, n, role="output"), fp16(n, role="weight"), None,
                fp16(m, n, role="gate"), None, f32(m, role="rstd"), n, n, n, m, n, 1e-6)  # fmt: skip
        kw = {
            "BLOCK_N": n,
            "ROWS_PER_BLOCK": 4,
            "NORM_BEFORE_GATE": True,
            "IS_RMS_NORM": True,
            "num_warps": 1,
        }
        return tuned(mod, "layer_norm_fwd_kernel", args, kw, None, lambda k: (math.ceil(m / 4), 1), {"M": m})

    return build


_FLA = "vllm.model_executor.layers.fla.ops."
_MAMBA = "vllm.model_executor.layers.mamba.ops."
REACH = "Qwen3-Next (gated delta net layers)"
# (kernel, module, function, launcher, step, builder, configs in the first stack's release's
# @triton.autotune list: fixed here, checked against that tree by tests/test_kernel_tuned.py)
TUNED = (
    ("fla_chunk_local_cumsum", "cumsum", "chunk_local_cumsum_scalar_kernel", "cumsum.py:chunk_local_cumsum_scalar",
     local_cumsum, 4),
    ("fla_chunk_scaled_dot_kkt", "chunk_scaled_dot_kkt", "chunk_scaled_dot_kkt_fwd_kernel",
     "chunk_scaled_dot_kkt.py:chunk_scaled_dot_kkt_fwd", scaled_dot_kkt, 27),
    ("fla_solve_tril", "solve_tril", "merge_16x16_to_64x64_inverse_kernel", "solve_tril.py:solve_tril", solve_tril, 12),
    ("fla_recompute_w_u", "wy_fast", "recompute_w_u_fwd_kernel", "wy_fast.py:recompute_w_u_fwd", recompute_w_u, 9),
    ("fla_chunk_delta_h", "chunk_delta_h", "chunk_gated_delta_rule_fwd_kernel_h_blockdim64",
     "chunk_delta_h.py:chunk_gated_delta_rule_fwd_h", delta_h, 12),
    ("fla_chunk_o", "chunk_o", "chunk_fwd_kernel_o", "chunk_o.py:chunk_fwd_o", chunk_o, 36),
)  # fmt: skip


def gdn_cases() -> list[Case]:
    g = QWEN3_NEXT
    plain = [
        ("causal_conv1d_fwd", _MAMBA + "causal_conv1d", "_causal_conv1d_fwd_kernel", "causal_conv1d.py:causal_conv1d_fn",
         "prefill", "model", conv1d_fwd(g.conv())),
        ("causal_conv1d_update", _MAMBA + "causal_conv1d", "_causal_conv1d_update_kernel",
         "causal_conv1d.py:causal_conv1d_update", "decode", "model", conv1d_update(g.conv())),
        ("causal_conv1d_update", _MAMBA + "causal_conv1d", "_causal_conv1d_update_kernel",
         "causal_conv1d.py:causal_conv1d_update", "MTP speculative decoding", "option", conv1d_update(g.conv(g.spec))),
        ("fused_gdn_gating", "vllm.model_executor.models.qwen3_next", "fused_gdn_gating_kernel",
         "qwen3_next.py:fused_gdn_gating", "every step", "model", gdn_gating(g)),
        ("fla_l2norm", _FLA + "l2norm", "l2norm_fwd_kernel2", "l2norm.py:l2norm_fwd", "prefill (q, k)", "model",
         l2norm(g)),
        ("fla_fused_recurrent", _FLA + "fused_recurrent", "fused_recurrent_gated_delta_rule_fwd_kernel",
         "fused_recurrent.py:fused_recurrent_gated_delta_rule_fwd", "decode", "model", fused_recurrent(g)),
        ("fla_fused_recurrent", _FLA + "fused_recurrent", "fused_recurrent_gated_delta_rule_fwd_kernel",
         "fused_recurrent.py:fused_recurrent_gated_delta_rule_fwd", "MTP speculative decoding", "option",
         fused_recurrent(g, g.spec)),
        ("fla_rms_norm_gated", _FLA + "layernorm_guard", "layer_norm_fwd_kernel", "layernorm_guard.py:layer_norm_fwd",
         "gated RMSNorm", "model", rms_norm_gated(g)),
    ]  # fmt: skip
    cases = []
    for kernel, module, fn, launcher, step, reach, build in plain:
        tag = "qwen3next-mtp" if "MTP" in step else "qwen3next"
        cases.append(Case(f"{kernel}/{tag}", kernel, module, fn, launcher, f"{REACH}, {step}", LABEL, build,
                          reach=reach))  # fmt: skip
    for kernel, module, fn, launcher, builder, n in TUNED:
        for i in range(n):
            cases.append(Case(f"{kernel}/qwen3next@c{i}", kernel, _FLA + module, fn, launcher,
                              f"{REACH}, prefill (chunked delta rule)", f"{LABEL}, config {i} of {n}", builder(g, i),
                              reach="model", config=i, configs=n))  # fmt: skip
    return cases
