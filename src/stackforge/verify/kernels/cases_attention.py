"""TRITON_ATTN's launches (unified attention 2D/3D, reduce_segments, the KV-cache write) as the
audit compiles them, and the attention scenarios every attention case shares.

A builder states the keyword arguments vLLM's launchers pass in any tree it knows (e.g. `IS_3D`
where the 2D and 3D kernels are one, `output_ptr` the 3D path passes there); `launch.fit` keeps
those the tree's kernel takes. What differs in value between trees is asked of the tree: its KV
cache layout (`tree.flash_cache_layout`), its launcher helpers (`_get_tile_size`, our series'
`fma_tile_size`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from stackforge.verify.kernels.launch import DType, Launch, Tensor
from stackforge.verify.kernels.tree import flash_cache_layout, tree_root

HEAD_SIZES = (64, 80, 96, 128, 256)


# --- attention scenarios ------------------------------------------------------------------------


@dataclass(frozen=True)
class Attn:
    """Llama-style GQA (32 query heads over 8 KV heads) with vLLM's default KV block size 16; the
    model cases (`models`) give each listed model's heads, window, softcap, sinks and block."""

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
        (SLIDING_WINDOW = 1 + window_size[0] = the model's window). Sinks are in the model's dtype:
        gpt_oss.py makes them `torch.empty(heads)` under the loader's default dtype, the model's."""
        sink = Tensor(self.dtype, (self.num_q_heads,), role="sinks") if self.sinks else None
        return dict(softcap=self.softcap, USE_SOFTCAP=self.softcap > 0, SLIDING_WINDOW=self.sliding_window,
                    sink_ptr=sink, USE_SINKS=self.sinks)  # fmt: skip

    def pick(self, default: tuple[list[int], list[int]]) -> tuple[list[int], list[int]]:
        """The batch: `lens`, else `default` with the first sequence made longer than a sliding
        window by whole 16-token steps, so the numerics run sees the window remove keys. Lengths are
        runtime tensors and the block table's stride stays a multiple of 16: the compile is the same."""
        if self.lens:
            return list(self.lens[0]), list(self.lens[1])
        queries, seqs = list(default[0]), list(default[1])
        if self.sliding_window:
            seqs[0] += 16 * math.ceil(self.sliding_window / 16)
        return queries, seqs

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


def seq_tensors(b: dict[str, Any]) -> dict[str, Tensor]:
    n = b["num_seqs"]
    return {
        "cu_seqlens_q": Tensor("int32", (n + 1,), role="cu_seqlens_q"),
        "seq_lens": Tensor("int32", (n,), role="seq_lens"),
        "block_table": Tensor("int32", (n, b["max_blocks_per_seq"]), role="block_table"),
    }


def _flash_cache(mod: ModuleType, a: Attn, b: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """TRITON_ATTN's key and value caches [blocks, block, kv_heads, head] as its forward makes
    them from the tree's KV cache: `kv_cache[blocks, 2, block, kv_heads, head].unbind(1)`, or
    the packed [blocks, kv_heads, block, 2 * head] cache `.transpose(1, 2).split(head, -1)`
    stored in the tree's default physical order."""
    nb, bs, hk, hd = b["num_blocks"], a.block_size, a.num_kv_heads, a.head_size
    order = flash_cache_layout(tree_root(mod))
    if order is None:
        strides = (2 * bs * hk * hd, hk * hd, hd, 1)
    else:
        sizes, logical, step = (nb, hk, bs, 2 * hd), [0] * 4, 1
        for axis in reversed(order):
            logical[axis], step = step, step * sizes[axis]
        strides = (logical[0], logical[2], logical[1], logical[3])  # transpose(1, 2)
    shape = (nb, bs, hk, hd)
    return Tensor(a.dtype, shape, strides, "key_cache"), Tensor(a.dtype, shape, strides, "value_cache")


def paged_cache(a: Attn, b: dict[str, Any]) -> tuple[Tensor, Tensor, int]:
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


def scale_one() -> Tensor:
    return Tensor("float32", (1,), role="scale_one")


def _tile(mod: ModuleType, a: Attn, arch: int, smem: int, block_m: int, *, prefill: bool) -> int:
    """TILE_SIZE as unified_attention picks it: vLLM's rule (its sliding-window argument is the
    model's window, 1 + window_size[0]: Gemma 3's 1024 gets 32-wide decode tiles), then (our
    series, below sm_80) the tile sized from the device's shared memory."""
    itemsize = DType(a.dtype).itemsize
    tile = mod._get_tile_size(a.head_size, a.sliding_window, itemsize, is_prefill=prefill)
    if arch < 80 and hasattr(mod, "fma_tile_size"):
        tile = mod.fma_tile_size(tile, block_m, a.padded, itemsize, smem)
    return tile


def _blocks(a: Attn) -> tuple[int, int]:
    block_m = 16 if a.qpk <= 16 else 1 << (a.qpk - 1).bit_length()
    return block_m, block_m // a.qpk


def _unified(
    mod: ModuleType, a: Attn, b: dict[str, Any], q: Tensor, tile: int, block_m: int
) -> dict[str, Any]:
    """The unified kernels' arguments both paths share, as unified_attention passes them for an
    fp16/fp32 cache without ALiBi, QQ bias, multimodal prefix or R-SWA (the branches off)."""
    t = seq_tensors(b)
    k, v = _flash_cache(mod, a, b)
    kw = dict(
        query_ptr=q, key_cache_ptr=k, value_cache_ptr=v, block_tables_ptr=t["block_table"],
        seq_lens_ptr=t["seq_lens"], alibi_slopes_ptr=None, qq_bias_ptr=None, scale=b["sm_scale"],
        q_scale=None, k_scale=scale_one(), v_scale=scale_one(), num_query_heads=a.num_q_heads,
        num_queries_per_kv=a.qpk, block_table_stride=t["block_table"].stride(0), query_stride_0=q.stride(0),
        query_stride_1=q.stride(1), qq_bias_stride_0=0, BLOCK_SIZE=a.block_size, TILE_SIZE=tile,
        HEAD_SIZE=a.head_size, HEAD_SIZE_PADDED=a.padded, USE_ALIBI_SLOPES=False, USE_ALIBI_SQRT=False,
        USE_QQ_BIAS=False, USE_MM_PREFIX=False, MAX_MM_RANGES=0, mm_prefix_range_ptr=None,
        USE_CAUSAL=True, USE_PER_SEQ_CAUSAL=False, per_seq_causal_ptr=None,
        rswa_prefix_lens_ptr=t["seq_lens"], R_SWA_WINDOW=0, USE_R_SWA=False,  # no R-SWA: seq_lens stands in
        stride_k_cache_0=k.stride(0), stride_k_cache_1=k.stride(1), stride_k_cache_2=k.stride(2),
        stride_k_cache_3=k.stride(3), stride_v_cache_0=v.stride(0), stride_v_cache_1=v.stride(1),
        stride_v_cache_2=v.stride(2), stride_v_cache_3=v.stride(3), query_start_len_ptr=t["cu_seqlens_q"],
        BLOCK_Q=block_m // a.qpk, num_seqs=b["num_seqs"], BLOCK_M=block_m, USE_FP8=False, KV_QUANT_MODE=0,
        Q_IS_FP8=False, CHUNK_LOOKBACK=-1, CHUNK_SIZE=-1, USE_TD=False, USE_TD_QO=False,
        MM_PREFIX_CLAMP_SW=False,
    )  # fmt: skip
    return kw | a.branches()


def unified_2d(a: Attn) -> Callable[[ModuleType, int, int], Launch]:
    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        b = a.batch(*a.pick(PREFILL))
        q = Tensor(a.dtype, (b["num_tokens"], a.num_q_heads, a.head_size), role="query")
        out = Tensor(a.dtype, q.shape, role="output")
        block_m, block_q = _blocks(a)
        tile = _tile(mod, a, arch, smem, block_m, prefill=True)
        kw = _unified(mod, a, b, q, tile, block_m) | dict(
            output_ptr=out, out_scale=1.0, output_stride_0=out.stride(0), output_stride_1=out.stride(1),
            IS_3D=False, NUM_SEGMENTS_PER_SEQ=1, segm_output_ptr=None, segm_max_ptr=None, segm_expsum_ptr=None,
        )  # fmt: skip
        grid = (b["num_tokens"] // block_q + b["num_seqs"], a.num_kv_heads)
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
        s = _segments(a, b)
        q = Tensor(a.dtype, (b["num_tokens"], a.num_q_heads, a.head_size), role="query")
        out = Tensor(a.dtype, q.shape, role="output")  # where one kernel does both, 3D passes it unused
        block_m, block_q = _blocks(a)
        tile = _tile(mod, a, arch, smem, block_m, prefill=False)
        kw = _unified(mod, a, b, q, tile, block_m) | dict(
            segm_output_ptr=s["segm_output"], segm_max_ptr=s["segm_max"], segm_expsum_ptr=s["segm_expsum"],
            output_ptr=out, out_scale=1.0, output_stride_0=out.stride(0), output_stride_1=out.stride(1),
            IS_3D=True, NUM_SEGMENTS_PER_SEQ=NUM_SEGMENTS,
        )  # fmt: skip
        grid = (b["num_tokens"] // block_q + b["num_seqs"], a.num_kv_heads, NUM_SEGMENTS)
        return Launch(
            kwargs=kw, grid=grid, scenario=b | {"BLOCK_M": block_m, "BLOCK_Q": block_q, "TILE_SIZE": tile}
        )

    return build


def reduce_segments(a: Attn) -> Callable[[ModuleType, int, int], Launch]:
    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        b = a.batch(*a.pick(DECODE))
        t, s = seq_tensors(b), _segments(a, b)
        out = Tensor(a.dtype, (b["num_tokens"], a.num_q_heads, a.head_size), role="output")
        block_m, block_q = _blocks(a)
        tile = _tile(mod, a, arch, smem, block_m, prefill=False)
        kw = dict(
            output_ptr=out, segm_output_ptr=s["segm_output"], segm_max_ptr=s["segm_max"],
            segm_expsum_ptr=s["segm_expsum"], seq_lens_ptr=t["seq_lens"], num_seqs=b["num_seqs"],
            num_query_heads=a.num_q_heads, out_scale_inv=1.0, output_stride_0=out.stride(0),
            output_stride_1=out.stride(1), block_table_stride=t["block_table"].stride(0), TILE_SIZE=tile,
            HEAD_SIZE=a.head_size, HEAD_SIZE_PADDED=a.padded, query_start_len_ptr=t["cu_seqlens_q"],
            BLOCK_Q=block_q, NUM_SEGMENTS_PER_SEQ=NUM_SEGMENTS, USE_FP8=False,
        )  # fmt: skip
        return Launch(kwargs=kw, grid=(b["num_tokens"], a.num_q_heads), scenario=b | {"TILE_SIZE": tile})

    return build


def reshape_and_cache(a: Attn) -> Callable[[ModuleType, int, int], Launch]:
    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        b = a.batch(*a.pick(PREFILL))
        k_cache, v_cache = _flash_cache(mod, a, b)
        key = Tensor(a.dtype, (b["num_tokens"], a.num_kv_heads, a.head_size), role="key")
        value = Tensor(a.dtype, key.shape, role="value")
        n = a.num_kv_heads * a.head_size
        tile = min(2048, 1 << (n - 1).bit_length())
        tile = min(512, tile) if arch < 90 else tile  # CUDA below sm_90: launcher caps TILE_SIZE at 512
        kw = dict(
            key_ptr=key, value_ptr=value, key_cache_ptr=k_cache, value_cache_ptr=v_cache,
            slot_mapping_ptr=Tensor("int64", (b["num_tokens"],), role="slot_mapping"), k_scale=scale_one(),
            v_scale=scale_one(), key_stride=key.stride(0), value_stride=value.stride(0),
            block_stride=k_cache.stride(0), head_stride=k_cache.stride(2), dim_stride_k=0, dim_stride_v=0,
            page_stride=k_cache.stride(1), num_heads=a.num_kv_heads, head_size=a.head_size,
            block_size=a.block_size, x=1, USE_HEAD_MAJOR_LAYOUT=False, INTERLEAVED_V_PACK_FACTOR=0,
            FP8_KV_CACHE=False, TILE_SIZE=tile, num_warps=16, num_stages=10,
        )  # fmt: skip
        return Launch(
            kwargs=kw, grid=(b["num_tokens"], math.ceil(n / tile)), scenario=b | {"TILE_SIZE": tile}
        )

    return build
