"""Numerics of Pascal/Volta device code on whatever NVIDIA GPU is at hand.

PTX compiled here for sm_60/61/70 (by Triton for vLLM's kernels and our atomics kernels, by NVRTC 12.9
for CUDA C++ fallbacks) runs on any newer GPU through the driver's JIT, so an H100 can check that the
code a P40 will run computes the right numbers. `stackforge.verify.numerics.suite` (the numerics suite) and
`stackforge audit kernels --save-ptx` write, into a folder, one `<name>.json` launch record per
kernel x shape x arch beside its PTX; `run_checks` loads each PTX with the CUDA driver API (ctypes,
libcuda.so.1), makes the inputs with PyTorch on the GPU, launches, and compares with a PyTorch
reference computed from the same inputs. Records whose `check` has no reference here (the audit
saves every kernel it compiles: LoRA, MoE, sampling, ...) are listed, not run.

A launch record (schema "stackforge.numerics/1"):
    check       which inputs/reference to use (a key of CHECKS; audit records name their kernel)
    kernel      the kernel's name; label: the shape in words; arch: 60, 61 or 70 (the PTX target)
    shape       parameters of the inputs (sizes, sequence lengths, seed; vLLM records: the scenario)
    tensors     optional: {key: {"dtype", "shape", "strides" (elements), "role"}}: the tensors the
                launches share, allocated as strided views; `role` says what goes in them
    launches    kernels run in order, each:
        ptx, entry   the PTX file beside the record and its .entry name
        grid, block  launch geometry; shared: dynamic shared memory in bytes (above 48 KB the
                     launch opts in with CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES)
        global_scratch, profile_scratch  {"size", "align"}: bytes per program for the two scratch
                     pointers Triton >= 3.3 appends to every kernel (size 0: a null pointer)
        args         runtime parameters in .entry order: {"name", "tensor": KEY} or
                     {"name", "value", "type": "i32"|"i64"|"u64"|"fp32"|"i1"...}
        constexprs, case, module, function, launcher   (Triton launches) what is baked into the
                     PTX and where vLLM makes this launch
    tolerance   {"max_abs": ..., "l2_rel": ...}: a case fails past either (null: no reference)
    compiled_with  what produced the PTX

Only the standard library is imported at module level: building the records needs no torch, and
running them imports torch lazily (the GPU machine needs PyTorch, not Triton or a CUDA toolkit).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from itertools import accumulate, pairwise
from pathlib import Path
from typing import Any

SCHEMA = "stackforge.numerics/1"
FP16_EPS = 2.0**-11  # unit roundoff of float16
FP32_EPS = 2.0**-24

EXACT = {"max_abs": 0.0, "l2_rel": 0.0}
# fp16 output rounding and the fp16 P operand of P.V give about 3e-4 of the output's norm
ATTENTION = {"max_abs": 1e-2, "l2_rel": 5e-3}
TOLERANCES: dict[str, dict[str, float]] = {
    "half_atomic_add": EXACT,  # the random case replaces it by Higham's bound at run time
    "triton_atomic_add": EXACT,
    "triton_atomic_add_old": EXACT,
    "triton_atomic_cas": EXACT,
    # replaced at run time by the bound for fp32 sums of these inputs (about 1e-1; typical errors 1e-5)
    "triton_last_program_reduces": {"max_abs": 1e-2, "l2_rel": 1.0},
    "unified_attention_2d": ATTENTION,
    "unified_attention_3d+reduce_segments": ATTENTION,
    "prefix_prefill": ATTENTION,
    "encoder_prefill_attention": ATTENTION,
}

# jsonschema of a record (tests validate what the builders write against it)
RECORD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "schema",
        "check",
        "kernel",
        "label",
        "arch",
        "shape",
        "launches",
        "tolerance",
        "compiled_with",
    ],
    "properties": {
        "schema": {"const": SCHEMA},
        "arch": {"type": "integer"},
        "tensors": {
            "type": "object",
            "additionalProperties": {"type": "object", "required": ["dtype", "shape", "strides", "role"]},
        },
        "launches": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["ptx", "entry", "grid", "block", "shared", "args"],
                "properties": {
                    "grid": {
                        "type": "array",
                        "items": {"type": "integer", "minimum": 1},
                        "minItems": 3,
                        "maxItems": 3,
                    },
                    "args": {
                        "type": "array",
                        "items": {
                            "oneOf": [
                                {"required": ["name", "tensor"]},
                                {"required": ["name", "value", "type"]},
                            ]
                        },
                    },
                },
            },
        },
        "tolerance": {"oneOf": [{"type": "null"}, {"type": "object", "required": ["max_abs", "l2_rel"]}]},
    },
}


@dataclass
class Result:
    """One kernel x shape x arch on the GPU: errors against the reference, and the verdict."""

    kernel: str
    shape: str
    arch: int
    max_abs: float
    max_rel: float  # max |out - ref| / max |ref|
    l2_rel: float  # ||out - ref|| / ||ref||
    tolerance: dict
    ok: bool
    note: str = ""
    seconds: float = 0.0  # JIT, launches and reference


# --- the CUDA driver through ctypes ----------------------------------------------------------------

CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
_PARAM = re.compile(r"\.param\s+\.(\w+)(?:\s+\.ptr)?(?:\s+\.global)?(?:\s+\.align\s+\d+)?\s+(\w+)")


def ptx_param_types(ptx: str, entry: str) -> list[str]:
    """The .param types of `.entry entry(...)` in order ('u64', 'u32', 'f32', ...)."""
    match = re.search(rf"\.entry\s+{re.escape(entry)}\s*\((.*?)\)", ptx, re.S)
    if not match:
        raise ValueError(f"no .entry {entry} in the PTX")
    return [m.group(1) for m in _PARAM.finditer(match.group(1))]


class Driver:
    """The few CUDA driver calls a launch needs, in the context PyTorch made current."""

    def __init__(self) -> None:
        self.lib = ctypes.CDLL("libcuda.so.1")
        self.lib.cuGetErrorString.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]

    def check(self, result: int, what: str) -> None:
        if result != 0:
            text = ctypes.c_char_p()
            self.lib.cuGetErrorString(result, ctypes.byref(text))
            raise RuntimeError(f"{what} failed: CUDA error {result} ({(text.value or b'?').decode()})")

    def load(self, ptx: str, entry: str) -> tuple[ctypes.c_void_p, ctypes.c_void_p]:
        """JIT-compile the PTX for this GPU; a 4 KB log says why when the JIT refuses it."""
        module, func = ctypes.c_void_p(), ctypes.c_void_p()
        log = ctypes.create_string_buffer(4096)
        # CU_JIT_ERROR_LOG_BUFFER (5), CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES (6)
        opts = (ctypes.c_int * 2)(5, 6)
        vals = (ctypes.c_void_p * 2)(ctypes.cast(log, ctypes.c_void_p), ctypes.c_void_p(4096))
        result = self.lib.cuModuleLoadDataEx(ctypes.byref(module), ptx.encode() + b"\0", 2, opts, vals)
        if result != 0:
            self.check(result, f"cuModuleLoadDataEx ({log.value.decode(errors='replace').strip()})")
        self.check(
            self.lib.cuModuleGetFunction(ctypes.byref(func), module, entry.encode()), "cuModuleGetFunction"
        )
        return module, func

    def unload(self, module: ctypes.c_void_p) -> None:
        self.check(self.lib.cuModuleUnload(module), "cuModuleUnload")

    def launch(
        self, func: ctypes.c_void_p, grid: list[int], block: list[int], shared: int, params: list, stream: int
    ) -> None:
        if shared > 48 * 1024:  # dynamic shared memory past 48 KB needs an opt-in
            self.check(
                self.lib.cuFuncSetAttribute(func, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, shared),
                "cuFuncSetAttribute",
            )
        holders = (ctypes.c_void_p * len(params))(
            *[ctypes.cast(ctypes.byref(p), ctypes.c_void_p) for p in params]
        )
        self.check(
            self.lib.cuLaunchKernel(
                func,
                *[ctypes.c_uint(g) for g in grid],
                *[ctypes.c_uint(b) for b in block],
                ctypes.c_uint(shared),
                ctypes.c_void_p(stream),
                holders,
                None,
            ),
            "cuLaunchKernel",
        )


_INTS = {8: ctypes.c_int8, 16: ctypes.c_int16, 32: ctypes.c_int32, 64: ctypes.c_int64}


def _scalar(value: Any, ptx_type: str) -> ctypes._SimpleCData:
    """A scalar argument in the width of its .param (Triton passes i1 as .u8, i32 as .u32, ...)."""
    bits = int(re.sub(r"\D", "", ptx_type) or 64)
    if ptx_type.startswith("f"):
        return (ctypes.c_double if bits == 64 else ctypes.c_float)(float(value))
    value = int(value) & ((1 << bits) - 1)  # two's complement of the .param's width
    return _INTS[bits](value - (1 << bits) if value >> (bits - 1) else value)


def launch_record(driver: Driver, record: dict, folder: Path, tensors: dict, torch: Any) -> None:
    """Launch a record's kernels in order on `tensors` (name -> CUDA tensor) and wait for them."""
    for launch in record["launches"]:
        _launch_one(driver, launch, folder, tensors, torch)
    torch.cuda.synchronize()


