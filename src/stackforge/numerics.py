"""Numerics of Pascal/Volta device code on whatever NVIDIA GPU is at hand.

PTX compiled here for sm_60/61/70 (by Triton for the vLLM kernels, by NVRTC 12.9 for CUDA C++
fallbacks) runs on any newer GPU through the driver's JIT, so an H100 can check that the code a P40
will run computes the right numbers. `stackforge.numerics_build` writes, into a folder, one
`<case>.ptx` and one `<case>.json` launch record per kernel x shape x arch; `run_checks` loads each
PTX with the CUDA driver API (ctypes, libcuda.so.1), makes the inputs with PyTorch on the GPU,
launches, and compares with a PyTorch reference computed from the same inputs.

A launch record (schema "stackforge.numerics/1"):
    check       which inputs/reference to use: "half_atomic_add", "unified_attention",
                "triton_atomic_add"
    kernel      the kernel's name; label: the shape in words; arch: 60, 61 or 70 (the PTX target)
    shape       parameters for the check's input builder (sizes, seed)
    launches    kernels run in order, each:
        ptx, entry   the PTX file beside the record and its .entry name
        grid, block  launch geometry; shared: dynamic shared memory in bytes
        global_scratch, profile_scratch  {"size"}: bytes per program for the two scratch pointers
                     Triton >= 3.3 appends to every kernel (0: a null pointer)
        args         runtime parameters in order: {"name", "tensor": NAME} or {"name", "value", "type"}
    tolerance   {"max_abs": ..., "l2_rel": ...}: a case fails past either
    compiled_with  what produced the PTX

Only the standard library is imported at module level: building the records needs no torch, and
running them imports torch lazily.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any

SCHEMA = "stackforge.numerics/1"
FP16_EPS = 2.0**-11  # unit roundoff of float16


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


# --- layouts shared by the build side (no torch) and the run side ------------------------------------


def attention_layout(shape: dict) -> dict[str, tuple[tuple[int, ...], str]]:
    """Tensors of one unified-attention launch, as vLLM's TRITON_ATTN backend lays them out:
    q/out [tokens, q_heads, head], k/v cache [blocks, block_size, kv_heads, head]."""
    seqs = shape["seqs"]  # [[query_len, seq_len], ...]: seq_len counts the context and the new tokens
    tokens = sum(q for q, _ in seqs)
    blocks_per_seq = max(math.ceil(s / shape["block_size"]) for _, s in seqs)
    num_blocks = blocks_per_seq * len(seqs) + 3  # a few unused blocks, so wrong indexing reads garbage
    head, hq, hk, bs = shape["head_size"], shape["num_q_heads"], shape["num_kv_heads"], shape["block_size"]
    return {
        "out": ((tokens, hq, head), "float16"),
        "q": ((tokens, hq, head), "float16"),
        "k_cache": ((num_blocks, bs, hk, head), "float16"),
        "v_cache": ((num_blocks, bs, hk, head), "float16"),
        "block_table": ((len(seqs), blocks_per_seq), "int32"),
        "seq_lens": ((len(seqs),), "int32"),
        "cu_seqlens_q": ((len(seqs) + 1,), "int32"),
        "k_scale": ((1,), "float32"),
        "v_scale": ((1,), "float32"),
    } | _segment_layout(shape, tokens)


def _segment_layout(shape: dict, tokens: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """The 3D (decode) kernel's per-segment partial results, as the TRITON_ATTN backend allocates them."""
    segments = shape.get("segments")
    if not segments:
        return {}
    hq, padded = shape["num_q_heads"], 1 << (shape["head_size"] - 1).bit_length()
    return {
        "segm_output": ((tokens, hq, segments, padded), "float32"),
        "segm_max": ((tokens, hq, segments), "float32"),
        "segm_expsum": ((tokens, hq, segments), "float32"),
    }


