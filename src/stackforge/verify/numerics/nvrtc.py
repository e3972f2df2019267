"""CUDA C++ device code for the numerics suite, compiled by NVRTC 12.x from the PyPI wheels (no toolkit).

The kernel is vLLM's `atomicAdd(__half*)` fallback (csrc/cuda_atomic_compat.cuh, added by our vLLM
patch): compute_60/61 get its CAS loop, compute_70 the native instruction.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import math
from pathlib import Path

from stackforge.verify.numerics.records import TOLERANCES, Built, write_record

ARCHS = (60, 61, 70)

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


def build_half_atomic(out: Path, vllm: Path, archs: tuple[int, ...] = ARCHS) -> list[Built]:
    """atomicAdd(__half*) from the vLLM tree's fallback header: its CAS loop below compute_70, the
    native instruction for compute_70. Without the patch, compute_6x does not compile (reported)."""
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
                "tolerance": TOLERANCES["half_atomic_add"],
                "compiled_with": nvrtc_version(),
            }
            write_record(out, name, record, [ptx])
            built.append(Built(name, arch, True, "compiled"))
    return built