def _launch_one(driver: Driver, launch: dict, folder: Path, tensors: dict, torch: Any) -> None:
    ptx = (folder / launch["ptx"]).read_text()
    types = ptx_param_types(ptx, launch["entry"])
    args = launch["args"]
    extra = types[len(args) :]
    if len(types) < len(args) or any(t not in ("u64", "b64") for t in extra):
        raise RuntimeError(
            f"{launch['ptx']}: PTX parameters {types} do not match the record's {len(args)} args"
        )
    params: list = []
    for arg, ptx_type in zip(args, types, strict=False):
        if "tensor" in arg:
            params.append(ctypes.c_uint64(tensors[arg["tensor"]].data_ptr()))
        else:
            params.append(_scalar(arg["value"], ptx_type))
    scratch = []  # kept alive until the launch has finished
    programs = math.prod(launch["grid"])
    sizes = [
        launch.get("global_scratch", {}).get("size", 0),
        launch.get("profile_scratch", {}).get("size", 0),
    ]
    for i, _ in enumerate(extra):  # Triton's global and profile scratch pointers
        size = sizes[i] if i < len(sizes) else 0
        if size:
            buf = torch.empty(programs * size + 256, dtype=torch.uint8, device="cuda")
            scratch.append(buf)
            params.append(ctypes.c_uint64((buf.data_ptr() + 255) // 256 * 256))
        else:
            params.append(ctypes.c_uint64(0))
    module, func = driver.load(ptx, launch["entry"])
    try:
        stream = torch.cuda.current_stream().cuda_stream
        driver.launch(func, launch["grid"], launch["block"], launch.get("shared", 0), params, stream)
        torch.cuda.synchronize()
    finally:
        driver.unload(module)


# --- inputs and references per check ---------------------------------------------------------------


def allocate(record: dict, torch: Any) -> dict[str, Any]:
    """The record's tensors on the GPU, as strided views over fresh allocations (contents unset)."""
    tensors = {}
    for key, d in record.get("tensors", {}).items():
        span = 1 + sum((n - 1) * st for n, st in zip(d["shape"], d["strides"], strict=True))
        base = torch.empty(span if all(d["shape"]) else 0, dtype=getattr(torch, d["dtype"]), device="cuda")
        tensors[key] = torch.as_strided(base, d["shape"], d["strides"])
    return tensors


def _role(record: dict, tensors: dict, role: str) -> Any:
    (found,) = [tensors[k] for k, d in record["tensors"].items() if d["role"] == role]
    return found


def _errors(out: Any, ref: Any) -> tuple[float, float, float]:
    out, ref = out.double(), ref.double()
    if not bool(out.isfinite().all()):
        return math.inf, math.inf, math.inf
    err = (out - ref).abs()
    ref_max = float(ref.abs().max()) or 1.0
    l2 = float(ref.norm()) or 1.0
    return float(err.max()), float(err.max()) / ref_max, float((out - ref).norm()) / l2


def check_half_atomic_add(record: dict, run: Callable[[dict], None], torch: Any) -> tuple[Any, Any, str]:
    """Many threads add half values into few half slots (neighbouring slots share a 32-bit word, so the
    CAS fallback's read-modify-write of the other half is exercised); reference: float64 sums.
    Exact cases use values whose every partial sum is representable in fp16: any error is a lost or
    corrupted update. The random case is bounded by Higham's gamma_k * sum|x| (k adds per slot)."""
    shape = record["shape"]
    n, slots = shape["n"], shape["slots"]
    gen = torch.Generator(device="cuda").manual_seed(shape["seed"])
    idx = (torch.arange(n, device="cuda", dtype=torch.int32) % slots).contiguous()
    if shape["values"] == "ones":
        vals = torch.ones(n, device="cuda", dtype=torch.float16)
    elif shape["values"] == "sixty-fourths":  # j/64, j in 1..4
        vals = (torch.randint(1, 5, (n,), device="cuda", generator=gen).to(torch.float32) / 64).half()
    else:
        vals = (torch.randn(n, device="cuda", generator=gen) / 4).half()
    out = torch.zeros(slots, device="cuda", dtype=torch.float16)
    olds = torch.full((n,), float("nan"), device="cuda", dtype=torch.float16)  # poisoned
    run({"out": out, "vals": vals, "idx": idx, "olds": olds})
    ref = torch.zeros(slots, dtype=torch.float64, device="cuda").index_add_(0, idx.long(), vals.double())
    note = ""
    if shape["values"] == "ones":
        # atomicAdd returns the previous value: per slot, the old values are exactly 0, 1, ..., count-1
        count = n // slots
        seen = olds.float().view(count, slots).t().sort(dim=1).values
        if not bool((seen == torch.arange(count, device="cuda", dtype=torch.float32)).all()):
            return out, torch.full_like(ref, math.inf), "returned old values are not 0..count-1 per slot"
        note = f"old values 0..{count - 1} per slot"
    if shape["values"] == "random":
        k = n // slots
        bound = (k * FP16_EPS / (1 - k * FP16_EPS)) * float(
            torch.zeros(slots, dtype=torch.float64, device="cuda")
            .index_add_(0, idx.long(), vals.double().abs())
            .max()
        )
        record["tolerance"] = {"max_abs": bound, "l2_rel": 1.0}
        note = f"bound gamma_{k}*sum|x| = {bound:.3g}"
    return out, ref, note


def check_triton_atomic_add(record: dict, run: Callable[[dict], None], torch: Any) -> tuple[Any, Any, str]:
    """Every lane of every program adds k/4 (k in 0..3) into slot (lane * stride) % slots: all
    partial sums are multiples of 1/4 below 256, exact in fp16 and fp32, so the result must equal
    the float64 sum exactly; any lost or torn update (the fp16 CAS loop) shows."""
    shape, t = record["shape"], allocate(record, torch)
    gen = torch.Generator(device="cuda").manual_seed(shape["seed"])
    x, y = _role(record, t, "addends"), _role(record, t, "slots")
    x.copy_(torch.randint(0, 4, x.shape, device="cuda", generator=gen).to(x.dtype) / 4)
    y.zero_()
    run(t)
    idx = (torch.arange(x.numel(), device="cuda") * shape["stride"]) % shape["slots"]
    ref = torch.zeros(y.numel(), dtype=torch.float64, device="cuda").index_add_(0, idx, x.double())
    return y, ref, f"{x.numel() // y.numel()} adds per slot"


def check_triton_atomic_add_old(
    record: dict, run: Callable[[dict], None], torch: Any
) -> tuple[Any, Any, str]:
    """An fp16 atomic add returns the value it replaced, and writes the fp16-rounded sum, for both
    halves of every 32-bit word; masked lanes neither add nor return."""
    shape, t = record["shape"], allocate(record, torch)
    gen = torch.Generator(device="cuda").manual_seed(shape["seed"])
    y, r, x = (_role(record, t, k) for k in ("target", "returned", "addends"))
    y0 = torch.randn(y.shape, device="cuda", generator=gen).half()
    y.copy_(y0)
    x.copy_(torch.randn(x.shape, device="cuda", generator=gen).half())
    r.fill_(-7.0)
    run(t)
    m = torch.arange(y.numel(), device="cuda") < shape["masked_from"]
    want_y = torch.where(m, (y0.float() + x.float()).half(), y0)  # fp32 holds the sum exactly
    want_r = torch.where(m, y0, torch.full_like(y0, -7.0))
    return (
        torch.cat([y, r]),
        torch.cat([want_y, want_r]),
        "sums and returned old values, masked tail untouched",
    )


def check_triton_atomic_cas(record: dict, run: Callable[[dict], None], torch: Any) -> tuple[Any, Any, str]:
    """atomic_cas swaps exactly where the target equals the comparand and returns the old value
    (fp16: one half of a 32-bit word through the patch's CAS loop)."""
    shape, t = record["shape"], allocate(record, torch)
    gen = torch.Generator(device="cuda").manual_seed(shape["seed"])
    y, r, c, v = (_role(record, t, k) for k in ("target", "returned", "compare", "values"))
    y0 = torch.randint(0, 4, y.shape, device="cuda", generator=gen).to(y.dtype)
    y.copy_(y0)
    c.copy_(torch.randint(0, 4, c.shape, device="cuda", generator=gen).to(c.dtype))
    v.copy_(torch.randint(10, 20, v.shape, device="cuda", generator=gen).to(v.dtype))
    r.zero_()
    run(t)
    swapped = int((y0 == c).sum())
    return (
        torch.cat([y, r]),
        torch.cat([torch.where(y0 == c, v, y0), y0]),
        f"{swapped} of {y.numel()} swapped",
    )


def check_last_program_reduces(record: dict, run: Callable[[dict], None], torch: Any) -> tuple[Any, Any, str]:
    """Each program stores its partial sum, then takes a ticket with an acq_rel atomic_add; the
    program with the last ticket sums every partial. Partials start as NaN, so a partial read
    before it is visible poisons the total. Tolerance: gamma_k * sum|x| for fp32 sums of depth k."""
    shape, t = record["shape"], allocate(record, torch)
    gen = torch.Generator(device="cuda").manual_seed(shape["seed"])
    x, part, count, total = (_role(record, t, k) for k in ("addends", "partials", "counter", "total"))
    x.copy_(torch.randn(x.shape, device="cuda", generator=gen))
    part.fill_(float("nan"))
    count.zero_()
    total.fill_(float("nan"))
    run(t)
    if int(count.item()) != shape["programs"]:
        return total, torch.full_like(total, math.inf), f"counter {int(count.item())} != {shape['programs']}"
    k = 2 * math.ceil(math.log2(x.numel()))  # a generous depth for in-thread + shuffle + cross-warp sums
    bound = k * FP32_EPS / (1 - k * FP32_EPS) * float(x.double().abs().sum())
    record["tolerance"] = {"max_abs": bound, "l2_rel": 1.0}
    return (
        total,
        x.double().sum().reshape(1),
        f"counter {shape['programs']}; bound gamma_{k}*sum|x| = {bound:.3g}",
    )


def _attention_inputs(record: dict, torch: Any) -> dict[str, Any]:
    """Random fp16 activations and caches, NaN outputs (every element must be written), the
    sequence bookkeeping from the scenario, and a block table of shuffled KV blocks."""
    sc, t = record["shape"], allocate(record, torch)
    gen = torch.Generator(device="cuda").manual_seed(11)
    seq_lens = sc["seq_lens"]
    query_lens = sc.get("query_lens", seq_lens)
    for key, d in record["tensors"].items():
        x, role = t[key], d["role"]
        if role in (
            "query",
            "key",
            "value",
            "key_cache",
            "value_cache",
            "paged_key_cache",
            "paged_value_cache",
        ):
            x.copy_(torch.randn(x.shape, device="cuda", generator=gen) / 2)
        elif role in ("output", "segm_output", "segm_max", "segm_expsum"):
            x.fill_(float("nan"))
        elif role == "scale_one":
            x.fill_(1.0)
        elif role in ("seq_lens", "b_seq_len"):
            x.copy_(torch.tensor(seq_lens))
        elif role == "cu_seqlens_q":
            x.copy_(torch.tensor([0, *accumulate(query_lens)]))
        elif role == "b_start_loc":
            x.copy_(torch.tensor([0, *accumulate(seq_lens)][:-1]))
        elif role == "block_table":
            per = math.ceil(max(seq_lens) / sc["block_size"])
            perm = torch.randperm(sc["num_blocks"], device="cuda", generator=gen)[: len(seq_lens) * per]
            x.zero_()
            x[:, :per] = perm.view(len(seq_lens), per).to(x.dtype)
        else:
            raise ValueError(f"no input rule for a tensor of role {role!r} ({key})")
    return t


def _attend(q: Any, k: Any, v: Any, scale: float, offset: int | None, torch: Any) -> Any:
    """softmax(q k^T * scale) v in float64 with GQA; causal when `offset` is given: query i sees the
    keys up to offset + i (the cached context comes first)."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(rep, 1), v.double().repeat_interleave(rep, 1)
    s = torch.einsum("qhd,khd->hqk", q.double(), k) * scale
    if offset is not None:
        i = torch.arange(q.shape[0], device="cuda")[:, None]
        j = torch.arange(k.shape[0], device="cuda")[None, :]
        s = s.masked_fill(j > offset + i, -math.inf)
    return torch.einsum("hqk,khd->qhd", s.softmax(-1), v)


def check_unified_attention(record: dict, run: Callable[[dict], None], torch: Any) -> tuple[Any, Any, str]:
    """vLLM's unified attention (the 2D kernel, or the 3D kernel + reduce_segments) over the flash
    KV-cache layout and a shuffled block table: causal attention of each sequence's new tokens over
    its whole cached sequence, against a float64 reference on the same fp16 inputs."""
    sc = record["shape"]
    t = _attention_inputs(record, torch)
    run(t)
    q, out, bt = (_role(record, t, r) for r in ("query", "output", "block_table"))
    kc, vc = _role(record, t, "key_cache"), _role(record, t, "value_cache")
    bs, hk, hd = sc["block_size"], sc["num_kv_heads"], sc["head_size"]
    refs, start = [], 0
    for s, (qlen, slen) in enumerate(zip(sc["query_lens"], sc["seq_lens"], strict=True)):
        blocks = bt[s, : math.ceil(slen / bs)].long()
        k = kc[blocks].reshape(-1, hk, hd)[:slen]
        v = vc[blocks].reshape(-1, hk, hd)[:slen]
        refs.append(_attend(q[start : start + qlen], k, v, sc["sm_scale"], slen - qlen, torch))
        start += qlen
    return out, torch.cat(refs), ""


def check_prefix_prefill(record: dict, run: Callable[[dict], None], torch: Any) -> tuple[Any, Any, str]:
    """prefix_prefill's _fwd_kernel: each sequence's cached context in the paged layout (key
    [blocks, kv_heads, head/x, block, x], value [blocks, kv_heads, head, block]) behind a shuffled
    block table, its new tokens' K/V passed directly; causal over context + new tokens."""
    sc = record["shape"]
    t = _attention_inputs(record, torch)
    run(t)
    q, k_new, v_new, out, bt = (
        _role(record, t, r) for r in ("query", "key", "value", "output", "block_table")
    )
    kc, vc = _role(record, t, "paged_key_cache"), _role(record, t, "paged_value_cache")
    bs, hk, hd = sc["block_size"], sc["num_kv_heads"], sc["head_size"]
    refs, start = [], 0
    for s, (qlen, slen) in enumerate(zip(sc["query_lens"], sc["seq_lens"], strict=True)):
        ctx = slen - qlen
        pos = torch.arange(ctx, device="cuda")
        blk, off = bt[s, pos // bs].long(), pos % bs
        k = torch.cat([kc[blk, :, :, off, :].reshape(ctx, hk, hd), k_new[start : start + qlen]])
        v = torch.cat([vc[blk, :, :, off], v_new[start : start + qlen]])
        refs.append(_attend(q[start : start + qlen], k, v, sc["sm_scale"], ctx, torch))
        start += qlen
    return out, torch.cat(refs), ""


def check_encoder_attention(record: dict, run: Callable[[dict], None], torch: Any) -> tuple[Any, Any, str]:
    """triton_prefill_attention's _fwd_kernel as the encoder runs it: bidirectional attention
    within each of the packed sequences."""
    sc = record["shape"]
    t = _attention_inputs(record, torch)
    run(t)
    q, k, v, out = (_role(record, t, r) for r in ("query", "key", "value", "output"))
    bounds = [0, *accumulate(sc["seq_lens"])]
    refs = [_attend(q[a:b], k[a:b], v[a:b], sc["sm_scale"], None, torch) for a, b in pairwise(bounds)]
    return out, torch.cat(refs), ""


CHECKS: dict[str, Callable[[dict, Callable[[dict], None], Any], tuple[Any, Any, str]]] = {
    "half_atomic_add": check_half_atomic_add,
    "triton_atomic_add": check_triton_atomic_add,
    "triton_atomic_add_old": check_triton_atomic_add_old,
    "triton_atomic_cas": check_triton_atomic_cas,
    "triton_last_program_reduces": check_last_program_reduces,
    "unified_attention_2d": check_unified_attention,
    "unified_attention_3d+reduce_segments": check_unified_attention,
    "prefix_prefill": check_prefix_prefill,
    "encoder_prefill_attention": check_encoder_attention,
}


def load_records(saved_dir: Path, archs: tuple[int, ...] | None = None) -> list[tuple[Path, dict]]:
    """Every record under `saved_dir` (any depth) for `archs` (None: all)."""
    records = []
    for path in sorted(Path(saved_dir).rglob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if (
            isinstance(data, dict)
            and data.get("schema") == SCHEMA
            and (archs is None or data["arch"] in archs)
        ):
            records.append((path, data))
    return records


def unchecked(saved_dir: Path, archs: tuple[int, ...] | None = None) -> Counter:
    """Kernels of the records that have no reference here: check -> number of records."""
    return Counter(r["check"] for _, r in load_records(saved_dir, archs) if r["check"] not in CHECKS)


def gpu_present() -> str | None:
    """None when a CUDA GPU can run the checks, else why not."""
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to PyTorch"
    return None


def device_name() -> str:
    import torch

    cap = ".".join(map(str, torch.cuda.get_device_capability()))
    return f"{torch.cuda.get_device_name()} (compute capability {cap})"


def run_checks(saved_dir: Path, env: Any = None) -> list[Result]:
    """Run every record under `saved_dir` that has a reference, for the archs of `env` (a GpuEnv,
    anything with `.archs`, or None for all), on the current GPU."""
    import torch

    archs = tuple(env.archs) if env is not None else None
    torch.cuda.init()
    torch.empty(1, device="cuda")  # makes the primary context current for the driver calls
    driver = Driver()
    results = []
    for path, record in load_records(saved_dir, archs):
        check = CHECKS.get(record["check"])
        if check is None:
            continue

        def run(tensors: dict, record: dict = record, folder: Path = path.parent) -> None:
            launch_record(driver, record, folder, tensors, torch)

        start = time.monotonic()
        try:
            out, ref, note = check(record, run, torch)
            max_abs, max_rel, l2_rel = _errors(out, ref)
            tol = record["tolerance"]
            ok = max_abs <= tol["max_abs"] and l2_rel <= tol["l2_rel"]
        except Exception as exc:  # a JIT or launch failure is a result, not a crash of the whole run
            max_abs = max_rel = l2_rel = math.inf
            tol, ok, note = record.get("tolerance") or {}, False, f"{type(exc).__name__}: {exc}"[:300]
        seconds = round(time.monotonic() - start, 2)
        results.append(
            Result(
                record["kernel"],
                record["label"],
                record["arch"],
                max_abs,
                max_rel,
                l2_rel,
                tol,
                ok,
                note,
                seconds,
            )
        )
    return results


def table(results: list[Result], device: str) -> str:
    """A Markdown table of the results (what docs/verification.md carries)."""
    lines = [
        f"GPU: {device}",
        "",
        "| kernel | shape | PTX target | max abs err | max rel err | L2 rel err | tolerance (abs / L2 rel) | result |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        tol = f"{r.tolerance.get('max_abs', math.nan):.3g} / {r.tolerance.get('l2_rel', math.nan):.3g}"
        verdict = "pass" if r.ok else "FAIL"
        if r.note:
            verdict += f" ({r.note})"
        verdict = verdict.replace("|", "\\|")
        lines.append(
            f"| {r.kernel} | {r.shape} | sm_{r.arch} | {r.max_abs:.3g} | {r.max_rel:.3g} | {r.l2_rel:.3g} | {tol} | {verdict} |"
        )
    return "\n".join(lines)


def summary(results: list[Result], skipped: Counter) -> str:
    failed = [r for r in results if not r.ok]
    text = f"{len(results) - len(failed)} of {len(results)} passed in {sum(r.seconds for r in results):.1f} s"
    if skipped:
        names = ", ".join(f"{k} ({n})" for k, n in sorted(skipped.items()))
        text += f"; {sum(skipped.values())} compiled records have no reference here: {names}"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stackforge.verify.numerics.gpu", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "saved_dir",
        type=Path,
        help="folder of launch records and PTX (numerics_build, audit kernels --save-ptx)",
    )
    parser.add_argument("--archs", default=None, help="comma-separated PTX targets to run (default: all)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    why = gpu_present()
    if why:
        print(f"no GPU: {why}; nothing run")
        return 1
    archs = None
    if args.archs:
        archs = type("Archs", (), {"archs": tuple(int(a) for a in args.archs.split(","))})()
    results = run_checks(args.saved_dir, archs)
    device = device_name()
    print(table(results, device))
    skipped = unchecked(args.saved_dir, archs.archs if archs else None)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"device": device, "results": [asdict(r) for r in results], "no_reference": skipped}, indent=2
            )
        )
    print(summary(results, skipped))
    return 1 if not results or any(not r.ok for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
