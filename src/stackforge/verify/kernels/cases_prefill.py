"""The prefill attention launches beside TRITON_ATTN's unified kernels: its encoder attention
(triton_prefill_attention) and ROCM_ATTN's prefix prefill and paged decode, as the audit compiles
them. Arguments go by name, as in `cases_attention`: `launch.fit` keeps those the tree's kernel
takes (its encoder kernel gained a `Sinks` pointer in the middle of the positional ones, prefix
prefill `CAUSAL`, `KV_FROM_CACHE` and `INTERLEAVED_V_PACK_FACTOR`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from types import ModuleType

from stackforge.verify.kernels.cases_attention import (
    DECODE,
    PREFILL,
    Attn,
    paged_cache,
    scale_one,
    seq_tensors,
)
from stackforge.verify.kernels.launch import Launch, Tensor, call_with
from stackforge.verify.kernels.tree import launcher_literal, launcher_uses, module_constant, tree_root


def _encoder_scale(mod: ModuleType, scale: float) -> float:
    """The sm_scale context_attention_fwd passes: where the kernel uses exp2, the launcher
    folds in 1/ln 2 (vLLM's `RCP_LN2`, read from the tree's math_utils)."""
    if not launcher_uses(mod, "context_attention_fwd", "RCP_LN2"):
        return scale
    rcp_ln2 = module_constant(tree_root(mod), "vllm/utils/math_utils.py", "RCP_LN2")
    return scale * (rcp_ln2 if isinstance(rcp_ln2, float) else 1 / math.log(2))


def encoder_prefill(a: Attn) -> Callable[[ModuleType, int, int], Launch]:
    """triton_prefill_attention.context_attention_fwd: TRITON_ATTN's encoder (bidirectional) path;
    TRITON_ATTN passes its sliding window (-1, -1 without one) and no sinks (the kernel's Sinks
    pointer is then the query)."""

    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        lens = a.pick(([], [37, 64, 9]))[1]
        n_tok = sum(lens)
        q = Tensor(a.dtype, (n_tok, a.num_q_heads, a.head_size), role="query")
        k = Tensor(a.dtype, (n_tok, a.num_kv_heads, a.head_size), role="key")
        v = Tensor(a.dtype, k.shape, role="value")
        o = Tensor(a.dtype, q.shape, role="output")
        block = mod.get_block_size(getattr(mod.torch, a.dtype))  # 32 for fp32, else 64 below sm_80
        if arch < 80 and hasattr(mod, "fma_block_size"):  # our series: fit the device
            block = mod.fma_block_size(block, a.padded, smem)
        num_warps = 4 if a.head_size <= 64 else 8
        scale = 1.0 / math.sqrt(a.head_size)
        kw = dict(
            Q=q, K=k, V=v, Sinks=q, sm_scale=_encoder_scale(mod, scale),
            B_Start_Loc=Tensor("int32", (len(lens),), role="b_start_loc"),
            B_Seqlen=Tensor("int32", (len(lens),), role="b_seq_len"), Out=o, stride_qbs=q.stride(0),
            stride_qh=q.stride(1), stride_kbs=k.stride(0), stride_kh=k.stride(1), stride_vbs=v.stride(0),
            stride_vh=v.stride(1), stride_obs=o.stride(0), stride_oh=o.stride(1), kv_group_num=a.qpk,
            BLOCK_M=block, BLOCK_DMODEL=a.padded, BLOCK_N=block, IS_CAUSAL=False, SLIDING_WINDOW_Q=-1,
            SLIDING_WINDOW_K=-1, SINKS_BIAS_KEY0=False, USE_SINKS=False, num_warps=num_warps, num_stages=1,
            Lk=a.head_size,
        )  # fmt: skip
        scenario = {"seq_lens": lens, "head_size": a.head_size, "num_q_heads": a.num_q_heads,
                    "num_kv_heads": a.num_kv_heads, "BLOCK": block, "sm_scale": scale}  # fmt: skip
        return Launch((), kw, (len(lens), a.num_q_heads, math.ceil(max(lens) / block)), scenario)

    return build


def _prefix_prefill_tensors(a: Attn) -> tuple:
    """The batch and tensors both prefix-prefill kernels take: paged KV cache, new q/k/v, output."""
    b = a.batch(*a.pick(PREFILL))
    k_cache, v_cache, x = paged_cache(a, b)
    q = Tensor(a.dtype, (b["num_tokens"], a.num_q_heads, a.head_size), role="query")
    k = Tensor(a.dtype, (b["num_tokens"], a.num_kv_heads, a.head_size), role="key")
    v = Tensor(a.dtype, k.shape, role="value")
    o = Tensor(a.dtype, q.shape, role="output")
    b_loc = Tensor("int32", (b["num_seqs"], b["max_blocks_per_seq"]), role="block_table")
    return b, k_cache, v_cache, x, q, k, v, o, b_loc


def _fwd_tiles(mod: ModuleType, a: Attn, arch: int, smem: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_SIZE) of `_fwd_kernel`: our series' helper with the facts its
    parameters name (one tree's takes whether the KV block is a power of two), else the literals
    the launcher sets."""
    if hasattr(mod, "fwd_kernel_block_sizes"):
        facts = dict(head_size_padded=a.padded, pow2_block=True, max_shared_mem=smem, fma_dot=arch < 80)
        return call_with(mod.fwd_kernel_block_sizes, **facts)
    found = [
        launcher_literal(mod, "context_attention_fwd", n) for n in ("BLOCK_M", "BLOCK_N", "TRITON_BLOCK_SIZE")
    ]
    return tuple(f if isinstance(f, int) else d for f, d in zip(found, (128, 64, 32), strict=True))


