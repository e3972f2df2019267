"""vLLM's attention launches (TRITON_ATTN, ROCM_ATTN, the KV-cache write) as the audit compiles them."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from stackforge.verify.kernels.launch import DType, Launch, Tensor

HEAD_SIZES = (64, 80, 96, 128, 256)


# --- attention scenarios ------------------------------------------------------------------------


@dataclass(frozen=True)
class Attn:
    """Llama-style GQA (32 query heads over 8 KV heads) with vLLM's default KV block size 16."""

    head_size: int
    num_q_heads: int = 32
    num_kv_heads: int = 8
    block_size: int = 16
    dtype: str = "float16"
    # (query_lens, seq_lens) in place of the builder's default batch (PREFILL, DECODE, the encoder's
    # lengths): the numerics suite runs the same launches at other batches
    lens: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    # launch branches of real models (TRITON_ATTN passes them as constexprs): Gemma 2's logit
    # softcap, sliding-window layers, gpt-oss's attention sinks
    softcap: float = 0.0
    sliding_window: int = 0
    sinks: bool = False

    def branches(self) -> dict[str, Any]:
        """The unified kernels' keyword arguments for these branches, as triton_attn.py passes them
        (SLIDING_WINDOW = 1 + window_size[0] = the model's window; sinks are float32)."""
        sink = Tensor("float32", (self.num_q_heads,), role="sinks") if self.sinks else None
        return dict(softcap=self.softcap, USE_SOFTCAP=self.softcap > 0, SLIDING_WINDOW=self.sliding_window,
                    sink_ptr=sink, USE_SINKS=self.sinks)  # fmt: skip

    def pick(self, default: tuple[list[int], list[int]]) -> tuple[list[int], list[int]]:
        return (list(self.lens[0]), list(self.lens[1])) if self.lens else default

    @property
    def padded(self) -> int:
        return 1 << (self.head_size - 1).bit_length()

    @property
    def qpk(self) -> int:
        return self.num_q_heads // self.num_kv_heads

    def batch(self, query_lens: list[int], seq_lens: list[int]) -> dict[str, Any]:
        blocks_per_seq = max(math.ceil(s / self.block_size) for s in seq_lens)
        max_blocks = 16 * math.ceil(blocks_per_seq / 16)  # vLLM's block tables are padded
        return {
            "num_seqs": len(seq_lens),
            "query_lens": query_lens,
            "seq_lens": seq_lens,
            "num_tokens": sum(query_lens),
            "max_blocks_per_seq": max_blocks,
            "num_blocks": len(seq_lens) * blocks_per_seq + 1,
            "block_size": self.block_size,
            "head_size": self.head_size,
            "num_q_heads": self.num_q_heads,
            "num_kv_heads": self.num_kv_heads,
            "sm_scale": 1.0 / math.sqrt(self.head_size),
        }


PREFILL = ([17, 5], [40, 5])  # (query_lens, seq_lens): one chunk with 23 cached tokens, one new prompt
DECODE = ([1, 1, 1, 1], [100, 37, 250, 16])


def _seq_tensors(b: dict[str, Any]) -> dict[str, Tensor]:
    n = b["num_seqs"]
    return {
        "cu_seqlens_q": Tensor("int32", (n + 1,), role="cu_seqlens_q"),
        "seq_lens": Tensor("int32", (n,), role="seq_lens"),
        "block_table": Tensor("int32", (n, b["max_blocks_per_seq"]), role="block_table"),
    }


