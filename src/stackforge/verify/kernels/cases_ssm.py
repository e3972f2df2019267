"""Mamba2 launches (Granite-4.0-H, Nemotron-H, Mamba2): causal conv1d, the SSD chunk kernels of a
prefill, the selective state update of a decode, the gated RMSNorm (`MambaMixer2.conv_ssm_forward`
and `Mixer2RMSNormGated.forward_cuda`, vllm/model_executor/layers/mamba/mamba_mixer2.py).

Shapes at tensor parallel 1, dtype float16: vLLM runs these bf16 checkpoints in float16 below
sm_80 (none of these model types is in `_FLOAT16_NOT_SUPPORTED_MODELS`), and the conv and SSM
state caches follow the model dtype (`MambaStateDtypeCalculator`, mamba_cache_dtype "auto";
NemotronH's `verify_and_update_config` makes "auto" float16 too). Prefix caching is off for
hybrid models by default (`ModelConfig.is_prefix_caching_supported`), so IS_APC_ENABLED is off and
mamba_block_size is max_model_len. Strides follow the launcher: x, B, C and dt are views of the
in_proj output (row width `proj`), conv_state is the cache's (lines, width - 1, conv_dim) block
transposed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from stackforge.verify.kernels.launch import Case, Launch, Pruned, Tensor
from stackforge.verify.kernels.tuning import launch_kwargs, pruned

Build = Callable[[ModuleType, int, int], Launch]
PAD_SLOT_ID = -1  # vllm/v1/attention/backends/utils.py


@dataclass(frozen=True)
class Mamba2:
    """One Mamba2 mixer. `tokens` of a prefill split as `seqs`, `batch` decode requests."""

    tag: str
    name: str
    nheads: int
    head_dim: int
    dstate: int
    ngroups: int
    chunk: int
    conv_kernel: int = 4
    seqs: tuple[int, ...] = (600, 424)  # two prompts: chunks do not line up with sequences
    batch: int = 8
    cache_lines: int = 257  # mamba cache blocks: max_num_seqs 256 + the padding block
    max_model_len: int = 4096  # mamba_block_size without prefix caching

    @property
    def intermediate(self) -> int:
        return self.nheads * self.head_dim

    @property
    def conv_dim(self) -> int:
        return self.intermediate + 2 * self.ngroups * self.dstate

    @property
    def proj(self) -> int:  # in_proj's output: gate, xBC, dt
        return self.intermediate + self.conv_dim + self.nheads

    @property
    def tokens(self) -> int:
        return sum(self.seqs)

    @property
    def nchunks(self) -> int:  # mamba2_attn's chunks never straddle two sequences
        return sum(math.ceil(s / self.chunk) for s in self.seqs)

    def conv(self) -> Conv1d:
        return Conv1d(self.conv_dim, self.proj, self.seqs, self.batch, self.cache_lines, self.max_model_len,
                      self.conv_kernel)  # fmt: skip

    def label(self) -> str:
        return (f"{self.name}: heads {self.nheads}x{self.head_dim}, state {self.dstate}, groups {self.ngroups}, "
                f"chunk {self.chunk}")  # fmt: skip


# Granite-4.0-H-Tiny: transformers' GraniteMoeHybridConfig defaults (mamba_n_heads 48, d_head 64,
# d_state 128, n_groups 1, d_conv 4, chunk 256; hidden 1536 = 48 * 64 / expand 2).
GRANITE4 = Mamba2("granite4", "Granite-4.0-H-Tiny", nheads=48, head_dim=64, dstate=128, ngroups=1, chunk=256)
# Nemotron-H 8B: vLLM's own NemotronHConfig defaults (vllm/transformers_utils/configs/nemotron_h.py:
# mamba_num_heads 128, mamba_head_dim 64, ssm_state_size 128, mamba_n_groups 8, mamba_chunk_size 256,
# which get_mamba_chunk_size reads before chunk_size).
NEMOTRON_H = Mamba2("nemotronh", "Nemotron-H-8B", nheads=128, head_dim=64, dstate=128, ngroups=8, chunk=256)
MAMBA2_REACH = "Mamba2 layers (Granite-4.0-H, Nemotron-H, Mamba2, Bamba, Falcon-H1, Zamba2)"


def tuned(mod: ModuleType, function: str, args: tuple, kwargs: dict[str, Any], config: int | None,
          grid: Callable[[dict[str, Any]], tuple[int, ...]], scenario: dict[str, Any], smem: int = 0) -> Launch:  # fmt: skip
    """A launch through the kernel's autotune/heuristics layers: `grid` gets the final meta-parameters.
    With `smem` (the arch's limit), a config the tree's own pruning drops raises `Pruned`."""
    obj = getattr(mod, function)
    if config is not None and smem and pruned(obj, kwargs, config, smem):
        raise Pruned(f"config {config} pruned by the tree's prune_configs_by at {smem} bytes")
    kw = launch_kwargs(obj, args, kwargs, config)
    return Launch(args, kw, grid(kw), scenario | ({"config": config} if config is not None else {}))


def fp16(*shape: int, strides: tuple[int, ...] | None = None, role: str = "data") -> Tensor:
    return Tensor("float16", shape, strides, role)


def f32(*shape: int, role: str = "data") -> Tensor:
    return Tensor("float32", shape, role=role)


@dataclass(frozen=True)
class Conv1d:
    """A causal conv1d over `dim` channels whose input rows are `row` elements apart (a view of the
    layer's input projection), with its conv-state cache; `spec` draft tokens per decode request."""

    dim: int
    row: int
    seqs: tuple[int, ...]
    batch: int
    lines: int
    block_align: int  # mamba_block_size, or 0 where the caller passes none (Qwen3-Next)
    width: int = 4
    spec: int = 0

    def state(self) -> Tensor:
        w = (
            self.width - 1 + self.spec
        )  # cache block (lines, state_len, dim), transposed to (lines, dim, state_len)
        return fp16(self.lines, self.dim, w, strides=(w * self.dim, 1, self.dim), role="conv_state")


def conv1d_fwd(c: Conv1d) -> Build:
    """causal_conv1d.py:causal_conv1d_fn with the attention metadata's programs (BLOCK_M 8, BLOCK_N 256,
    num_stages 2). x is (dim, tokens) with strides (1, row): the input projection transposed."""

    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        t, n, dim = sum(c.seqs), len(c.seqs), c.dim
        x = fp16(dim, t, strides=(1, c.row), role="input")
        out = fp16(dim, t, strides=(1, dim), role="output")  # empty_like(x): dense, x's dim order
        state = c.state()
        programs = sum(math.ceil(s / 8) for s in c.seqs)
        args = (
            x, fp16(dim, c.width, role="conv_weight"), fp16(dim, role="conv_bias"), state,
            Tensor("int32", (n,), role="cache_indices"), Tensor("bool", (n,), role="has_initial_state"),
            Tensor("int32", (n + 1,), role="query_start_loc"), Tensor("int32", (programs,), role="batch_ptr"),
            Tensor("int32", (programs,), role="token_chunk_offset"), None, None, None, None, out, dim, t, c.lines,
            1, c.row, c.width, 1, *state.stride(), 1, *out.stride(), c.block_align // 8, PAD_SLOT_ID,
        )  # fmt: skip
        kw = dict(HAS_BIAS=True, KERNEL_WIDTH=c.width, SILU_ACTIVATION=True, IS_APC_ENABLED=False,
                  USE_PAD_SLOT=True, NP2_STATELEN=1 << (c.width - 2).bit_length(), BLOCK_M=8, BLOCK_N=256,
                  num_stages=2)  # fmt: skip
        return Launch(args, kw, (programs, math.ceil(dim / 256)), {"dim": dim, "seqs": list(c.seqs)})

    return build


def conv1d_update(c: Conv1d) -> Build:
    """causal_conv1d.py:causal_conv1d_update, BLOCK_N 256, updating x in place (out is x). A decode
    step: x (batch, dim) unsqueezed to seqlen 1. With `spec` draft tokens (Qwen3-Next's MTP): varlen x
    (tokens, dim), seqlen spec + 1, num_accepted_tokens, state_len width - 1 + spec."""

    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        b, dim, k = c.batch, c.dim, c.spec
        state = c.state()
        if k:
            x = fp16(b * (k + 1), dim, role="input_output")  # index_select of the spec tokens
            strides, seqlen, state_len = (0, 1, dim), k + 1, c.width - 1 + k
            extra = (
                Tensor("int32", (b,), role="num_accepted_tokens"),
                Tensor("int32", (b + 1,), role="query_start_loc"),
            )
            indices = Tensor("int32", (b,), (k + 1,), role="conv_state_indices")  # spec_state_indices[:, 0]
        else:
            x = fp16(b, dim, 1, strides=(c.row, 1, 1), role="input_output")
            strides, seqlen, state_len, extra = x.stride(), 1, c.width - 1, (None, None)
            indices = Tensor("int32", (b,), role="conv_state_indices")
        args = (
            x, fp16(dim, c.width, role="conv_weight"), fp16(dim, role="conv_bias"), state, indices, *extra,
            None, None, x, b, dim, seqlen, state_len, c.lines, *strides, c.width, 1, *state.stride(),
            indices.stride(0), *strides, PAD_SLOT_ID,
        )  # fmt: skip
        kw = dict(HAS_BIAS=True, KERNEL_WIDTH=c.width, SILU_ACTIVATION=True, IS_VARLEN=bool(k), IS_APC_ENABLED=False,
                  IS_SPEC_DECODING=bool(k), NP2_STATELEN=1 << (state_len - 1).bit_length(), USE_PAD_SLOT=True,
                  BLOCK_N=256)  # fmt: skip
        return Launch(args, kw, (b, math.ceil(dim / 256)), {"dim": dim, "batch": b, "spec": k})

    return build


def selective_state_update(m: Mamba2) -> Build:
    """mamba_ssm.py:selective_state_update as MambaMixer2 calls it: A, dt and dt_bias broadcast over
    head_dim (stride 0, so TIE_HDIM), D per head, no z; BLOCK_SIZE_M and num_warps by dstate."""

    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        b, h, p, n, g = m.batch, m.nheads, m.head_dim, m.dstate, m.ngroups
        state = fp16(m.cache_lines, h, p, n, role="ssm_state")
        x = fp16(b, h, p, strides=(m.proj, p, 1), role="x")
        dt = fp16(b, h, p, strides=(m.proj, 1, 0), role="dt")
        a = f32(h, p, n, role="A")
        a.strides = (1, 0, 0)
        bc = fp16(b, g, n, strides=(m.proj, n, 1), role="B")
        out = fp16(b, h, p, role="output")
        idx = Tensor("int32", (b, 1), (1, 1), role="state_indices")
        block_m, warps = (32, 4) if n <= 16 else (16, 4) if n <= 32 else (8, 4) if n <= 64 else (4, 4) if n <= 128 else (4, 8)  # fmt: skip
        args = (
            state, x, dt, fp16(h, p, strides=(1, 0), role="dt_bias"), a, bc, bc,
            fp16(h, p, strides=(1, 0), role="D"), None, out, idx, idx, PAD_SLOT_ID, None, None,
            b, h, p, n, h // g, *state.stride(), *x.stride(), *dt.stride(), 1, 0, *a.stride(),
            *bc.stride(), *bc.stride(), 1, 0, 0, 0, 0, *out.stride(), 1, 1, 1, 1, True, True, block_m,
        )  # fmt: skip
        return tuned(mod, "_selective_scan_update_kernel", args, {"num_warps": warps}, None,
                     lambda kw: (math.ceil(p / block_m), b, h), {"batch": b, "block_m": block_m})  # fmt: skip

    return build


def rms_norm_gated(m: Mamba2) -> Build:
    """layernorm_gated.py:rms_norm_gated from Mixer2RMSNormGated.forward_cuda, which takes the Triton
    path only for one group (n_groups 1 at this TP): BLOCK_N next_power_of_2(N), warps BLOCK_N/256."""

    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        t, n = m.tokens, m.intermediate
        block = 1 << (n - 1).bit_length()
        x = fp16(t, n, role="input")
        gate = fp16(t, n, strides=(m.proj, 1), role="gate")
        args = (x, fp16(t, n, role="output"), fp16(n, role="weight"), None, gate, None,
                f32(t, role="rstd"), n, n, m.proj, t, n, 1e-5)  # fmt: skip
        kw = {"BLOCK_N": block, "NORM_BEFORE_GATE": False, "IS_RMS_NORM": True,
              "num_warps": min(max(block // 256, 1), 8)}  # fmt: skip
        return tuned(mod, "_layer_norm_fwd_1pass_kernel", args, kw, None, lambda k: (t, 1), {"N": n})

    return build


# --- the SSD chunk kernels of a prefill (ssd_combined._mamba_chunk_scan_combined_fwd) -----------------


def _ssd(m: Mamba2) -> dict[str, Tensor]:
    t, h, p, n, g, c, nc = m.tokens, m.nheads, m.head_dim, m.dstate, m.ngroups, m.chunk, m.nchunks
    return {
        "x": fp16(t, h, p, strides=(m.conv_dim, p, 1), role="x"),  # conv output, (tokens, conv_dim)
        "B": fp16(t, g, n, strides=(m.conv_dim, n, 1), role="B"),
        "dt_in": fp16(t, h, strides=(m.proj, 1), role="dt"),
        "dt": f32(h, nc, c, role="dt_out"),
        "dA": f32(h, nc, c, role="dA_cumsum"),
        "cu": Tensor("int32", (nc + 1,), role="cu_chunk_seqlens"),
        "seq_idx": Tensor("int32", (nc,), role="seq_idx"),
        "states": f32(nc, h, p, n, role="states"),
        "passed": fp16(nc, h, p * n, role="states_out"),  # out_dtype: the ssm state cache's
        "cb": f32(nc, g, c, c, role="CB"),
        "out": fp16(t, h, p, role="output"),
    }


def chunk_cumsum(m: Mamba2, config: int) -> Build:
    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        s, h = _ssd(m), m.nheads
        kw = dict(dt_ptr=s["dt_in"], A_ptr=f32(h, role="A"), dt_bias_ptr=fp16(h, role="dt_bias"), dt_out_ptr=s["dt"],
                  dA_cumsum_ptr=s["dA"], cu_chunk_seqlens_ptr=s["cu"], seqlen=m.tokens, nheads=h, chunk_size=m.chunk,
                  dt_min=0.0, dt_max=float("inf"), stride_dt_seqlen=m.proj, stride_dt_head=1, stride_A_head=1,
                  stride_dt_bias_head=1, stride_dt_out_head=s["dt"].stride(0), stride_dt_out_chunk=m.chunk,
                  stride_dt_out_csize=1, stride_dA_cs_head=s["dA"].stride(0), stride_dA_cs_chunk=m.chunk,
                  stride_dA_cs_csize=1, DT_SOFTPLUS=True, HAS_DT_BIAS=True, BLOCK_SIZE_CHUNK=m.chunk)  # fmt: skip
        return tuned(mod, "_chunk_cumsum_fwd_kernel", (), kw, config,
                     lambda k: (m.nchunks, math.ceil(h / k["BLOCK_SIZE_H"])), {"nchunks": m.nchunks}, smem)  # fmt: skip

    return build


def chunk_state(m: Mamba2, config: int) -> Build:
    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        s, p, n = _ssd(m), m.head_dim, m.dstate
        x, b, st, dt = s["x"], s["B"], s["states"], s["dt"]
        kw = dict(x_ptr=x, b_ptr=b, states_ptr=st, dt_ptr=dt, dA_cumsum_ptr=s["dA"], cu_chunk_seqlens_ptr=s["cu"],
                  hdim=p, dstate=n, chunk_size=m.chunk, seqlen=m.tokens, nheads_ngroups_ratio=m.nheads // m.ngroups,
                  stride_x_seqlen=x.stride(0), stride_x_head=x.stride(1), stride_x_hdim=1, stride_b_seqlen=b.stride(0),
                  stride_b_head=b.stride(1), stride_b_dstate=1, stride_states_chunk=st.stride(0),
                  stride_states_head=st.stride(1), stride_states_hdim=st.stride(2), stride_states_dstate=1,
                  stride_dt_head=dt.stride(0), stride_dt_chunk=dt.stride(1), stride_dt_csize=1,
                  stride_dA_cs_head=dt.stride(0), stride_dA_cs_chunk=dt.stride(1), stride_dA_cs_csize=1)  # fmt: skip
        return tuned(mod, "_chunk_state_fwd_kernel", (), kw, config,
                     lambda k: (math.ceil(p / k["BLOCK_SIZE_M"]) * math.ceil(n / k["BLOCK_SIZE_N"]), m.nchunks, m.nheads),
                     {"nchunks": m.nchunks}, smem)  # fmt: skip

    return build


def state_passing(m: Mamba2, config: int) -> Build:
    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        s, dim = _ssd(m), m.head_dim * m.dstate
        st, out, da = f32(m.nchunks, m.nheads, dim, role="states"), s["passed"], s["dA"]
        kw = dict(states_ptr=st, out_ptr=out, dA_cs_ptr=da, initstates_ptr=None, seq_idx_ptr=s["seq_idx"],
                  cu_chunk_seqlens_ptr=s["cu"], dim=dim, nchunks=m.nchunks, seqlen=m.nchunks, chunk_size=m.chunk,
                  stride_states_chunk=st.stride(0), stride_states_head=st.stride(1), stride_states_dim=1,
                  stride_out_chunk=out.stride(0), stride_out_head=out.stride(1), stride_out_dim=1,
                  stride_dA_cs_head=da.stride(0), stride_dA_cs_chunk=da.stride(1), stride_dA_cs_csize=1,
                  stride_initstates_batch=0, stride_initstates_head=0, stride_initstates_dim=0,
                  stride_seq_idx_chunk=1, HAS_INITSTATES=False)  # fmt: skip
        return tuned(mod, "_state_passing_fwd_kernel", (), kw, config,
                     lambda k: (math.ceil(dim / k["BLOCK_SIZE"]), m.nheads), {"dim": dim}, smem)  # fmt: skip

    return build


def bmm_chunk(m: Mamba2, config: int) -> Build:
    """C^T B per chunk and group: ssd_bmm._bmm_chunk_fwd(C, B, ..., output_dtype=float32), not causal."""

    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        s, c = _ssd(m), m.chunk
        b, cb = s["B"], s["cb"]
        kw = dict(a_ptr=b, b_ptr=b, out_ptr=cb, cu_chunk_seqlens_ptr=s["cu"], seqlen=m.tokens, chunk_size=c,
                  K=m.dstate, ngroups=m.ngroups, stride_a_seqlen=b.stride(0), stride_a_head=b.stride(1), stride_ak=1,
                  stride_b_seqlen=b.stride(0), stride_b_head=b.stride(1), stride_bk=1,
                  stride_out_chunk=cb.stride(0), stride_out_head=cb.stride(1), stride_outm=c, stride_outn=1,
                  IS_CAUSAL=False, dot_dtype=mod.tl.float16)  # fmt: skip
        return tuned(mod, "_bmm_chunk_fwd_kernel", (), kw, config,
                     lambda k: (math.ceil(c / k["BLOCK_SIZE_M"]) * math.ceil(c / k["BLOCK_SIZE_N"]),
                                m.nchunks * m.ngroups), {"nchunks": m.nchunks}, smem)  # fmt: skip

    return build


def chunk_scan(m: Mamba2, config: int) -> Build:
    """ssd_chunk_scan._chunk_scan_fwd: D per head (D_HAS_HDIM off), no z, no initial states."""

    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        s, c, p, n = _ssd(m), m.chunk, m.head_dim, m.dstate
        cb, x, out, dt, da, b = s["cb"], s["x"], s["out"], s["dt"], s["dA"], s["B"]
        st = fp16(m.nchunks, m.nheads, p, n, role="states")  # state passing's output, (p n) unflattened
        kw = dict(cb_ptr=cb, x_ptr=x, z_ptr=None, out_ptr=out, dt_ptr=dt, dA_cumsum_ptr=da, seq_idx_ptr=s["seq_idx"],
                  C_ptr=b, states_ptr=st, D_ptr=fp16(m.nheads, role="D"), initstates_ptr=None,
                  cu_chunk_seqlens_ptr=s["cu"], chunk_size=c, hdim=p, dstate=n, seqlen=m.tokens,
                  nheads_ngroups_ratio=m.nheads // m.ngroups, stride_cb_chunk=cb.stride(0), stride_cb_head=cb.stride(1),
                  stride_cb_csize_m=c, stride_cb_csize_k=1, stride_x_seqlen=x.stride(0), stride_x_head=x.stride(1),
                  stride_x_hdim=1, stride_z_seqlen=0, stride_z_head=0, stride_z_hdim=0, stride_out_seqlen=out.stride(0),
                  stride_out_head=out.stride(1), stride_out_hdim=1, stride_dt_chunk=dt.stride(1),
                  stride_dt_head=dt.stride(0), stride_dt_csize=1, stride_dA_cs_chunk=da.stride(1),
                  stride_dA_cs_head=da.stride(0), stride_dA_cs_csize=1, stride_seq_idx_chunk=1,
                  stride_C_seqlen=b.stride(0), stride_C_head=b.stride(1), stride_C_dstate=1,
                  stride_states_chunk=st.stride(0), stride_states_head=st.stride(1), stride_states_hdim=st.stride(2),
                  stride_states_dstate=1, stride_init_states_batch=0, stride_init_states_head=0,
                  stride_init_states_hdim=0, stride_init_states_dstate=0, stride_D_head=1, IS_CAUSAL=True, HAS_D=True,
                  D_HAS_HDIM=False, HAS_Z=False, BLOCK_SIZE_DSTATE=max(1 << (n - 1).bit_length(), 16),
                  IS_TRITON_22=True, HAS_INITSTATES=False)  # fmt: skip
        return tuned(mod, "_chunk_scan_fwd_kernel", (), kw, config,
                     lambda k: (math.ceil(c / k["BLOCK_SIZE_M"]) * math.ceil(p / k["BLOCK_SIZE_N"]), m.nchunks,
                                m.nheads), {"nchunks": m.nchunks}, smem)  # fmt: skip

    return build


_OPS = "vllm.model_executor.layers.mamba.ops."
# (kernel, module, function, launcher, builder, configs in the first stack's release's
# @triton.autotune list: fixed here, checked against that tree by tests/test_kernel_tuned.py)
SSD = (
    ("ssd_chunk_cumsum", "ssd_chunk_state", "_chunk_cumsum_fwd_kernel", "ssd_chunk_state.py:_chunk_cumsum_fwd",
     chunk_cumsum, 6),
    ("ssd_chunk_state", "ssd_chunk_state", "_chunk_state_fwd_kernel", "ssd_chunk_state.py:_chunk_state_fwd",
     chunk_state, 9),
    ("ssd_state_passing", "ssd_state_passing", "_state_passing_fwd_kernel",
     "ssd_state_passing.py:_state_passing_fwd", state_passing, 6),
    ("ssd_bmm_chunk", "ssd_bmm", "_bmm_chunk_fwd_kernel", "ssd_bmm.py:_bmm_chunk_fwd", bmm_chunk, 9),
    ("ssd_chunk_scan", "ssd_chunk_scan", "_chunk_scan_fwd_kernel", "ssd_chunk_scan.py:_chunk_scan_fwd",
     chunk_scan, 11),
)  # fmt: skip


def mamba2_cases() -> list[Case]:
    cases = []
    for m in (GRANITE4, NEMOTRON_H):
        plain = [
            ("causal_conv1d_fwd", "causal_conv1d", "_causal_conv1d_fwd_kernel", "causal_conv1d.py:causal_conv1d_fn",
             "prefill", conv1d_fwd(m.conv())),
            ("causal_conv1d_update", "causal_conv1d", "_causal_conv1d_update_kernel",
             "causal_conv1d.py:causal_conv1d_update", "decode", conv1d_update(m.conv())),
            ("selective_state_update", "mamba_ssm", "_selective_scan_update_kernel",
             "mamba_ssm.py:selective_state_update", "decode", selective_state_update(m)),
        ]  # fmt: skip
        if m.ngroups == 1:  # Mixer2RMSNormGated takes forward_native (PyTorch) for several groups
            plain.append(("mamba_rms_norm_gated", "layernorm_gated", "_layer_norm_fwd_1pass_kernel",
                          "layernorm_gated.py:rms_norm_gated", "gated RMSNorm", rms_norm_gated(m)))  # fmt: skip
        for kernel, module, fn, launcher, step, build in plain:
            cases.append(Case(f"{kernel}/{m.tag}", kernel, _OPS + module, fn, launcher, f"{MAMBA2_REACH}, {step}",
                              m.label(), build, reach="model"))  # fmt: skip
        if m is not GRANITE4:
            continue  # the SSD tiles depend on chunk, head_dim and dstate, the same for both families
        for kernel, module, fn, launcher, builder, n in SSD:
            for i in range(n):
                cases.append(Case(f"{kernel}/{m.tag}@c{i}", kernel, _OPS + module, fn, launcher,
                                  f"{MAMBA2_REACH}, prefill (SSD)", f"{m.label()}, config {i} of {n}",
                                  builder(m, i), reach="model", config=i, configs=n))  # fmt: skip
    return cases
