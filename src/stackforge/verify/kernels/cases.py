"""Which vLLM Triton kernels the kernel audit compiles, and with which arguments.

Each `Case` rebuilds one launch the way vLLM 0.14.0's Python launcher makes it (the file and
function named in `Case.launcher`): the same positional/keyword arguments, tensor dtypes and
strides, constexprs, num_warps and num_stages, for a concrete scenario (head size, heads, KV
block size, sequence lengths). Triton's own binder then specialises the arguments exactly as at a
real launch (ints equal to 1 become constexprs, 16-aligned pointers and ints get divisibility
hints), so the audit compiles what a user's GPU would get.

Block sizes come from the loaded vLLM module: when our series is applied, the launchers choose
them with a helper from the device's shared memory (`fwd_kernel_block_sizes`,
`prefill_block_size`); the audit calls that helper with the limit of the target arch, and on an
unpatched tree it uses the constants the unpatched launcher hard-codes.

Tensors are `Tensor` descriptions (dtype, shape, strides, role) that Triton reads like torch
tensors; `--save-ptx` writes them out so the numerics run can allocate real ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, ClassVar

HEAD_SIZES = (64, 80, 96, 128, 256)


class DType:
    """A torch dtype as Triton's launcher sees it: `str(dtype)` is "torch.<name>"."""

    SIZES: ClassVar[dict[str, int]] = {
        "float16": 2, "bfloat16": 2, "float32": 4, "int8": 1, "uint8": 1, "int16": 2,
        "int32": 4, "int64": 8, "uint64": 8, "float8_e5m2": 1, "float8_e4m3fn": 1, "bool": 1,
    }  # fmt: skip

    def __init__(self, name: str) -> None:
        if name not in self.SIZES:
            raise ValueError(f"unknown dtype {name}")
        self.name = name
        self.itemsize = self.SIZES[name]

    def __str__(self) -> str:
        return f"torch.{self.name}"

    __repr__ = __str__


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


@dataclass
class Tensor:
    """What a launch passes where vLLM passes a torch tensor. `role` tells the numerics run what
    the contents must be (e.g. "cu_seqlens_q" must be a prefix sum); strides are in elements."""

    dtype_name: str
    shape: tuple[int, ...]
    strides: tuple[int, ...] | None = None
    role: str = "data"

    def __post_init__(self) -> None:
        self.shape = tuple(self.shape)
        self.strides = tuple(self.strides) if self.strides is not None else contiguous_strides(self.shape)

    @property
    def dtype(self) -> DType:
        return DType(self.dtype_name)

    def data_ptr(self) -> int:
        return 1 << 20  # CUDA allocations are 256-byte aligned: Triton adds divisibility-16 hints

    def stride(self, dim: int | None = None) -> Any:
        return self.strides if dim is None else self.strides[dim]

    def describe(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype_name,
            "shape": list(self.shape),
            "strides": list(self.strides),
            "role": self.role,
        }


@dataclass
class Launch:
    """One kernel launch: arguments as vLLM passes them, the grid, and the scenario behind them."""

    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    grid: tuple[int, ...] = (1,)
    scenario: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    id: str  # unique, e.g. "unified_attention_2d/h128"
    kernel: str  # display name
    module: str  # dotted vLLM module that defines the kernel
    function: str  # the @triton.jit function
    launcher: str  # where vLLM builds this launch (file:function)
    reached_by: str  # which vLLM path runs it on Pascal/Volta
    shape: str  # human label of the scenario
    build: Callable[[ModuleType, int, int], Launch]  # (module, arch, shared-memory limit) -> Launch


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