def _flash_cache(a: Attn, b: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """TRITON_ATTN's cache: kv_cache[num_blocks, 2, block, kv_heads, head].unbind(1)."""
    shape = (b["num_blocks"], a.block_size, a.num_kv_heads, a.head_size)
    strides = (2 * a.block_size * a.num_kv_heads * a.head_size, a.num_kv_heads * a.head_size, a.head_size, 1)
    return Tensor(a.dtype, shape, strides, "key_cache"), Tensor(a.dtype, shape, strides, "value_cache")


def _paged_cache(a: Attn, b: dict[str, Any]) -> tuple[Tensor, Tensor, int]:
    """ROCM_ATTN's (paged attention) cache: key [blocks, kv_heads, head/x, block, x],
    value [blocks, kv_heads, head, block], x = 16 bytes of elements."""
    x = 16 // DType(a.dtype).itemsize
    k = Tensor(
        a.dtype, (b["num_blocks"], a.num_kv_heads, a.head_size // x, a.block_size, x), role="paged_key_cache"
    )
    v = Tensor(
        a.dtype, (b["num_blocks"], a.num_kv_heads, a.head_size, a.block_size), role="paged_value_cache"
    )
    return k, v, x


def _scale() -> Tensor:
    return Tensor("float32", (1,), role="scale_one")


def _tile(mod: ModuleType, a: Attn, arch: int, smem: int, block_m: int, *, prefill: bool) -> int:
    """TILE_SIZE as unified_attention picks it: vLLM's rule, then (our series, below sm_80) the
    tile sized from the device's shared memory."""
    itemsize = DType(a.dtype).itemsize
    tile = mod._get_tile_size(a.head_size, 0, itemsize, is_prefill=prefill)
    if arch < 80 and hasattr(mod, "fma_tile_size"):
        tile = mod.fma_tile_size(tile, block_m, a.padded, itemsize, smem)
    return tile


def unified_2d(a: Attn) -> Callable[[ModuleType, int, int], Launch]:
    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        b = a.batch(*a.pick(PREFILL))
        t = _seq_tensors(b)
        k, v = _flash_cache(a, b)
        q = Tensor(a.dtype, (b["num_tokens"], a.num_q_heads, a.head_size), role="query")
        out = Tensor(a.dtype, q.shape, role="output")
        block_m = 16 if a.qpk <= 16 else 1 << (a.qpk - 1).bit_length()
        block_q = block_m // a.qpk
        tile = _tile(mod, a, arch, smem, block_m, prefill=True)
        grid = (b["num_tokens"] // block_q + b["num_seqs"], a.num_kv_heads)
        kw = dict(
            output_ptr=out, query_ptr=q, key_cache_ptr=k, value_cache_ptr=v, sink_ptr=None,
            block_tables_ptr=t["block_table"], seq_lens_ptr=t["seq_lens"], alibi_slopes_ptr=None,
            qq_bias_ptr=None, scale=b["sm_scale"], k_scale=_scale(), v_scale=_scale(), out_scale=1.0,
            softcap=0.0, num_query_heads=a.num_q_heads, num_queries_per_kv=a.qpk,
            block_table_stride=t["block_table"].stride(0), query_stride_0=q.stride(0),
            query_stride_1=q.stride(1), output_stride_0=out.stride(0), output_stride_1=out.stride(1),
            qq_bias_stride_0=0, BLOCK_SIZE=a.block_size, TILE_SIZE=tile, HEAD_SIZE=a.head_size,
            HEAD_SIZE_PADDED=a.padded, USE_ALIBI_SLOPES=False, USE_QQ_BIAS=False, USE_SOFTCAP=False,
            USE_SINKS=False, USE_MM_PREFIX=False, MAX_MM_RANGES=0, mm_prefix_range_ptr=None,
            SLIDING_WINDOW=0, stride_k_cache_0=k.stride(0), stride_k_cache_1=k.stride(1),
            stride_k_cache_2=k.stride(2), stride_k_cache_3=k.stride(3), stride_v_cache_0=v.stride(0),
            stride_v_cache_1=v.stride(1), stride_v_cache_2=v.stride(2), stride_v_cache_3=v.stride(3),
            query_start_len_ptr=t["cu_seqlens_q"], BLOCK_Q=block_q, num_seqs=b["num_seqs"],
            BLOCK_M=block_m, USE_FP8=False,
        )  # fmt: skip
        kw.update(a.branches())
        return Launch(
            kwargs=kw, grid=grid, scenario=b | {"BLOCK_M": block_m, "BLOCK_Q": block_q, "TILE_SIZE": tile}
        )

    return build


NUM_SEGMENTS = 16  # triton_attn.py NUM_PAR_SOFTMAX_SEGMENTS


def _segments(a: Attn, b: dict[str, Any]) -> dict[str, Tensor]:
    threshold = 128 // a.num_kv_heads  # triton_attn.py: MIN_LAUNCH_GRID_SIZE_2D // num_kv_heads
    return {
        "segm_output": Tensor(
            "float32", (threshold, a.num_q_heads, NUM_SEGMENTS, a.padded), role="segm_output"
        ),
        "segm_max": Tensor("float32", (threshold, a.num_q_heads, NUM_SEGMENTS), role="segm_max"),
        "segm_expsum": Tensor("float32", (threshold, a.num_q_heads, NUM_SEGMENTS), role="segm_expsum"),
    }


def unified_3d(a: Attn) -> Callable[[ModuleType, int, int], Launch]:
    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        b = a.batch(*a.pick(DECODE))
        t, s = _seq_tensors(b), _segments(a, b)
        k, v = _flash_cache(a, b)
        q = Tensor(a.dtype, (b["num_tokens"], a.num_q_heads, a.head_size), role="query")
        block_m = 16 if a.qpk <= 16 else 1 << (a.qpk - 1).bit_length()
        block_q = block_m // a.qpk
        tile = _tile(mod, a, arch, smem, block_m, prefill=False)
        grid = (b["num_tokens"] // block_q + b["num_seqs"], a.num_kv_heads, NUM_SEGMENTS)
        kw = dict(
            segm_output_ptr=s["segm_output"], segm_max_ptr=s["segm_max"], segm_expsum_ptr=s["segm_expsum"],
            query_ptr=q, key_cache_ptr=k, value_cache_ptr=v, sink_ptr=None,
            block_tables_ptr=t["block_table"], seq_lens_ptr=t["seq_lens"], alibi_slopes_ptr=None,
            qq_bias_ptr=None, scale=b["sm_scale"], k_scale=_scale(), v_scale=_scale(), softcap=0.0,
            num_query_heads=a.num_q_heads, num_queries_per_kv=a.qpk,
            block_table_stride=t["block_table"].stride(0), query_stride_0=q.stride(0),
            query_stride_1=q.stride(1), qq_bias_stride_0=0, BLOCK_SIZE=a.block_size, TILE_SIZE=tile,
            HEAD_SIZE=a.head_size, HEAD_SIZE_PADDED=a.padded, USE_ALIBI_SLOPES=False, USE_QQ_BIAS=False,
            USE_SOFTCAP=False, USE_SINKS=False, USE_MM_PREFIX=False, MAX_MM_RANGES=0,
            mm_prefix_range_ptr=None, SLIDING_WINDOW=0, stride_k_cache_0=k.stride(0),
            stride_k_cache_1=k.stride(1), stride_k_cache_2=k.stride(2), stride_k_cache_3=k.stride(3),
            stride_v_cache_0=v.stride(0), stride_v_cache_1=v.stride(1), stride_v_cache_2=v.stride(2),
            stride_v_cache_3=v.stride(3), query_start_len_ptr=t["cu_seqlens_q"], BLOCK_Q=block_q,
            num_seqs=b["num_seqs"], BLOCK_M=block_m, NUM_SEGMENTS_PER_SEQ=NUM_SEGMENTS,
        )  # fmt: skip
        kw.update(a.branches())
        return Launch(
            kwargs=kw, grid=grid, scenario=b | {"BLOCK_M": block_m, "BLOCK_Q": block_q, "TILE_SIZE": tile}
        )

    return build


def reduce_segments(a: Attn) -> Callable[[ModuleType, int, int], Launch]:
    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        b = a.batch(*a.pick(DECODE))
        t, s = _seq_tensors(b), _segments(a, b)
        out = Tensor(a.dtype, (b["num_tokens"], a.num_q_heads, a.head_size), role="output")
        block_m = 16 if a.qpk <= 16 else 1 << (a.qpk - 1).bit_length()
        tile = _tile(mod, a, arch, smem, block_m, prefill=False)
        kw = dict(
            output_ptr=out, segm_output_ptr=s["segm_output"], segm_max_ptr=s["segm_max"],
            segm_expsum_ptr=s["segm_expsum"], seq_lens_ptr=t["seq_lens"], num_seqs=b["num_seqs"],
            num_query_heads=a.num_q_heads, out_scale_inv=1.0, output_stride_0=out.stride(0),
            output_stride_1=out.stride(1), block_table_stride=t["block_table"].stride(0), TILE_SIZE=tile,
            HEAD_SIZE=a.head_size, HEAD_SIZE_PADDED=a.padded, query_start_len_ptr=t["cu_seqlens_q"],
            BLOCK_Q=block_m // a.qpk, NUM_SEGMENTS_PER_SEQ=NUM_SEGMENTS, USE_FP8=False,
        )  # fmt: skip
        return Launch(kwargs=kw, grid=(b["num_tokens"], a.num_q_heads), scenario=b | {"TILE_SIZE": tile})

    return build


def reshape_and_cache(a: Attn) -> Callable[[ModuleType, int, int], Launch]:
    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        b = a.batch(*a.pick(PREFILL))
        k_cache, v_cache = _flash_cache(a, b)
        key = Tensor(a.dtype, (b["num_tokens"], a.num_kv_heads, a.head_size), role="key")
        value = Tensor(a.dtype, key.shape, role="value")
        n = a.num_kv_heads * a.head_size
        tile = min(2048, 1 << (n - 1).bit_length())
        tile = min(512, tile) if arch < 90 else tile  # CUDA below sm_90: launcher caps TILE_SIZE at 512
        kw = dict(
            key_ptr=key, value_ptr=value, key_cache_ptr=k_cache, value_cache_ptr=v_cache,
            slot_mapping_ptr=Tensor("int64", (b["num_tokens"],), role="slot_mapping"), k_scale=_scale(),
            v_scale=_scale(), key_stride=key.stride(0), value_stride=value.stride(0),
            block_stride=k_cache.stride(0), head_stride=k_cache.stride(2), dim_stride_k=0, dim_stride_v=0,
            page_stride=k_cache.stride(1), num_heads=a.num_kv_heads, head_size=a.head_size,
            block_size=a.block_size, x=1, USE_HEAD_MAJOR_LAYOUT=False, FP8_KV_CACHE=False, TILE_SIZE=tile,
            num_warps=16, num_stages=10,
        )  # fmt: skip
        return Launch(
            kwargs=kw, grid=(b["num_tokens"], math.ceil(n / tile)), scenario=b | {"TILE_SIZE": tile}
        )

    return build


def encoder_prefill(a: Attn) -> Callable[[ModuleType, int, int], Launch]:
    """triton_prefill_attention.context_attention_fwd: TRITON_ATTN's encoder (bidirectional) path."""

    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        lens = a.pick(([], [37, 64, 9]))[1]
        n_tok = sum(lens)
        q = Tensor(a.dtype, (n_tok, a.num_q_heads, a.head_size), role="query")
        k = Tensor(a.dtype, (n_tok, a.num_kv_heads, a.head_size), role="key")
        v = Tensor(a.dtype, k.shape, role="value")
        o = Tensor(a.dtype, q.shape, role="output")
        block = 128 if arch >= 80 else 64  # get_block_size(fp16)
        if arch < 80 and hasattr(mod, "fma_block_size"):  # our series: fit the device
            block = mod.fma_block_size(block, a.padded, smem)
        num_warps = 4 if a.head_size <= 64 else 8
        args = (
            q, k, v, 1.0 / math.sqrt(a.head_size), Tensor("int32", (len(lens),), role="b_start_loc"),
            Tensor("int32", (len(lens),), role="b_seq_len"), o, q.stride(0), q.stride(1), k.stride(0),
            k.stride(1), v.stride(0), v.stride(1), o.stride(0), o.stride(1),
        )  # fmt: skip
        kw = dict(
            kv_group_num=a.qpk, BLOCK_M=block, BLOCK_DMODEL=a.padded, BLOCK_N=block, IS_CAUSAL=False,
            SLIDING_WINDOW_Q=0, SLIDING_WINDOW_K=0, num_warps=num_warps, num_stages=1, Lk=a.head_size,
        )  # fmt: skip
        scenario = {"seq_lens": lens, "head_size": a.head_size, "num_q_heads": a.num_q_heads,
                    "num_kv_heads": a.num_kv_heads, "BLOCK": block, "sm_scale": args[3]}  # fmt: skip
        return Launch(args, kw, (len(lens), a.num_q_heads, math.ceil(max(lens) / block)), scenario)

    return build


def _prefix_prefill_tensors(a: Attn) -> tuple:
    """The batch and tensors both prefix-prefill kernels take: paged KV cache, new q/k/v, output."""
    b = a.batch(*a.pick(PREFILL))
    k_cache, v_cache, x = _paged_cache(a, b)
    q = Tensor(a.dtype, (b["num_tokens"], a.num_q_heads, a.head_size), role="query")
    k = Tensor(a.dtype, (b["num_tokens"], a.num_kv_heads, a.head_size), role="key")
    v = Tensor(a.dtype, k.shape, role="value")
    o = Tensor(a.dtype, q.shape, role="output")
    b_loc = Tensor("int32", (b["num_seqs"], b["max_blocks_per_seq"]), role="block_table")
    return b, k_cache, v_cache, x, q, k, v, o, b_loc


def prefix_prefill(a: Attn) -> Callable[[ModuleType, int, int], Launch]:
    """prefix_prefill.context_attention_fwd (_fwd_kernel): ROCM_ATTN's prefill with cached prefix."""

    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        b, k_cache, v_cache, x, q, k, v, o, b_loc = _prefix_prefill_tensors(a)
        if hasattr(mod, "fwd_kernel_block_sizes"):  # our series: fit the device below sm_80
            block_m, block_n, tile = mod.fwd_kernel_block_sizes(a.padded, True, smem, arch < 80)
        else:  # first stack: 128/64 for power-of-two KV blocks, context tiles of 32
            block_m, block_n, tile = 128, 64, 32
        args = (
            q, k, v, k_cache, v_cache, None, b_loc, b["sm_scale"], _scale(), _scale(), 1.0,
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
            BLOCK_M=block_m, BLOCK_N=block_n, num_unroll_cache=4, num_unroll_request=1, num_warps=4,
            num_stages=1, USE_SINKS=False,
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
        block = mod.BASE_BLOCK
        if arch < 80 and hasattr(mod, "fit_tiles"):  # our series: fit the device
            block = min(mod.fit_tiles(block, block, a.padded, smem))
        args = (
            q, k, v, k_cache, v_cache, b_loc, b["sm_scale"], _scale(), _scale(),
            Tensor("int32", (b["num_seqs"] + 1,), role="cu_seqlens_q"), Tensor("int32", (b["num_seqs"],), role="seq_lens"),
            Tensor("float32", (a.num_q_heads,), role="alibi_slopes"), v_cache.shape[3], k_cache.shape[4], o,
            b_loc.stride(0), b_loc.stride(1), q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1),
            k.stride(2), v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
            *k_cache.stride(), *v_cache.stride(),
        )  # fmt: skip
        kw = dict(
            num_queries_per_kv=a.qpk, IN_PRECISION=None, BLOCK_M=block, BLOCK_DMODEL=a.head_size,
            BLOCK_DMODEL_PADDED=a.padded, BLOCK_N=block, SKIP_DECODE=False, num_warps=mod.NUM_WARPS, num_stages=1,
        )  # fmt: skip
        grid = (b["num_seqs"], a.num_q_heads, math.ceil(max(b["query_lens"]) / block))
        return Launch(args, kw, grid, b | {"BLOCK": block, "x": x})

    return build


def paged_attention_2d(a: Attn) -> Callable[[ModuleType, int, int], Launch]:
    """chunked_prefill_paged_decode: ROCM_ATTN's decode kernel (the prefill part is prefix_prefill)."""

    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        b = a.batch(*a.pick(DECODE))
        k_cache, v_cache, x = _paged_cache(a, b)
        t = _seq_tensors(b)
        q = Tensor(a.dtype, (b["num_tokens"], a.num_q_heads, a.head_size), role="query")
        out = Tensor(a.dtype, q.shape, role="output")
        kw = dict(
            output_ptr=out, query_ptr=q, key_cache_ptr=k_cache, value_cache_ptr=v_cache, sink_ptr=None,
            block_tables_ptr=t["block_table"], seq_lens_ptr=t["seq_lens"], alibi_slopes_ptr=None,
            scale=b["sm_scale"], k_scale=_scale(), v_scale=_scale(), out_scale_inv=1.0,
            num_query_heads=a.num_q_heads, num_queries_per_kv=a.qpk,
            num_queries_per_kv_padded=max(1 << (a.qpk - 1).bit_length(), 16),
            block_table_stride=t["block_table"].stride(0), query_stride_0=q.stride(0),
            query_stride_1=q.stride(1), output_stride_0=out.stride(0), output_stride_1=out.stride(1),
            BLOCK_SIZE=a.block_size, PHYSICAL_BLOCK_SIZE=a.block_size, HEAD_SIZE=a.head_size,
            HEAD_SIZE_PADDED=a.padded, USE_ALIBI_SLOPES=False, SLIDING_WINDOW=0, x=x,
            stride_k_cache_0=k_cache.stride(0), stride_k_cache_1=k_cache.stride(1),
            stride_k_cache_2=k_cache.stride(2), stride_k_cache_3=k_cache.stride(3),
            stride_k_cache_4=k_cache.stride(4), stride_v_cache_0=v_cache.stride(0),
            stride_v_cache_1=v_cache.stride(1), stride_v_cache_2=v_cache.stride(2),
            stride_v_cache_3=v_cache.stride(3), filter_by_query_len=True,
            query_start_len_ptr=t["cu_seqlens_q"], USE_SINKS=False, USE_FP8=False,
        )  # fmt: skip
        return Launch(kwargs=kw, grid=(b["num_seqs"], a.num_kv_heads), scenario=b | {"x": x})

    return build
