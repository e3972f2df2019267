"""vLLM's atomicAdd(__half*) fallback for sm_6x, compiled with NVRTC 12.9 (marker `upstream`:
the sources come from the cached vLLM 0.14.0 sdist, patched by patches/vllm).

No nvcc here can target compute capability 6.x/7.0 (CUDA 13 dropped them), so device code is
compiled to PTX with NVRTC 12.9 from the `nvidia-cuda-nvrtc-cu12==12.9.86` wheel and the CUDA
12.9 headers of `nvidia-cuda-runtime-cu12==12.9.79` (both in the `test` extra). The kernel of
csrc/moe/moe_wna16.cu is compiled as it stands in the file; only its torch host code is left
out, and the few std/stdint names torch's headers would bring are declared in a prelude. With
an NVIDIA GPU and driver (marker `gpu`) the compute_60 PTX also runs through the driver's JIT.
"""

from __future__ import annotations

import ctypes
import importlib.util
import re
import struct
from pathlib import Path

import pytest
from conftest import online

from stackforge.verify.upstream import repos

pytestmark = pytest.mark.upstream

ROOT = Path(__file__).resolve().parents[1]
NO_ATOMIC_HALF = 'no instance of overloaded function "atomicAdd" matches the argument list'


def _package_dir(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


class Nvrtc:
    """libnvrtc through ctypes: source -> (ok, log, PTX) for one compute capability."""

    def __init__(self, library: Path, include: Path) -> None:
        self.lib = ctypes.CDLL(str(library))
        self.include = include
        major, minor = ctypes.c_int(), ctypes.c_int()
        self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
        self.version = (major.value, minor.value)

    def compile(self, source: str, arch: int, include_dirs: tuple[Path, ...] = ()) -> tuple[bool, str, str]:
        lib, prog = self.lib, ctypes.c_void_p()
        assert lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"kernel.cu", 0, None, None) == 0
        try:
            options = [
                f"--gpu-architecture=compute_{arch}",
                f"-I{self.include}",
                *(f"-I{d}" for d in include_dirs),
            ]
            argv = (ctypes.c_char_p * len(options))(*(o.encode() for o in options))
            ok = lib.nvrtcCompileProgram(prog, len(options), argv) == 0
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetProgramLog(prog, log)
            ptx = b""
            if ok:
                lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
                buf = ctypes.create_string_buffer(size.value)
                lib.nvrtcGetPTX(prog, buf)
                ptx = buf.value
            return ok, log.value.decode(errors="replace"), ptx.decode()
        finally:
            lib.nvrtcDestroyProgram(ctypes.byref(prog))


@pytest.fixture(scope="module")
def nvrtc() -> Nvrtc:
    nvrtc_dir, runtime_dir = _package_dir("nvidia.cuda_nvrtc"), _package_dir("nvidia.cuda_runtime")
    libs = sorted((nvrtc_dir / "lib").glob("libnvrtc.so.12*")) if nvrtc_dir else []
    if not libs or runtime_dir is None or not (runtime_dir / "include/cuda_fp16.h").is_file():
        pytest.skip(
            "NVRTC 12.9 or the CUDA 12.9 headers are not installed: "
            "pip install nvidia-cuda-nvrtc-cu12==12.9.86 nvidia-cuda-runtime-cu12==12.9.79 (the test extra)"
        )
    compiler = Nvrtc(libs[0], runtime_dir / "include")
    assert compiler.version[0] == 12, f"NVRTC {compiler.version} cannot be used: compute_60 needs CUDA 12.x"
    return compiler