def contiguous_strides(dims: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for dim in reversed(dims):
        strides.append(step)
        step *= dim
    return tuple(reversed(strides))


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


_CTYPE = {
    "u64": ctypes.c_uint64,
    "b64": ctypes.c_uint64,
    "s64": ctypes.c_int64,
    "u32": ctypes.c_uint32,
    "b32": ctypes.c_uint32,
    "s32": ctypes.c_int32,
    "f32": ctypes.c_float,
    "f64": ctypes.c_double,
}


def _scalar(value: Any, ptx_type: str, kind: str) -> ctypes._SimpleCData:
    if kind.startswith("fp") or ptx_type.startswith("f"):
        return _CTYPE.get(ptx_type, ctypes.c_float)(float(value))
    if ptx_type in ("u32", "b32", "s32"):
        return ctypes.c_int32(int(value))
    return ctypes.c_int64(int(value))


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
            params.append(_scalar(arg["value"], ptx_type, arg.get("type", "")))
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


def _errors(out: Any, ref: Any) -> tuple[float, float, float]:
    err = (out.double() - ref.double()).abs()
    if not bool(err.isfinite().all()) or not bool(out.isfinite().all()):
        return math.inf, math.inf, math.inf
    ref_max = float(ref.double().abs().max()) or 1.0
    l2 = float(ref.double().norm()) or 1.0
    return float(err.max()), float(err.max()) / ref_max, float((out.double() - ref.double()).norm()) / l2


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
    """tl.atomic_add fp32 (default sem acq_rel) from every program into few slots; values j/64 keep
    every partial sum exact in fp32, so the result must equal the float64 sum exactly."""
    shape = record["shape"]
    n, slots = shape["n"], shape["slots"]
    gen = torch.Generator(device="cuda").manual_seed(shape["seed"])
    idx = torch.randint(0, slots, (n,), device="cuda", generator=gen, dtype=torch.int32)
    vals = torch.randint(1, 5, (n,), device="cuda", generator=gen).to(torch.float32) / 64
    out = torch.zeros(slots, device="cuda", dtype=torch.float32)
    run({"out": out, "idx": idx, "vals": vals})
    ref = torch.zeros(slots, dtype=torch.float64, device="cuda").index_add_(0, idx.long(), vals.double())
    return out, ref, ""


def check_unified_attention(record: dict, run: Callable[[dict], None], torch: Any) -> tuple[Any, Any, str]:
    """vLLM's unified attention (the 2D kernel, or for decode the 3D kernel + reduce_segments) over a
    paged KV cache with a random block table, against torch SDPA in float64 on the same fp16 inputs,
    causal with each sequence's context offset."""
    shape = record["shape"]
    layout = attention_layout(shape)
    gen = torch.Generator(device="cuda").manual_seed(shape["seed"])
    t: dict[str, Any] = {}
    for name, (dims, dtype) in layout.items():
        if dtype == "float16":
            t[name] = torch.randn(dims, device="cuda", generator=gen).half()
    t["out"].fill_(float("nan"))  # poisoned: every element must be written
    seqs = shape["seqs"]
    blocks_total, per_seq = layout["k_cache"][0][0], layout["block_table"][0][1]
    perm = torch.randperm(blocks_total, device="cuda", generator=gen)[: len(seqs) * per_seq]
    t["block_table"] = perm.view(len(seqs), per_seq).to(torch.int32).contiguous()
    t["seq_lens"] = torch.tensor([s for _, s in seqs], device="cuda", dtype=torch.int32)
    t["cu_seqlens_q"] = torch.tensor([0, *accumulate(q for q, _ in seqs)], device="cuda", dtype=torch.int32)
    t["k_scale"] = torch.ones(1, device="cuda", dtype=torch.float32)
    t["v_scale"] = torch.ones(1, device="cuda", dtype=torch.float32)
    for name in ("segm_output", "segm_max", "segm_expsum"):
        if name in layout:
            t[name] = torch.full(layout[name][0], float("nan"), device="cuda", dtype=torch.float32)
    run(t)
    hq, hk, scale = shape["num_q_heads"], shape["num_kv_heads"], shape["scale"]
    refs = []
    start = 0
    for s, (qlen, slen) in enumerate(seqs):
        blocks = t["block_table"][s].long()
        k = t["k_cache"][blocks].reshape(-1, hk, shape["head_size"])[:slen].double()
        v = t["v_cache"][blocks].reshape(-1, hk, shape["head_size"])[:slen].double()
        q = t["q"][start : start + qlen].double()
        k = k.repeat_interleave(hq // hk, dim=1)
        v = v.repeat_interleave(hq // hk, dim=1)
        qpos = torch.arange(slen - qlen, slen, device="cuda")[:, None]
        mask = torch.arange(slen, device="cuda")[None, :] <= qpos  # causal, offset by the context
        o = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask, scale=scale
        )
        refs.append(o.transpose(0, 1))
        start += qlen
    return t["out"], torch.cat(refs), ""


CHECKS: dict[str, Callable[[dict, Callable[[dict], None], Any], tuple[Any, Any, str]]] = {
    "half_atomic_add": check_half_atomic_add,
    "triton_atomic_add": check_triton_atomic_add,
    "unified_attention": check_unified_attention,
}


def load_records(saved_dir: Path, archs: tuple[int, ...] | None = None) -> list[tuple[Path, dict]]:
    records = []
    for path in sorted(Path(saved_dir).rglob("*.json")):
        data = json.loads(path.read_text())
        if data.get("schema") != SCHEMA:
            continue
        if archs is None or data["arch"] in archs:
            records.append((path, data))
    return records


def gpu_present() -> str | None:
    """None when a CUDA GPU can run the checks, else why not."""
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to PyTorch"
    return None


def run_checks(saved_dir: Path, env: Any = None) -> list[Result]:
    """Run every launch record under `saved_dir` whose arch belongs to `env` (a GpuEnv, anything with
    `.archs`, or None for all) on the current GPU."""
    import torch

    archs = tuple(env.archs) if env is not None else None
    torch.cuda.init()
    torch.empty(1, device="cuda")  # makes the primary context current for the driver calls
    driver = Driver()
    results = []
    for path, record in load_records(saved_dir, archs):
        check = CHECKS[record["check"]]

        def run(tensors: dict, record: dict = record, folder: Path = path.parent) -> None:
            launch_record(driver, record, folder, tensors, torch)

        try:
            out, ref, note = check(record, run, torch)
            max_abs, max_rel, l2_rel = _errors(out, ref)
            tol = record["tolerance"]
            ok = max_abs <= tol["max_abs"] and l2_rel <= tol["l2_rel"]
        except Exception as exc:  # a JIT or launch failure is a result, not a crash of the whole run
            max_abs = max_rel = l2_rel = math.inf
            tol, ok, note = record.get("tolerance", {}), False, f"{type(exc).__name__}: {exc}"[:300]
        results.append(
            Result(record["kernel"], record["label"], record["arch"], max_abs, max_rel, l2_rel, tol, ok, note)
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
        tol = (
            f"{r.tolerance.get('max_abs', float('nan')):.3g} / {r.tolerance.get('l2_rel', float('nan')):.3g}"
        )
        verdict = "pass" if r.ok else "FAIL"
        if r.note:
            verdict += f" ({r.note})"
        lines.append(
            f"| {r.kernel} | {r.shape} | sm_{r.arch} | {r.max_abs:.3g} | {r.max_rel:.3g} | {r.l2_rel:.3g} | {tol} | {verdict} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stackforge.numerics", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "saved_dir", type=Path, help="folder of launch records and PTX (stackforge.numerics_build)"
    )
    parser.add_argument("--archs", default=None, help="comma-separated PTX targets to run (default: all)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    why = gpu_present()
    if why:
        print(f"numerics: skipped: {why}")
        return 0
    import torch

    archs = None
    if args.archs:
        archs = type("Archs", (), {"archs": tuple(int(a) for a in args.archs.split(","))})()
    results = run_checks(args.saved_dir, archs)
    device = f"{torch.cuda.get_device_name()} (compute capability {'.'.join(map(str, torch.cuda.get_device_capability()))})"
    print(table(results, device))
    if args.json:
        args.json.write_text(
            json.dumps({"device": device, "results": [asdict(r) for r in results]}, indent=2)
        )
    failed = [r for r in results if not r.ok]
    print(f"{len(results) - len(failed)} of {len(results)} passed")
    return 1 if failed or not results else 0


if __name__ == "__main__":
    sys.exit(main())