def _fwd_options(mod: ModuleType, arch: int) -> dict[str, int]:
    """num_warps and num_unroll_cache of `_fwd_kernel`: our series' helper (the FMA path below sm_80
    takes 8 warps and no unrolled context loop, against ptxas' spills), else the launcher's literals."""
    if hasattr(mod, "fwd_kernel_launch_options"):
        return call_with(mod.fwd_kernel_launch_options, fma_dot=arch < 80)
    out = {}
    for name in ("num_warps", "num_unroll_cache"):  # the alibi launch's NUM_WARPS is no literal
        found = launcher_literal(mod, "context_attention_fwd", name)
        out[name] = found if isinstance(found, int) else 4
    return out


def prefix_prefill(a: Attn) -> Callable[[ModuleType, int, int], Launch]:
    """prefix_prefill.context_attention_fwd (_fwd_kernel): ROCM_ATTN's prefill with cached prefix."""

    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        b, k_cache, v_cache, x, q, k, v, o, b_loc = _prefix_prefill_tensors(a)
        block_m, block_n, tile = _fwd_tiles(mod, a, arch, smem)
        args = (
            q, k, v, k_cache, v_cache, None, b_loc, b["sm_scale"], scale_one(), scale_one(), 1.0,
            Tensor("int32", (b["num_seqs"] + 1,), role="cu_seqlens_q"), Tensor("int32", (b["num_seqs"],), role="seq_lens"),
            x, o, b_loc.stride(0), b_loc.stride(1), q.stride(0), q.stride(1), q.stride(2), k.stride(0),
            k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
        )  # fmt: skip
        kw = dict(
            stride_k_cache_bs=k_cache.stride(0), stride_k_cache_h=k_cache.stride(1),
            stride_k_cache_d=k_cache.stride(2), stride_k_cache_bl=k_cache.stride(3),
            stride_k_cache_x=k_cache.stride(4), stride_v_cache_bs=v_cache.stride(0),
            stride_v_cache_h=v_cache.stride(1), stride_v_cache_d=v_cache.stride(2),
            stride_v_cache_bl=v_cache.stride(3), BLOCK_SIZE=tile, PHYSICAL_BLOCK_SIZE=a.block_size,
            num_queries_per_kv=a.qpk, IN_PRECISION=None, BLOCK_DMODEL=a.head_size,
            BLOCK_DMODEL_PADDED=a.padded, SLIDING_WINDOW=0, SKIP_DECODE=False, USE_FP8=False,
            BLOCK_M=block_m, BLOCK_N=block_n, num_unroll_request=1, num_stages=1, USE_SINKS=False,
            INTERLEAVED_V_PACK_FACTOR=0, CAUSAL=True, KV_FROM_CACHE=False, **_fwd_options(mod, arch),
        )  # fmt: skip
        grid = (b["num_seqs"], a.num_q_heads, math.ceil(max(b["query_lens"]) / block_m))
        return Launch(
            args, kw, grid, b | {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_SIZE": tile, "x": x}
        )

    return build


def prefix_prefill_alibi(a: Attn) -> Callable[[ModuleType, int, int], Launch]:
    """prefix_prefill.context_attention_fwd with ALiBi slopes (_fwd_kernel_alibi): ROCM_ATTN, ALiBi models."""

    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        b, k_cache, v_cache, x, q, k, v, o, b_loc = _prefix_prefill_tensors(a)
        block = mod.BASE_BLOCK // 2 if a.dtype == "float32" else mod.BASE_BLOCK
        if arch < 80 and hasattr(mod, "fit_tiles"):  # our series: fit the device
            block = min(mod.fit_tiles(block, block, a.padded, smem))
        args = (
            q, k, v, k_cache, v_cache, b_loc, b["sm_scale"], scale_one(), scale_one(),
            Tensor("int32", (b["num_seqs"] + 1,), role="cu_seqlens_q"), Tensor("int32", (b["num_seqs"],), role="seq_lens"),
            Tensor("float32", (a.num_q_heads,), role="alibi_slopes"), v_cache.shape[3], k_cache.shape[4], o,
            b_loc.stride(0), b_loc.stride(1), q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1),
            k.stride(2), v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
            *k_cache.stride(), *v_cache.stride(),
        )  # fmt: skip
        kw = dict(
            num_queries_per_kv=a.qpk, IN_PRECISION=None, BLOCK_M=block, BLOCK_DMODEL=a.head_size,
            BLOCK_DMODEL_PADDED=a.padded, BLOCK_N=block, SKIP_DECODE=False, INTERLEAVED_V_PACK_FACTOR=0,
            num_warps=mod.NUM_WARPS, num_stages=1,
        )  # fmt: skip
        grid = (b["num_seqs"], a.num_q_heads, math.ceil(max(b["query_lens"]) / block))
        return Launch(args, kw, grid, b | {"BLOCK": block, "x": x})

    return build


