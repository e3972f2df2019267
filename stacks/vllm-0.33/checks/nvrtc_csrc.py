"""NVRTC 12.9 -> PTX, then ptxas 12.9 -> SASS, for csrc pieces of vLLM 0.33.0 (no nvcc needed).

    PYTHONPATH=<dir with nvidia-cuda-nvcc-cu12==12.9.86> python nvrtc_csrc.py <vllm 0.33.0 tree> <patched tree>

Needs nvidia-cuda-nvrtc-cu12==12.9.86 and nvidia-cuda-runtime-cu12 (the test extra)."""
import ctypes, importlib.util, os, re, subprocess, sys, tempfile
from pathlib import Path
def pkg(m): return Path(next(iter(importlib.util.find_spec(m).submodule_search_locations)))
NVRTC = sorted((pkg("nvidia.cuda_nvrtc")/"lib").glob("libnvrtc.so.12*"))[0]
INC = pkg("nvidia.cuda_runtime")/"include"
# ptxas 12.9: $PTXAS, else the nvidia-cuda-nvcc-cu12==12.9.86 wheel (pip install --target DIR; put DIR on
# PYTHONPATH). Triton 3.5.1's bundled ptxas 12.8 refuses NVRTC 12.9's ".version 8.8" PTX.
PTXAS = Path(os.environ.get("PTXAS") or pkg("nvidia.cuda_nvcc") / "bin/ptxas")
lib = ctypes.CDLL(str(NVRTC))
def nvrtc(src, arch, incs=()):
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), b"k.cu", 0, None, None) == 0
    opts = [f"--gpu-architecture=compute_{arch}", f"-I{INC}", "-std=c++17", *(f"-I{d}" for d in incs)]
    argv = (ctypes.c_char_p*len(opts))(*(o.encode() for o in opts))
    ok = lib.nvrtcCompileProgram(prog, len(opts), argv) == 0
    n = ctypes.c_size_t(); lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n)); log = ctypes.create_string_buffer(n.value); lib.nvrtcGetProgramLog(prog, log)
    ptx = ""
    if ok:
        lib.nvrtcGetPTXSize(prog, ctypes.byref(n)); b = ctypes.create_string_buffer(n.value); lib.nvrtcGetPTX(prog, b); ptx = b.value.decode()
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return ok, log.value.decode(errors="replace"), ptx
def ptxas(ptx, arch):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d)/"k.ptx"; p.write_text(ptx)
        r = subprocess.run([str(PTXAS), f"-arch=sm_{arch}", str(p), "-o", str(Path(d)/"k.cubin")], capture_output=True, text=True)
        return r.returncode == 0, (r.stdout+r.stderr).strip()
def build(src, arch, incs=()):
    ok, log, ptx = nvrtc(src, arch, incs)
    if not ok:
        first = next((l for l in log.splitlines() if "error" in l), log[:200])
        return "nvrtc FAIL: " + first.split("error:",1)[-1].strip(), ptx
    ok2, log2 = ptxas(ptx, arch)
    if not ok2:
        first = next((l for l in log2.splitlines() if "error" in l), log2[:200])
        return "ptxas FAIL: " + first.split("error   :",1)[-1].strip(), ptx
    return "ok", ptx

PRELUDE = """
typedef signed char int8_t; typedef unsigned char uint8_t; typedef unsigned short uint16_t;
typedef int int32_t; typedef unsigned int uint32_t; typedef long long int64_t; typedef unsigned long long uint64_t;
typedef unsigned long long uintptr_t;
namespace std {
template <class A, class B> struct is_same { static constexpr bool value = false; };
template <class A> struct is_same<A, A> { static constexpr bool value = true; };
}
"""
ARGS = ("const T*, T*, const uint32_t*, const T*, const uint32_t*, const float*, const int32_t*, const int32_t*, "
        "const int32_t*, uint16_t, uint16_t, uint16_t, uint32_t, uint32_t, uint32_t, uint16_t, uint16_t, uint16_t, bool, bool")
def moe_wna16(tree):
    s = (tree/"csrc/moe/moe_wna16.cu").read_text()
    start = s.index("#define DIVIDE"); end = s.index("template <typename scalar_t>\nvoid run_moe_wna16_gemm")
    incs = "".join(l+"\n" for l in s[:start].splitlines() if l.startswith('#include "') and "torch_utils" not in l)
    t = PRELUDE + "#include <cuda_fp16.h>\n#include <cuda_bf16.h>\n" + incs + s[start:end]
    for sc, b, g in (("half",4,1),("nv_bfloat16",8,2)):
        t += f"template __global__ void moe_wna16_gemm_kernel<{sc}, {b}, {g}>({ARGS.replace('T', sc)});\n"
    return t
GPTQ = """
#include <cuda_fp16.h>
#include "compat.cuh"
namespace vllm { namespace gptq {
__global__ void add(half* a, half2* b, half x, half2 y) { atomicAdd(a, x); atomicAdd(b, y); }
} }
"""
def dcp(tree):
    """The device helpers of csrc/attention/dcp_utils/dcp_direct_common.cuh (without its host
    includes), used by a kernel that waits for an epoch and publishes one."""
    s = (tree/"csrc/attention/dcp_utils/dcp_direct_common.cuh").read_text()
    s = s[: s.index("inline void check_cuda_launch")] + "}  // namespace vllm::direct_dcp\n"  # host code out
    body = "\n".join(l for l in s.splitlines() if not l.startswith("#include") and not l.startswith("#pragma once"))
    return (PRELUDE + body +
            "\nextern \"C\" __global__ void k(uint32_t* f, uint32_t e) {\n"
            "  if (vllm::direct_dcp::wait_for_epoch(f, e)) vllm::direct_dcp::store_release_system(f + 1, e);\n}\n")
if __name__ == "__main__":
    for label, tree in (("0.33.0", Path(sys.argv[1])), ("patched", Path(sys.argv[2]))):
        for arch in (60, 61, 70, 80):
            r1, _ = build(moe_wna16(tree), arch, (tree/"csrc/moe",))
            r2, _ = build(GPTQ, arch, (tree/"csrc/quantization/gptq",))
            r3, _ = build(dcp(tree), arch)
            print(f"{label} sm_{arch}: moe_wna16 {r1} | gptq compat {r2} | dcp_direct_common {r3}")
