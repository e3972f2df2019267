"""Compile, without a GPU, the device code whose numerics `stackforge.numerics` checks on a GPU:

* the CUDA C++ `atomicAdd(__half*)` fallback that our vLLM patch adds (csrc/cuda_atomic_compat.cuh: a
  CAS loop on the 32-bit word under `__CUDA_ARCH__ < 700`), compiled from the patched tree by NVRTC 12.9
  (PyPI `nvidia-cuda-nvrtc-cu12==12.9.86`, headers from `nvidia-cuda-runtime-cu12==12.9.79`) to
  compute_60 PTX (the fallback) and compute_70 (the native instruction);
* vLLM's `kernel_unified_attention_2d`, loaded from a vLLM source tree with
  `stackforge.vllm_kernels` and compiled by the installed Triton (3.5.1, what PyTorch 2.9.1 pins)
  for sm_61 and sm_70 at the launch parameters vLLM's launcher picks for each shape;
* a Triton `tl.atomic_add` fp32 kernel (default sem="acq_rel") for sm_61 and sm_70.

Each case is written as `<case>.ptx` + `<case>.json` (the launch record `stackforge.numerics`
documents). What cannot be compiled is reported, not hidden: an sm_61 Triton atomic fails ptxas on
stock Triton 3.5.1 ("Feature '.acq_rel' requires .target sm_70 or higher").
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.util
import io
import json
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stackforge.numerics import SCHEMA, attention_layout, contiguous_strides

# The kernel includes the fallback header our vLLM patch adds (csrc/cuda_atomic_compat.cuh), so what
# runs is the patch's own code: below sm_70 its CAS loop, from sm_70 the native instruction.
HALF_ATOMIC_SOURCE = r"""
#include <cuda_fp16.h>
#include "cuda_atomic_compat.cuh"