@pytest.fixture(scope="module")
def vllm_trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The vLLM 0.14.0 sdist as released and with patches/vllm applied."""
    patches = sorted((ROOT / "patches/vllm").glob("*.patch"))
    plain = online(lambda: repos.upstream_repo("vllm", tmp_path_factory.mktemp("vllm-upstream")))
    patched = repos.upstream_repo("vllm", tmp_path_factory.mktemp("vllm-patched"))
    repos.apply_series(patched, patches)
    return {"upstream": plain, "patched": patched}


# What torch/all.h and <type_traits> would declare for the kernel part of moe_wna16.cu.
PRELUDE = """
typedef signed char int8_t; typedef unsigned char uint8_t; typedef unsigned short uint16_t;
typedef int int32_t; typedef unsigned int uint32_t; typedef long long int64_t; typedef unsigned long long uint64_t;
namespace std {
template <class A, class B> struct is_same { static constexpr bool value = false; };
template <class A> struct is_same<A, A> { static constexpr bool value = true; };
}
"""
KERNEL_ARGS = (
    "const T*, T*, const uint32_t*, const T*, const uint32_t*, const float*, const int32_t*, const int32_t*, "
    "const int32_t*, uint16_t, uint16_t, uint16_t, uint32_t, uint32_t, uint32_t, uint16_t, uint16_t, uint16_t, "
    "bool, bool"
)


def moe_wna16_kernel(tree: Path) -> str:
    """The device part of csrc/moe/moe_wna16.cu (its own #include "..." lines, the kernel
    template) with the half and bf16 instantiations the host code launches."""
    source = (tree / "csrc/moe/moe_wna16.cu").read_text()
    start = source.index("#define DIVIDE")
    end = source.index("template <typename scalar_t>\nvoid run_moe_wna16_gemm")
    includes = "".join(f"{line}\n" for line in source[:start].splitlines() if line.startswith('#include "'))
    text = PRELUDE + includes + source[start:end]
    for scalar, bits, groups in (("half", 4, 1), ("nv_bfloat16", 8, 2)):
        args = KERNEL_ARGS.replace("T", scalar)
        text += f"template __global__ void moe_wna16_gemm_kernel<{scalar}, {bits}, {groups}>({args});\n"
    return text


@pytest.mark.parametrize("arch", [60, 61])
def test_unpatched_moe_wna16_does_not_compile_for_pascal(
    arch: int, nvrtc: Nvrtc, vllm_trees: dict[str, Path]
) -> None:
    tree = vllm_trees["upstream"]
    ok, log, _ = nvrtc.compile(moe_wna16_kernel(tree), arch, (tree / "csrc/moe",))
    assert not ok and NO_ATOMIC_HALF in log, log


def test_unpatched_moe_wna16_compiles_for_volta(nvrtc: Nvrtc, vllm_trees: dict[str, Path]) -> None:
    tree = vllm_trees["upstream"]
    ok, log, _ = nvrtc.compile(moe_wna16_kernel(tree), 70, (tree / "csrc/moe",))
    assert ok, log


@pytest.mark.parametrize("arch", [60, 61, 70, 80])
def test_patched_moe_wna16_compiles(arch: int, nvrtc: Nvrtc, vllm_trees: dict[str, Path]) -> None:
    tree = vllm_trees["patched"]
    ok, log, ptx = nvrtc.compile(moe_wna16_kernel(tree), arch, (tree / "csrc/moe",))
    assert ok, log
    assert ".entry" in ptx and "moe_wna16_gemm_kernel" in ptx


GPTQ_KERNEL = """
#include <cuda_fp16.h>
#include "compat.cuh"
namespace vllm {
namespace gptq {
// As in q_gemm.cu: unqualified calls inside the namespace that declares the old fallback.
__global__ void add(half* a, half2* b, half x, half2 y) { atomicAdd(a, x); atomicAdd(b, y); }
}  // namespace gptq
}  // namespace vllm
"""


@pytest.mark.parametrize("arch", [60, 61, 70, 80])
def test_patched_gptq_compat_compiles(arch: int, nvrtc: Nvrtc, vllm_trees: dict[str, Path]) -> None:
    tree = vllm_trees["patched"]
    ok, log, _ = nvrtc.compile(GPTQ_KERNEL, arch, (tree / "csrc/quantization/gptq",))
    assert ok, log


ADD_ONES = """
#include <cuda_fp16.h>
#include "cuda_atomic_compat.cuh"
// Thread i adds 1.0 to slot i % 4 (slots 0,1 and 2,3 share a 32-bit word) and records the
// value it replaced.
extern "C" __global__ void add_ones(__half* out, float* old, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) old[i] = __half2float(atomicAdd(&out[i % 4], __float2half(1.0f)));
}
"""


def add_ones_ptx(nvrtc: Nvrtc, tree: Path, arch: int) -> str:
    ok, log, ptx = nvrtc.compile(ADD_ONES, arch, (tree / "csrc",))
    assert ok, log
    return ptx


def test_fallback_is_a_cas_loop_only_below_sm70(nvrtc: Nvrtc, vllm_trees: dict[str, Path]) -> None:
    tree = vllm_trees["patched"]
    for arch in (60, 61):
        ptx = add_ones_ptx(nvrtc, tree, arch)
        assert re.search(r"atom(\.global)?\.cas\.b32", ptx), ptx
        assert not re.search(r"atom(\.global)?\.add\.noftz\.f16", ptx)
    native = add_ones_ptx(nvrtc, tree, 70)
    assert re.search(r"atom(\.global)?\.add\.noftz\.f16", native) and ".cas" not in native


def _cuda_driver() -> ctypes.CDLL:
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        pytest.skip("no NVIDIA driver (libcuda.so.1) on this machine")
    count = ctypes.c_int()
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        pytest.skip("no usable NVIDIA GPU")
    return cuda


def _check(cuda: ctypes.CDLL, result: int, what: str) -> None:
    if result != 0:
        name = ctypes.c_char_p()
        cuda.cuGetErrorString(result, ctypes.byref(name))
        raise AssertionError(f"{what}: CUDA error {result} {name.value!r}")


@pytest.mark.gpu
@pytest.mark.parametrize("arch", [60, 61, 70])
def test_fallback_sums_exactly_on_a_gpu(arch: int, nvrtc: Nvrtc, vllm_trees: dict[str, Path]) -> None:
    """The PTX runs through the driver JIT on whatever GPU is present (PTX for compute_60 runs on
    any newer GPU): 8192 threads, 2048 per half, so every fp16 sum is exact."""
    ptx = add_ones_ptx(nvrtc, vllm_trees["patched"], arch).encode() + b"\0"
    cuda = _cuda_driver()
    device, context, module, kernel = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p()
    _check(cuda, cuda.cuDeviceGet(ctypes.byref(device), 0), "cuDeviceGet")
    _check(cuda, cuda.cuDevicePrimaryCtxRetain(ctypes.byref(context), device), "context")
    _check(cuda, cuda.cuCtxSetCurrent(context), "cuCtxSetCurrent")
    _check(cuda, cuda.cuModuleLoadData(ctypes.byref(module), ptx), "cuModuleLoadData (driver JIT)")
    _check(cuda, cuda.cuModuleGetFunction(ctypes.byref(kernel), module, b"add_ones"), "cuModuleGetFunction")
    n = 4 * 2048
    out, old = ctypes.c_uint64(), ctypes.c_uint64()
    _check(cuda, cuda.cuMemAlloc_v2(ctypes.byref(out), 8), "cuMemAlloc")
    _check(cuda, cuda.cuMemAlloc_v2(ctypes.byref(old), 4 * n), "cuMemAlloc")
    try:
        _check(cuda, cuda.cuMemsetD8_v2(out, 0, 8), "cuMemset")
        count = ctypes.c_int(n)
        params = (ctypes.c_void_p * 3)(
            *(ctypes.cast(ctypes.byref(v), ctypes.c_void_p) for v in (out, old, count))
        )
        _check(cuda, cuda.cuLaunchKernel(kernel, n // 256, 1, 1, 256, 1, 1, 0, None, params, None), "launch")
        _check(cuda, cuda.cuCtxSynchronize(), "cuCtxSynchronize")
        halves, replaced = (ctypes.c_uint16 * 4)(), (ctypes.c_float * n)()
        _check(cuda, cuda.cuMemcpyDtoH_v2(halves, out, 8), "copy")
        _check(cuda, cuda.cuMemcpyDtoH_v2(replaced, old, 4 * n), "copy")
    finally:
        cuda.cuMemFree_v2(out)
        cuda.cuMemFree_v2(old)
        cuda.cuModuleUnload(module)
    sums = [struct.unpack("<e", struct.pack("<H", h))[0] for h in halves]
    assert sums == [2048.0] * 4
    for slot in range(4):  # each half handed out 0, 1, ..., 2047 once: no lost or torn update
        assert sorted(replaced[slot::4]) == [float(i) for i in range(2048)]