def unified_2d(a: Attn) -> Callable[[ModuleType, int, int], Launch]:
    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        b = a.batch(*a.pick(PREFILL))
        t = _seq_tensors(b)
        k, v = _flash_cache(a, b)
        q = Tensor(a.dtype, (b["num_tokens"], a.num_q_heads, a.head_size), role="query")
        out = Tensor(a.dtype, q.shape, role="output")
        block_m = 16 if a.qpk <= 16 else 1 << (a.qpk - 1).bit_length()
        block_q = block_m // a.qpk
        tile = mod._get_tile_size(a.head_size, 0, DType(a.dtype).itemsize, is_prefill=True)
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
        tile = mod._get_tile_size(a.head_size, 0, DType(a.dtype).itemsize, is_prefill=False)
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
        tile = mod._get_tile_size(a.head_size, 0, DType(a.dtype).itemsize, is_prefill=False)
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
        else:  # v0.14.0: 128/64 for power-of-two KV blocks, context tiles of 32
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


# --- LoRA (punica Triton ops: the LoRA path on every CUDA GPU) ------------------------------------


@dataclass(frozen=True)
class Lora:
    """64 tokens over 4 adapters (max_loras=4: lora_ids has 5 entries), rank 16, hidden 4096;
    `slices` 1 is o_proj, 3 is qkv_proj (4096/1024/1024 with 8 KV heads)."""

    slices: int
    tokens: int = 64
    hidden: int = 4096
    rank: int = 16
    max_loras: int = 5

    @property
    def slice_sizes(self) -> tuple[int, ...]:
        return (self.hidden,) if self.slices == 1 else (self.hidden, self.hidden // 4, self.hidden // 4)

    def meta(self) -> dict[str, Tensor]:
        return {
            "token_indices_sorted_by_lora_ids": Tensor("int32", (self.tokens,), role="lora_token_indices"),
            "num_tokens_per_lora": Tensor("int32", (self.max_loras,), role="lora_num_tokens"),
            "lora_token_start_loc": Tensor("int32", (self.max_loras + 1,), role="lora_start_loc"),
            "lora_ids": Tensor("int32", (self.max_loras,), role="lora_ids"),
        }


def lora_shrink(lo: Lora) -> Callable[[ModuleType, int, int], Launch]:
    """lora_shrink_op._lora_shrink with get_lora_op_configs' default "shrink" config (no tuned
    configs ship for these GPUs): SPLIT_K=64 below 128 tokens, whose partial sums meet in
    tl.atomic_add(..., sem="relaxed") on the fp32 output."""

    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        x = Tensor("float16", (lo.tokens, lo.hidden), role="input")
        weight = Tensor("float16", (lo.max_loras - 1, lo.rank, lo.hidden), role="lora_a")
        ptr = weight if lo.slices == 1 else Tensor("uint64", (lo.slices,), role="lora_a_ptrs")
        y = Tensor("float32", (lo.slices, lo.tokens, lo.rank), role="output_zeroed")
        small = lo.tokens < 128
        block_m, block_n, block_k, split_k = 32, 16, (256 if small else 32), (64 if small else 8)
        m = lo.meta()
        args = (
            x, ptr, y, lo.tokens, lo.rank, lo.hidden, m["token_indices_sorted_by_lora_ids"],
            m["num_tokens_per_lora"], m["lora_token_start_loc"], m["lora_ids"], 1.0, x.stride(0), x.stride(1),
            *weight.stride(), *y.stride(), block_m, block_n, block_k, lo.hidden % (block_k * split_k) == 0,
            split_k, 8, lo.slices, False,
        )  # fmt: skip
        grid = (
            split_k * math.ceil(lo.tokens / block_m) * math.ceil(lo.rank / block_n),
            lo.slices,
            lo.max_loras,
        )
        kw = {"num_warps": 4, "num_ctas": 1, "num_stages": 2, "launch_pdl": False}
        return Launch(args, kw, grid, {"tokens": lo.tokens, "hidden": lo.hidden, "rank": lo.rank,
                                       "slices": lo.slices, "max_loras": lo.max_loras, "split_k": split_k})  # fmt: skip

    return build


def lora_expand(lo: Lora) -> Callable[[ModuleType, int, int], Launch]:
    """lora_expand_op._lora_expand with the default "expand" config; its input is the fp32 shrink
    buffer, so CAST_TYPE is on; add_inputs as in LoRA linear layers."""

    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        sizes = lo.slice_sizes
        x = Tensor("float32", (lo.slices, lo.tokens, lo.rank), role="input")
        out = Tensor("float16", (lo.tokens, sum(sizes)), role="output_accumulate")
        weight = Tensor("float16", (lo.max_loras - 1, sizes[0], lo.rank), role="lora_b")
        if lo.slices == 1:
            ptr, slice_start, strides, hidden, same = weight, 0, weight.stride(), sizes[0], True
        else:
            ptr = Tensor("uint64", (lo.slices,), role="lora_b_ptrs")
            slice_start = Tensor("uint64", (lo.slices,), role="slice_offsets")
            strides = tuple(Tensor("int64", (lo.slices,), role=f"lora_b_stride_{d}") for d in range(3))
            hidden, same = Tensor("int64", (lo.slices,), role="slice_sizes"), False
        block_m, block_n, block_k = 64, 128, 16
        m = lo.meta()
        args = (
            x, ptr, out, lo.tokens, max(sizes), lo.rank, m["token_indices_sorted_by_lora_ids"],
            m["num_tokens_per_lora"], m["lora_token_start_loc"], m["lora_ids"], slice_start, *x.stride(),
            *strides, *out.stride(), hidden, block_m, block_n, block_k, lo.rank % block_k == 0, True, True,
            lo.slices, same, False,
        )  # fmt: skip
        grid = (math.ceil(lo.tokens / block_m) * math.ceil(max(sizes) / block_n), lo.slices, lo.max_loras)
        kw = {"num_warps": 4, "num_ctas": 1, "num_stages": 2, "launch_pdl": False}
        return Launch(args, kw, grid, {"tokens": lo.tokens, "slice_sizes": list(sizes), "rank": lo.rank,
                                       "max_loras": lo.max_loras})  # fmt: skip

    return build


# --- fused MoE (unquantised fp16 experts) ----------------------------------------------------------


def fused_moe(tokens: int, experts: int = 8, topk: int = 2, hidden: int = 4096, inter: int = 14336):
    """fused_moe.invoke_fused_moe_triton_kernel for the w13 GEMM, with get_default_config (no tuned
    configs ship for these GPUs); Mixtral-8x7B-like sizes."""

    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        config = mod.get_default_config(tokens, experts, inter, hidden, topk, None)
        bm, bn, bk = config["BLOCK_SIZE_M"], config["BLOCK_SIZE_N"], config["BLOCK_SIZE_K"]
        n = 2 * inter
        a = Tensor("float16", (tokens, hidden), role="hidden_states")
        b = Tensor("float16", (experts, n, hidden), role="w13")
        c = Tensor("float16", (tokens, topk, n), role="output")
        padded = tokens * topk + experts * (bm - 1)  # moe_align_block_size's worst case
        em = min(padded, tokens * topk * bm) if tokens < bm else padded
        args = (
            a, b, c, None, None, None, Tensor("float32", (tokens, topk), role="topk_weights"),
            Tensor("int32", (padded,), role="sorted_token_ids"), Tensor("int32", (math.ceil(padded / bm),), role="expert_ids"),
            Tensor("int32", (1,), role="num_tokens_post_padded"), n, hidden, em, tokens * topk,
            a.stride(0), a.stride(1), b.stride(0), b.stride(2), b.stride(1), c.stride(1), c.stride(2),
            0, 0, 0, 0, 0, 0, 0, 0, 0,
        )  # fmt: skip
        kw = dict(
            MUL_ROUTED_WEIGHT=False, top_k=topk, compute_type=mod.tl.float16, use_fp8_w8a8=False,
            use_int8_w8a8=False, use_int8_w8a16=False, per_channel_quant=False, naive_block_assignment=False,
            HAS_BIAS=False, BLOCK_SIZE_K=bk, BLOCK_SIZE_M=bm, BLOCK_SIZE_N=bn,
            GROUP_SIZE_M=config["GROUP_SIZE_M"], SPLIT_K=1,
        )  # fmt: skip
        grid = (math.ceil(em / bm) * math.ceil(n / bn),)
        return Launch(args, kw, grid, {"tokens": tokens, "experts": experts, "topk": topk, "hidden": hidden,
                                       "intermediate": inter, "config": config})  # fmt: skip

    return build


# --- sampling and speculative decoding ------------------------------------------------------------

SPEC = {"batch": 8, "max_spec_len": 4}


def rejection_greedy(mod: ModuleType, arch: int, smem: int) -> Launch:
    b, s = SPEC["batch"], SPEC["max_spec_len"]
    args = (
        Tensor("int32", (b, s + 1), role="output_token_ids"), Tensor("int32", (b,), role="cu_num_draft_tokens"),
        Tensor("int32", (b * s,), role="draft_token_ids"), Tensor("int64", (b * s,), role="target_argmax"),
        Tensor("int32", (b, 1), role="bonus_token_ids"), Tensor("bool", (b,), role="is_greedy"), s,
    )  # fmt: skip
    return Launch(args, {}, (b,), dict(SPEC))


def rejection_random(vocab: int) -> Callable[[ModuleType, int, int], Launch]:
    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        b, s = SPEC["batch"], SPEC["max_spec_len"]
        args = (
            Tensor("int32", (b, s + 1), role="output_token_ids"), Tensor("int32", (b,), role="cu_num_draft_tokens"),
            Tensor("int32", (b * s,), role="draft_token_ids"), Tensor("float32", (b * s, vocab), role="draft_probs"),
            Tensor("float32", (b * s, vocab), role="target_probs"), Tensor("int32", (b, 1), role="bonus_token_ids"),
            Tensor("int32", (b * s,), role="recovered_token_ids"), Tensor("float32", (b * s,), role="uniform_probs"),
            Tensor("bool", (b,), role="is_greedy"), s, vocab,
        )  # fmt: skip
        return Launch(args, {"NO_DRAFT_PROBS": False}, (b,), SPEC | {"vocab": vocab})

    return build


def recovered_tokens(vocab: int) -> Callable[[ModuleType, int, int], Launch]:
    def build(mod: ModuleType, arch: int, smem: int) -> Launch:
        b, s = SPEC["batch"], SPEC["max_spec_len"]
        args = (
            Tensor("int32", (b * s,), role="recovered_token_ids"), Tensor("int32", (b,), role="cu_num_draft_tokens"),
            Tensor("int32", (b * s,), role="draft_token_ids"), None,
            Tensor("float32", (b * s, vocab), role="target_probs"), Tensor("float32", (b, vocab), role="exponential_q"),
            vocab, 1 << (vocab - 1).bit_length(),
        )  # fmt: skip
        return Launch(args, {"NO_DRAFT_PROBS": True}, (b, s), SPEC | {"vocab": vocab})

    return build


def expand_spec(mod: ModuleType, arch: int, smem: int) -> Launch:
    b = SPEC["batch"]
    args = (
        Tensor("float32", (b * SPEC["max_spec_len"],), role="expanded"), Tensor("float32", (b,), role="per_request"),
        Tensor("int32", (b,), role="cu_num_tokens"), 0, 0,
    )  # fmt: skip
    return Launch(args, {"MAX_NUM_TOKENS": mod.MAX_SPEC_LEN}, (b,), dict(SPEC))


def bincount(mod: ModuleType, arch: int, smem: int) -> Launch:
    """V2 model runner (VLLM_USE_V2_MODEL_RUNNER=1) penalties: tl.atomic_or / tl.atomic_add on i32."""
    vocab, prompt, prefill = 128256, 3000, 3100
    args = (
        Tensor("int32", (prefill,), role="token_ids"), prefill, prompt,
        Tensor("int32", (vocab // 32,), role="bin_mask_zeroed"), Tensor("int32", (vocab,), role="bin_counts_zeroed"),
    )  # fmt: skip
    return Launch(args, {"BLOCK_SIZE": 1024}, (math.ceil(prefill / 1024),), {"vocab": vocab, "prompt_len": prompt,
                                                                            "prefill_len": prefill})  # fmt: skip


def mrope(mod: ModuleType, arch: int, smem: int) -> Launch:
    """Qwen2-VL-style multimodal rotary embedding (Qwen2.5-VL-7B: 28/4 heads of 128, sections 16/24/24)."""
    tokens, qh, kh, hd = 64, 28, 4, 128
    args = (
        Tensor("float16", (tokens, qh * hd), role="query"), Tensor("float16", (tokens, kh * hd), role="key"),
        Tensor("float16", (3, tokens, hd // 2), role="cos"), Tensor("float16", (3, tokens, hd // 2), role="sin"),
        tokens, qh, kh, hd, hd, 32, 4, hd, 16, 24, 24, False,
    )  # fmt: skip
    return Launch(args, {}, (tokens,), {"tokens": tokens, "q_heads": qh, "kv_heads": kh, "head_size": hd})


def other_cases() -> list[Case]:
    lora = "vllm.lora.ops.triton_ops."
    moe = "vllm.model_executor.layers.fused_moe.fused_moe"
    rs = "vllm.v1.sample.rejection_sampler"
    table = [
        ("lora_shrink", lora + "lora_shrink_op", "_lora_shrink_kernel", "lora_shrink_op.py:_lora_shrink",
         "LoRA adapters (--enable-lora)", "o_proj: 64 tokens rank 16 hidden 4096", "s1", lora_shrink(Lora(1))),
        ("lora_shrink", lora + "lora_shrink_op", "_lora_shrink_kernel", "lora_shrink_op.py:_lora_shrink",
         "LoRA adapters (--enable-lora)", "qkv_proj: 3 slices", "s3", lora_shrink(Lora(3))),
        ("lora_expand", lora + "lora_expand_op", "_lora_expand_kernel", "lora_expand_op.py:_lora_expand",
         "LoRA adapters (--enable-lora)", "o_proj: 64 tokens rank 16 hidden 4096", "s1", lora_expand(Lora(1))),
        ("lora_expand", lora + "lora_expand_op", "_lora_expand_kernel", "lora_expand_op.py:_lora_expand",
         "LoRA adapters (--enable-lora)", "qkv_proj: 3 slices 4096/1024/1024", "s3", lora_expand(Lora(3))),
        ("fused_moe", moe, "fused_moe_kernel", "fused_moe.py:invoke_fused_moe_triton_kernel",
         "MoE models, unquantised fp16 experts", "decode: 4 tokens, 8 experts top-2", "m4", fused_moe(4)),
        ("fused_moe", moe, "fused_moe_kernel", "fused_moe.py:invoke_fused_moe_triton_kernel",
         "MoE models, unquantised fp16 experts", "prefill: 256 tokens", "m256", fused_moe(256)),
        ("rejection_greedy_sample", rs, "rejection_greedy_sample_kernel", "rejection_sampler.py:rejection_sample",
         "speculative decoding", "8 requests x 4 draft tokens", "b8", rejection_greedy),
        ("rejection_random_sample", rs, "rejection_random_sample_kernel", "rejection_sampler.py:rejection_sample",
         "speculative decoding", "vocab 32000", "v32000", rejection_random(32000)),
        ("sample_recovered_tokens", rs, "sample_recovered_tokens_kernel",
         "rejection_sampler.py:sample_recovered_tokens", "speculative decoding (ngram: no draft probs)",
         "vocab 32000", "v32000", recovered_tokens(32000)),
        ("sample_recovered_tokens", rs, "sample_recovered_tokens_kernel",
         "rejection_sampler.py:sample_recovered_tokens", "speculative decoding (ngram: no draft probs)",
         "vocab 128256", "v128256", recovered_tokens(128256)),
        ("expand_spec", rs, "expand_kernel", "rejection_sampler.py:expand_batch_to_tokens", "speculative decoding",
         "8 requests", "b8", expand_spec),
        ("bincount", "vllm.v1.worker.gpu.sample.penalties", "_bincount_kernel", "penalties.py:bincount",
         "V2 model runner penalties (VLLM_USE_V2_MODEL_RUNNER=1)", "prompt 3000 of 3100 tokens", "p3100", bincount),
        ("mrope", "vllm.model_executor.layers.rotary_embedding.mrope", "_triton_mrope_forward",
         "mrope.py:triton_mrope", "Qwen2/2.5-VL multimodal RoPE", "64 tokens 28/4 heads of 128", "qwen2.5vl", mrope),
    ]  # fmt: skip
    return [Case(f"{k}/{tag}", k, mod, fn, launcher, reached, shape, build)
            for k, mod, fn, launcher, reached, shape, tag, build in table]  # fmt: skip


# --- the catalogue -------------------------------------------------------------------------------

_OPS = "vllm.v1.attention.ops."
_TRITON_ATTN = "TRITON_ATTN (default on sm < 80)"
_ROCM_ATTN = "ROCM_ATTN (--attention-backend ROCM_ATTN; no capability check)"


def attention_cases(head_sizes: tuple[int, ...] = HEAD_SIZES) -> list[Case]:
    cases = []
    for h in head_sizes:
        a = Attn(h)
        shape = f"head={h} q_heads=32 kv_heads=8 block=16 fp16"
        table = (
            ("reshape_and_cache_flash", "triton_reshape_and_cache_flash", "reshape_and_cache_kernel_flash",
             "triton_reshape_and_cache_flash.py:triton_reshape_and_cache_flash", _TRITON_ATTN + ", every step",
             reshape_and_cache(a)),
            ("unified_attention_2d", "triton_unified_attention", "kernel_unified_attention_2d",
             "triton_unified_attention.py:unified_attention", _TRITON_ATTN + ", prefill and mixed batches",
             unified_2d(a)),
            ("unified_attention_3d", "triton_unified_attention", "kernel_unified_attention_3d",
             "triton_unified_attention.py:unified_attention", _TRITON_ATTN + ", decode-only batches",
             unified_3d(a)),
            ("reduce_segments", "triton_unified_attention", "reduce_segments",
             "triton_unified_attention.py:unified_attention", _TRITON_ATTN + ", after the 3D kernel",
             reduce_segments(a)),
            ("encoder_prefill_attention", "triton_prefill_attention", "_fwd_kernel",
             "triton_prefill_attention.py:context_attention_fwd", _TRITON_ATTN + ", encoder layers",
             encoder_prefill(a)),
            ("prefix_prefill", "prefix_prefill", "_fwd_kernel", "prefix_prefill.py:context_attention_fwd",
             _ROCM_ATTN + ", prefill", prefix_prefill(a)),
            ("prefix_prefill_alibi", "prefix_prefill", "_fwd_kernel_alibi",
             "prefix_prefill.py:context_attention_fwd", _ROCM_ATTN + ", prefill of ALiBi models",
             prefix_prefill_alibi(a)),
            ("paged_attention_2d", "chunked_prefill_paged_decode", "kernel_paged_attention_2d",
             "chunked_prefill_paged_decode.py:chunked_prefill_paged_decode", _ROCM_ATTN + ", decode",
             paged_attention_2d(a)),
        )  # fmt: skip
        for kernel, module, function, launcher, reached_by, build in table:
            cases.append(
                Case(f"{kernel}/h{h}", kernel, _OPS + module, function, launcher, reached_by, shape, build)
            )
    return cases


def all_cases(head_sizes: tuple[int, ...] = HEAD_SIZES) -> list[Case]:
    return attention_cases(head_sizes) + other_cases()
