"""The result-less fp16 reductions Triton 3.9 emits (`red.global...add.noftz.f16` / `.f16x2`),
lowered for sm_60/61 by the rebased Triton patch 0003, assembled with ptxas and, with a GPU,
run through the driver JIT.

    PYTHONPATH=<triton 3.8 with the series applied> python red_f16.py [--run] [--out DIR]
    python red_f16.py --load DIR      # on a GPU machine: run the saved sm_60/61 PTX (no triton needed)

Without a GPU it lowers and assembles only. (`red` takes no .acquire/.acq_rel: PTX allows
.relaxed and .release on it.) The PTX is hand-written in the shape Triton 3.9 gives
(predicated red, `[ %rd + 0 ]` addresses), one kernel per form: thread i adds 1.0 to slot i % 4
(f16: four halves in two 32-bit words) or to both halves of word i % 2 (f16x2); 8192 resp. 4096
threads, so every exact sum is 2048.
"""

from __future__ import annotations

import argparse
import ctypes
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

HEAD = ".version 8.8\n.target sm_{arch}\n.address_size 64\n"
F16 = """
.visible .entry red_f16(.param .u64 p, .param .u32 n)
{{
	.reg .pred %p<2>;
	.reg .b16 %rs<2>;
	.reg .b32 %r<8>;
	.reg .b64 %rd<4>;
	ld.param.u64 %rd1, [p];
	ld.param.u32 %r1, [n];
	mov.u32 %r2, %tid.x;
	mov.u32 %r3, %ctaid.x;
	mov.u32 %r4, %ntid.x;
	mad.lo.s32 %r5, %r3, %r4, %r2;
	setp.lt.u32 %p1, %r5, %r1;
	and.b32 %r6, %r5, 3;
	mul.wide.u32 %rd2, %r6, 2;
	add.s64 %rd3, %rd1, %rd2;
	mov.b16 %rs1, 0x3C00;
	@%p1 red.global.gpu{sem}.add.noftz.f16 [ %rd3 + 0 ], %rs1;
	ret;
}}
"""
F16X2 = """
.visible .entry red_f16x2(.param .u64 p, .param .u32 n)
{{
	.reg .pred %p<2>;
	.reg .b32 %r<8>;
	.reg .b64 %rd<4>;
	ld.param.u64 %rd1, [p];
	ld.param.u32 %r1, [n];
	mov.u32 %r2, %tid.x;
	mov.u32 %r3, %ctaid.x;
	mov.u32 %r4, %ntid.x;
	mad.lo.s32 %r5, %r3, %r4, %r2;
	setp.lt.u32 %p1, %r5, %r1;
	and.b32 %r6, %r5, 1;
	mul.wide.u32 %rd2, %r6, 4;
	add.s64 %rd3, %rd1, %rd2;
	mov.b32 %r7, 0x3C003C00;
	@%p1 red.global.gpu{sem}.add.noftz.f16x2 [ %rd3 + 0 ], %r7;
	ret;
}}
"""
KERNELS = {"red_f16": (F16, 8192), "red_f16x2": (F16X2, 4096)}


def ptx(kernel: str, arch: int, sem: str) -> str:
    from triton.backends.nvidia import compiler

    text = HEAD.format(arch=arch) + KERNELS[kernel][0].format(sem=sem)
    return compiler.lower_atomics_pre_sm70(text) if arch < 70 else text


def ptxas(text: str, arch: int) -> tuple[bool, str]:
    from triton.backends.nvidia import compiler

    bin_dir = Path(compiler.__file__).parent / "bin" / "ptxas"
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "k.ptx"
        src.write_text(text)
        done = subprocess.run([str(bin_dir), f"--gpu-name=sm_{arch}", str(src), "-o", str(Path(d) / "k.o")],
                              capture_output=True, text=True)
        return done.returncode == 0, (done.stdout + done.stderr).strip()


def run_on_gpu(text: str, kernel: str) -> list[float]:
    cuda = ctypes.CDLL("libcuda.so.1")
    def ok(r: int, what: str) -> None:
        if r != 0:
            raise RuntimeError(f"{what}: CUDA error {r}")
    dev, ctx, mod, fn, buf = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_uint64()
    ok(cuda.cuInit(0), "cuInit")
    ok(cuda.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
    ok(cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "ctx")
    ok(cuda.cuCtxSetCurrent(ctx), "setctx")
    ok(cuda.cuModuleLoadData(ctypes.byref(mod), text.encode() + b"\0"), "cuModuleLoadData (JIT)")
    ok(cuda.cuModuleGetFunction(ctypes.byref(fn), mod, kernel.encode()), "getfn")
    ok(cuda.cuMemAlloc_v2(ctypes.byref(buf), 8), "alloc")
    ok(cuda.cuMemsetD8_v2(buf, 0, 8), "memset")
    n = KERNELS[kernel][1]
    p, cnt = ctypes.c_uint64(buf.value), ctypes.c_uint32(n)
    params = (ctypes.c_void_p * 2)(ctypes.cast(ctypes.byref(p), ctypes.c_void_p), ctypes.cast(ctypes.byref(cnt), ctypes.c_void_p))
    ok(cuda.cuLaunchKernel(fn, n // 256, 1, 1, 256, 1, 1, 0, None, params, None), "launch")
    ok(cuda.cuCtxSynchronize(), "sync")
    host = (ctypes.c_uint8 * 8)()
    ok(cuda.cuMemcpyDtoH_v2(host, buf, 8), "copy")
    cuda.cuMemFree_v2(buf)
    cuda.cuModuleUnload(mod)
    return [struct.unpack("<e", bytes(host[i:i + 2]))[0] for i in range(0, 8, 2)]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", action="store_true")
    ap.add_argument("--out")
    ap.add_argument("--load")
    args = ap.parse_args()
    bad = 0
    if args.load:
        for f in sorted(Path(args.load).glob("*.ptx")):
            kernel = f.name.split("-")[0]
            sums = run_on_gpu(f.read_text(), kernel)
            bad += sums != [2048.0] * 4
            print(f"{f.name}: GPU sums {sums}")
        return 1 if bad else 0
    for kernel in KERNELS:
        for sem in ("", ".relaxed", ".release"):
            for arch in (60, 61, 70):
                text = ptx(kernel, arch, sem)
                good, log = ptxas(text, arch)
                red = [l.strip() for l in text.splitlines() if l.strip().startswith(("@%p1 red", "red", "atom", "@%cas_p", "membar"))]
                line = f"{kernel}{sem or '(no sem)'} sm_{arch}: ptxas {'ok' if good else 'FAIL ' + log.splitlines()[0]}"
                if arch < 70:
                    line += f"; red left: {any(l.startswith(('@%p1 red', 'red')) for l in red)}; cas loop: {any('cas.b32' in l for l in red)}"
                if args.out:
                    Path(args.out).mkdir(parents=True, exist_ok=True)
                    (Path(args.out) / f"{kernel}{sem.replace('.', '-')}-sm{arch}.ptx").write_text(text)
                if good and args.run:
                    sums = run_on_gpu(text, kernel)
                    line += f"; GPU sums {sums}"
                    bad += sums != [2048.0] * 4
                bad += not good
                print(line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