def paged_attention_2d(a: Attn) -> Callable[[ModuleType, int, int], Launch]:
    """chunked_prefill_paged_decode: ROCM_ATTN's decode kernel (the prefill part is prefix_prefill)."""

    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        b = a.batch(*a.pick(DECODE))
        k_cache, v_cache, x = paged_cache(a, b)
        t = seq_tensors(b)
        q = Tensor(a.dtype, (b["num_tokens"], a.num_q_heads, a.head_size), role="query")
        out = Tensor(a.dtype, q.shape, role="output")
        kw = dict(
            output_ptr=out, query_ptr=q, key_cache_ptr=k_cache, value_cache_ptr=v_cache, sink_ptr=None,
            block_tables_ptr=t["block_table"], seq_lens_ptr=t["seq_lens"], alibi_slopes_ptr=None,
            scale=b["sm_scale"], k_scale=scale_one(), v_scale=scale_one(), out_scale_inv=1.0,
            num_query_heads=a.num_q_heads, num_queries_per_kv=a.qpk,
            num_queries_per_kv_padded=max(1 << (a.qpk - 1).bit_length(), 16),
            block_table_stride=t["block_table"].stride(0), query_stride_0=q.stride(0),
            query_stride_1=q.stride(1), output_stride_0=out.stride(0), output_stride_1=out.stride(1),
            BLOCK_SIZE=min(a.block_size, 128), PHYSICAL_BLOCK_SIZE=a.block_size, HEAD_SIZE=a.head_size,
            HEAD_SIZE_PADDED=a.padded, USE_ALIBI_SLOPES=False, SLIDING_WINDOW=0, x=x,
            stride_k_cache_0=k_cache.stride(0), stride_k_cache_1=k_cache.stride(1),
            stride_k_cache_2=k_cache.stride(2), stride_k_cache_3=k_cache.stride(3),
            stride_k_cache_4=k_cache.stride(4), stride_v_cache_0=v_cache.stride(0),
            stride_v_cache_1=v_cache.stride(1), stride_v_cache_2=v_cache.stride(2),
            stride_v_cache_3=v_cache.stride(3), filter_by_query_len=True,
            query_start_len_ptr=t["cu_seqlens_q"], USE_SINKS=False, USE_FP8=False, INTERLEAVED_V_PACK_FACTOR=0,
        )  # fmt: skip
        return Launch(kwargs=kw, grid=(b["num_seqs"], a.num_kv_heads), scenario=b | {"x": x})

    return build