extern "C" __global__ void scatter_add_half(__half* out, const __half* vals, const int* idx, __half* olds, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) olds[i] = atomicAdd(out + idx[i], vals[i]);
}
"""
FALLBACK_HEADER = "csrc/cuda_atomic_compat.cuh"

HALF_ATOMIC_CASES = (
    # slots adjacent in memory share 32-bit words; idx = i % slots puts neighbours in the same warp
    {
        "name": "ones",
        "n": 16 * 2048,
        "slots": 16,
        "values": "ones",
        "label": "32768 adds of 1.0 into 16 slots",
    },
    {
        "name": "sixty-fourths",
        "n": 256 * 512,
        "slots": 256,
        "values": "sixty-fourths",
        "label": "131072 adds of j/64 into 256 slots",
    },
    {
        "name": "random",
        "n": 4096 * 8,
        "slots": 4096,
        "values": "random",
        "label": "32768 adds of N(0,1)/4 into 4096 slots",
    },
)

# (label, kernel path, seqs [[query_len, seq_len], ...], q heads, kv heads, head size, KV block size).
# "2d": prefill/mixed batches; "3d": decode-only batches smaller than vLLM's 3D threshold
# (128 // kv heads sequences), which run the 3D kernel and reduce_segments.
ATTENTION_SHAPES = (
    ("prefill q=64,100 heads 8/2 d=128 blk16", "2d", [[64, 64], [100, 100]], 8, 2, 128, 16),
    (
        "mixed q=1,1,40 kv=300,77,200 heads 32/8 d=64 blk16",
        "2d",
        [[1, 300], [1, 77], [40, 200]],
        32,
        8,
        64,
        16,
    ),
    ("prefill q=50 kv=130 heads 12/4 d=80 blk32", "2d", [[50, 130]], 12, 4, 80, 32),
    (
        "decode kv=17,64,200,513 heads 16/16 d=256 blk16",
        "2d",
        [[1, 17], [1, 64], [1, 200], [1, 513]],
        16,
        16,
        256,
        16,
    ),
    ("decode kv=33,300,1000 heads 32/8 d=128 blk16", "3d", [[1, 33], [1, 300], [1, 1000]], 32, 8, 128, 16),
    ("decode kv=5,700 heads 14/2 d=64 blk32", "3d", [[1, 5], [1, 700]], 14, 2, 64, 32),
)


@dataclass
class Built:
    """What happened to one case: compiled (with its record path) or not (why)."""

    case: str
    arch: int
    ok: bool
    detail: str


def _nvidia_file(*parts: str) -> Path | None:
    spec = importlib.util.find_spec("nvidia")
    for folder in spec.submodule_search_locations if spec else []:
        path = Path(folder).joinpath(*parts)
        if path.exists():
            return path
    return None


def nvrtc_compile(source: str, arch: int, name: str = "kernel.cu", includes: tuple[Path, ...] = ()) -> str:
    """CUDA C++ -> PTX for compute_<arch> with NVRTC 12.x from the PyPI wheels."""
    lib_path = _nvidia_file("cuda_nvrtc", "lib", "libnvrtc.so.12")
    include = _nvidia_file("cuda_runtime", "include")
    if lib_path is None or include is None:
        raise RuntimeError(
            "NVRTC 12.x not installed: pip install nvidia-cuda-nvrtc-cu12==12.9.86 nvidia-cuda-runtime-cu12"
        )
    lib = ctypes.CDLL(str(lib_path))
    prog = ctypes.c_void_p()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None):
        raise RuntimeError("nvrtcCreateProgram failed")
    opts = [f"--gpu-architecture=compute_{arch}".encode(), f"-I{include}".encode(), b"--std=c++17"]
    opts += [f"-I{folder}".encode() for folder in includes]
    result = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    if result:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
        raise RuntimeError(f"NVRTC compute_{arch}: {log.value.decode(errors='replace').strip()}")
    lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetPTX(prog, ptx)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return ptx.value.decode()


def nvrtc_version() -> str:
    lib_path = _nvidia_file("cuda_nvrtc", "lib", "libnvrtc.so.12")
    if lib_path is None:
        return "NVRTC (not installed)"
    major, minor = ctypes.c_int(), ctypes.c_int()
    ctypes.CDLL(str(lib_path)).nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    return f"NVRTC {major.value}.{minor.value}"


def _write(out: Path, case: str, record: dict, ptxs: list[str]) -> Path:
    """`<case>.json` plus one `<case>[.N].ptx` per launch (the record's launches name them)."""
    out.mkdir(parents=True, exist_ok=True)
    for i, (launch, ptx) in enumerate(zip(record["launches"], ptxs, strict=True)):
        launch["ptx"] = f"{case}.ptx" if len(ptxs) == 1 else f"{case}.{i}.ptx"
        (out / launch["ptx"]).write_text(ptx)
    path = out / f"{case}.json"
    path.write_text(json.dumps({"schema": SCHEMA, **record}, indent=1) + "\n")
    return path


def build_half_atomic(out: Path, vllm: Path, archs: tuple[int, ...] = (60, 70)) -> list[Built]:
    """(a): atomicAdd(__half*) from the vLLM tree's fallback header: its CAS loop for compute_60, the
    native instruction for compute_70. Without the patch, compute_60 does not compile (reported)."""
    built = []
    csrc = vllm / FALLBACK_HEADER
    for arch in archs:
        try:
            if not csrc.is_file():
                raise RuntimeError(f"{csrc} does not exist: use the patched vLLM tree")
            ptx = nvrtc_compile(HALF_ATOMIC_SOURCE, arch, "half_atomic.cu", includes=(csrc.parent,))
        except RuntimeError as exc:
            built += [
                Built(f"half_atomic_add-{c['name']}-sm{arch}", arch, False, str(exc))
                for c in HALF_ATOMIC_CASES
            ]
            continue
        for case in HALF_ATOMIC_CASES:
            name = f"half_atomic_add-{case['name']}-sm{arch}"
            record = {
                "check": "half_atomic_add",
                "kernel": "atomicAdd(__half*) " + ("CAS fallback (vLLM patch)" if arch < 70 else "native"),
                "label": case["label"],
                "arch": arch,
                "shape": {"n": case["n"], "slots": case["slots"], "values": case["values"], "seed": 5},
                "launches": [
                    {
                        "entry": "scatter_add_half",
                        "grid": [math.ceil(case["n"] / 256), 1, 1],
                        "block": [256, 1, 1],
                        "shared": 0,
                        "args": [
                            {"name": "out", "tensor": "out"},
                            {"name": "vals", "tensor": "vals"},
                            {"name": "idx", "tensor": "idx"},
                            {"name": "olds", "tensor": "olds"},
                            {"name": "n", "value": case["n"], "type": "i32"},
                        ],
                    }
                ],
                "tolerance": {"max_abs": 0.0, "l2_rel": 0.0},
                "compiled_with": nvrtc_version(),
            }
            _write(out, name, record, [ptx])
            built.append(Built(name, arch, True, "compiled"))
    return built


# --- Triton ----------------------------------------------------------------------------------------

_TRITON_DTYPES = {"float16": "*fp16", "float32": "*fp32", "int32": "*i32", "int64": "*i64"}


def triton_compile(
    fn: Any, arch: int, values: dict[str, Any], tensors: dict[str, str], num_warps: int = 4
) -> Any:
    """Compile JITFunction `fn` for sm_<arch>: `values` gives every parameter (tensor params name a
    dtype in `tensors`; None and constexprs are baked in), as a launcher call would."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, constexprs, attrs = {}, {}, {}
    for i, param in enumerate(fn.params):
        value = values.get(param.name, param.default)
        if param.is_constexpr or value is None:
            signature[param.name] = "constexpr"
            constexprs[param.name] = value
        elif param.name in tensors:
            signature[param.name] = _TRITON_DTYPES[tensors[param.name]]
            attrs[(i,)] = [["tt.divisibility", 16]]  # PyTorch allocations are 256-byte aligned
        elif isinstance(value, float):
            signature[param.name] = "fp32"
        else:
            annotation = str(param.annotation or "")
            signature[param.name] = "i64" if "64" in annotation else "i32"
            if isinstance(value, int) and value % 16 == 0 and value != 0:
                attrs[(i,)] = [["tt.divisibility", 16]]  # what Triton's launcher specializes too
    src = ASTSource(fn, signature=signature, constexprs=constexprs, attrs=attrs)
    with contextlib.redirect_stdout(io.StringIO()):  # Triton prints a whole PTX reproducer on a ptxas error
        return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})


def _triton_launch(kernel: Any, fn: Any, values: dict, tensors: dict, grid: list[int]) -> dict:
    """The launch entry of a compiled Triton kernel: runtime args in parameter order."""
    args = []
    for param in fn.params:
        value = values.get(param.name, param.default)
        if param.is_constexpr or value is None:
            continue
        if param.name in tensors:
            args.append({"name": param.name, "tensor": values[param.name]})
        else:
            kind = (
                "fp32"
                if isinstance(value, float)
                else ("i64" if "64" in str(param.annotation or "") else "i32")
            )
            args.append({"name": param.name, "value": value, "type": kind})
    md = kernel.metadata
    return {
        "entry": md.name,
        "grid": grid,
        "block": [md.num_warps * 32, 1, 1],
        "shared": md.shared,
        "global_scratch": {"size": getattr(md, "global_scratch_size", 0)},
        "profile_scratch": {"size": getattr(md, "profile_scratch_size", 0)},
        "args": args,
    }


def _triton_version() -> str:
    import triton

    return f"triton {triton.__version__}"


def _attention_common(shape: dict, st: dict, tile: int) -> dict:
    """Parameter values the 2D and 3D kernels share, as vLLM 0.14.0's `unified_attention` sets them
    (no sinks, ALiBi, qq-bias, softcap, sliding window, multimodal prefix or fp8)."""
    hq, hk, head = shape["num_q_heads"], shape["num_kv_heads"], shape["head_size"]
    qpkv = hq // hk
    block_m = 16 if qpkv <= 16 else 1 << (qpkv - 1).bit_length()
    return {
        "query_ptr": "q",
        "key_cache_ptr": "k_cache",
        "value_cache_ptr": "v_cache",
        "sink_ptr": None,
        "block_tables_ptr": "block_table",
        "seq_lens_ptr": "seq_lens",
        "alibi_slopes_ptr": None,
        "qq_bias_ptr": None,
        "scale": shape["scale"],
        "k_scale": "k_scale",
        "v_scale": "v_scale",
        "softcap": 0.0,
        "num_query_heads": hq,
        "num_queries_per_kv": qpkv,
        "block_table_stride": st["block_table"][0],
        "query_stride_0": st["q"][0],
        "query_stride_1": st["q"][1],
        "qq_bias_stride_0": 0,
        "BLOCK_SIZE": shape["block_size"],
        "TILE_SIZE": tile,
        "HEAD_SIZE": head,
        "HEAD_SIZE_PADDED": 1 << (head - 1).bit_length(),
        "USE_ALIBI_SLOPES": False,
        "USE_QQ_BIAS": False,
        "USE_SOFTCAP": False,
        "USE_SINKS": False,
        "SLIDING_WINDOW": 0,
        "USE_MM_PREFIX": False,
        "MAX_MM_RANGES": 0,
        "mm_prefix_range_ptr": None,
        **{f"stride_{c}_cache_{i}": st[f"{c}_cache"][i] for c in "kv" for i in range(4)},
        "query_start_len_ptr": "cu_seqlens_q",
        "BLOCK_Q": block_m // qpkv,
        "num_seqs": len(shape["seqs"]),
        "BLOCK_M": block_m,
    }


def attention_launches(shape: dict, path: str) -> list[tuple[str, dict, list[int]]]:
    """(kernel name, parameter values, grid) per launch vLLM makes for this batch: the 2D kernel for
    prefill/mixed batches; for decode-only batches below the 3D threshold the 3D kernel with 16 softmax
    segments, then reduce_segments. Tile sizes: 32 for prefill, 16 for fp16 decode."""
    layout = attention_layout(shape)
    st = {name: contiguous_strides(dims) for name, (dims, _) in layout.items()}
    tokens, hk, hq = layout["q"][0][0], shape["num_kv_heads"], shape["num_q_heads"]
    if path == "2d":
        values = _attention_common(shape, st, tile=32) | {
            "output_ptr": "out",
            "out_scale": 1.0,
            "output_stride_0": st["out"][0],
            "output_stride_1": st["out"][1],
            "USE_FP8": False,
        }
        return [
            ("kernel_unified_attention_2d", values, [tokens // values["BLOCK_Q"] + len(shape["seqs"]), hk, 1])
        ]
    segments = shape["segments"]
    values3 = _attention_common(shape, st, tile=16) | {
        "segm_output_ptr": "segm_output",
        "segm_max_ptr": "segm_max",
        "segm_expsum_ptr": "segm_expsum",
        "NUM_SEGMENTS_PER_SEQ": segments,
    }
    reduce = {
        "output_ptr": "out",
        "segm_output_ptr": "segm_output",
        "segm_max_ptr": "segm_max",
        "segm_expsum_ptr": "segm_expsum",
        "seq_lens_ptr": "seq_lens",
        "num_seqs": len(shape["seqs"]),
        "num_query_heads": hq,
        "out_scale_inv": 1.0,
        "output_stride_0": st["out"][0],
        "output_stride_1": st["out"][1],
        "block_table_stride": st["block_table"][0],
        "TILE_SIZE": 16,
        "HEAD_SIZE": shape["head_size"],
        "HEAD_SIZE_PADDED": values3["HEAD_SIZE_PADDED"],
        "query_start_len_ptr": "cu_seqlens_q",
        "BLOCK_Q": values3["BLOCK_Q"],
        "NUM_SEGMENTS_PER_SEQ": segments,
        "USE_FP8": False,
    }
    grid3 = [tokens // values3["BLOCK_Q"] + len(shape["seqs"]), hk, segments]
    return [("kernel_unified_attention_3d", values3, grid3), ("reduce_segments", reduce, [tokens, hq, 1])]


def build_unified_attention(out: Path, vllm_src: Path, archs: tuple[int, ...] = (61, 70)) -> list[Built]:
    """(b): vLLM's unified attention kernels from the source tree, per arch and shape."""
    from stackforge.vllm_kernels import KernelLoader

    built = []
    for arch in archs:
        loader = KernelLoader(vllm_src, arch)
        with loader.active():
            module = loader.load("vllm.v1.attention.ops.triton_unified_attention")
        for i, (label, path, seqs, hq, hk, head, block) in enumerate(ATTENTION_SHAPES):
            shape = {
                "seqs": seqs,
                "num_q_heads": hq,
                "num_kv_heads": hk,
                "head_size": head,
                "block_size": block,
                "seed": 11 + i,
                "scale": 1.0 / math.sqrt(head),
            }
            if path == "3d":
                shape["segments"] = 16  # NUM_PAR_SOFTMAX_SEGMENTS in vLLM's TRITON_ATTN backend
            layout = attention_layout(shape)
            name = f"unified_attention_{path}-{i}-sm{arch}"
            launches, ptxs, kernels = [], [], []
            try:
                for kernel_name, values, grid in attention_launches(shape, path):
                    fn = getattr(module, kernel_name)
                    tensors = {
                        k: layout[v][1] for k, v in values.items() if isinstance(v, str) and v in layout
                    }
                    kernel = triton_compile(fn, arch, values, tensors)
                    launches.append(_triton_launch(kernel, fn, values, tensors, grid))
                    ptxs.append(kernel.asm["ptx"])
                    kernels.append(kernel_name)
            except Exception as exc:  # ptxas or out-of-resources: report it
                built.append(Built(name, arch, False, f"{type(exc).__name__}: {_first_error(exc)}"))
                continue
            v = attention_launches(shape, path)[0][1]
            record = {
                "check": "unified_attention",
                "kernel": " + ".join(kernels),
                "label": f"{label} (BLOCK_M={v['BLOCK_M']}, TILE={v['TILE_SIZE']})",
                "arch": arch,
                "shape": shape,
                "launches": launches,
                "tolerance": {"max_abs": 1e-2, "l2_rel": 5e-3},
                "compiled_with": _triton_version(),
            }
            _write(out, name, record, ptxs)
            built.append(
                Built(name, arch, True, "shared " + ", ".join(f"{ln['shared']} B" for ln in launches))
            )
    return built


def _first_error(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    specific = [ln for ln in lines if "error   :" in ln or "OutOfResources" in ln or "Required:" in ln]
    return (specific or lines or ["(no message)"])[0][:300]


def _atomic_kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def scatter_add_f32(out_ptr, idx_ptr, val_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        slot = tl.load(idx_ptr + offs, mask=mask, other=0)
        val = tl.load(val_ptr + offs, mask=mask, other=0.0)
        tl.atomic_add(out_ptr + slot, val, mask=mask)  # default sem: acq_rel, scope: gpu

    return scatter_add_f32


def build_triton_atomic(out: Path, archs: tuple[int, ...] = (61, 70)) -> list[Built]:
    """(c): tl.atomic_add fp32 for sm_61 and sm_70 with the installed Triton."""
    fn = _atomic_kernel()
    n, slots, block = 1 << 20, 64, 256
    values = {"out_ptr": "out", "idx_ptr": "idx", "val_ptr": "vals", "n": n, "BLOCK": block}
    tensors = {"out_ptr": "float32", "idx_ptr": "int32", "val_ptr": "float32"}
    built = []
    for arch in archs:
        name = f"triton_atomic_add-sm{arch}"
        try:
            kernel = triton_compile(fn, arch, values, tensors)
        except Exception as exc:
            built.append(Built(name, arch, False, f"{type(exc).__name__}: {_first_error(exc)}"))
            continue
        record = {
            "check": "triton_atomic_add",
            "kernel": "tl.atomic_add fp32 (sem=acq_rel)",
            "label": f"{n} adds of j/64 into {slots} slots",
            "arch": arch,
            "shape": {"n": n, "slots": slots, "seed": 3},
            "launches": [_triton_launch(kernel, fn, values, tensors, [n // block, 1, 1])],
            "tolerance": {"max_abs": 0.0, "l2_rel": 0.0},
            "compiled_with": _triton_version(),
        }
        _write(out, name, record, [kernel.asm["ptx"]])
        built.append(Built(name, arch, True, "compiled"))
    return built


def vllm_tree(which: str, scratch: Path) -> Path:
    """The vLLM 0.14.0 source to compile: a path, "upstream" (the PyPI sdist, cached) or "patched"
    (the sdist with patches/vllm/*.patch applied in a git repository under `scratch`)."""
    from stackforge import upstream

    if which == "upstream":
        return upstream.vllm_sdist()
    if which == "patched":
        return upstream.patched_repo("vllm", scratch / "vllm")
    return Path(which)


def build_all(out: Path, vllm: Path) -> list[Built]:
    return build_half_atomic(out, vllm) + build_triton_atomic(out) + build_unified_attention(out, vllm)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stackforge.numerics_build", description=__doc__.splitlines()[0]
    )
    parser.add_argument("out", type=Path, help="folder for the PTX and launch records")
    parser.add_argument(
        "--vllm",
        default="patched",
        help="vLLM tree for the attention kernels: PATH, upstream or patched (default)",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="stackforge-numerics-") as scratch:
        built = build_all(args.out, vllm_tree(args.vllm, Path(scratch)))
    for b in built:
        print(f"{'ok  ' if b.ok else 'FAIL'} sm_{b.arch} {b.case}: {b.detail}")
    print(f"{sum(b.ok for b in built)} of {len(built)} cases compiled into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
