"""Real device code for tests: cubins assembled by Triton's ptxas 12.8 for any sm_XY, packed into
fatbins by NVIDIA's nvFatbin library and embedded by gcc in a shared library's `.nv_fatbin`
section as nvcc lays it out (so cuobjdump, and the binary audit, read them as they read libtorch)."""

from __future__ import annotations

import ctypes
import importlib.util
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from stackforge.cuda.fatbin import triton_bin_dir

# A kernel small enough to read: out[i] += 1.0f. PTX ISA 6.0 is accepted for every target below.
PTX = """.version 6.0
.target sm_{arch}
.address_size 64

.visible .entry add_one(.param .u64 p_out, .param .u32 p_n)
{{
    .reg .pred %p<2>;
    .reg .b32 %r<6>;
    .reg .f32 %f<3>;
    .reg .b64 %rd<5>;
    ld.param.u64 %rd1, [p_out];
    ld.param.u32 %r2, [p_n];
    mov.u32 %r3, %ctaid.x;
    mov.u32 %r4, %ntid.x;
    mov.u32 %r5, %tid.x;
    mad.lo.s32 %r1, %r3, %r4, %r5;
    setp.ge.s32 %p1, %r1, %r2;
    @%p1 bra DONE;
    cvta.to.global.u64 %rd2, %rd1;
    mul.wide.s32 %rd3, %r1, 4;
    add.s64 %rd4, %rd2, %rd3;
    ld.global.f32 %f1, [%rd4];
    add.f32 %f2, %f1, 0f3F800000;
    st.global.f32 [%rd4], %f2;
DONE:
    ret;
}}
"""

# nvcc's layout: the fatbin in .nv_fatbin, and the registration wrapper (magic 0x466243B1, version 1,
# pointer to the fatbin) in .nvFatBinSegment, as fatbinary_section.h declares it.
WRAPPER_C = """
__asm__(".section .nv_fatbin, \\"a\\"\\n.align 8\\nsf_fatbin:\\n.incbin \\"{fatbin}\\"\\n.text\\n");
extern const unsigned long long sf_fatbin[];
struct sf_wrapper {{ int magic; int version; const unsigned long long *data; void *unused; }};
__attribute__((section(".nvFatBinSegment"), aligned(8), used))
const struct sf_wrapper sf_fatbin_wrapper = {{0x466243B1, 1, sf_fatbin, 0}};
int sf_answer(void) {{ return 42; }}
"""


def _nvfatbin() -> ctypes.CDLL | None:
    spec = importlib.util.find_spec("nvidia")
    for folder in spec.submodule_search_locations if spec else []:
        lib = Path(folder) / "nvfatbin" / "lib" / "libnvfatbin.so.12"
        if lib.is_file():
            return ctypes.CDLL(str(lib))
    return None


NVFATBIN = _nvfatbin()
BIN = triton_bin_dir()


def cubin(arch: int, folder: Path) -> Path:
    ptx = folder / f"k{arch}.ptx"
    ptx.write_text(PTX.format(arch=arch))
    out = folder / f"k{arch}.cubin"
    subprocess.run([str(BIN / "ptxas"), f"-arch=sm_{arch}", str(ptx), "-o", str(out)], check=True)
    return out


def fatbin(folder: Path, sass: list[int], ptx: list[int]) -> Path:
    """A fatbin made by NVIDIA's nvFatbin from real cubins (ptxas) and PTX."""
    assert NVFATBIN is not None
    NVFATBIN.nvFatbinGetErrorString.restype = ctypes.c_char_p

    def check(result: int) -> None:
        assert result == 0, NVFATBIN.nvFatbinGetErrorString(result)

    handle = ctypes.c_void_p()
    options = (ctypes.c_char_p * 1)(b"-64")
    check(NVFATBIN.nvFatbinCreate(ctypes.byref(handle), options, 1))
    for arch in sass:
        data = cubin(arch, folder).read_bytes()
        check(NVFATBIN.nvFatbinAddCubin(handle, data, len(data), str(arch).encode(), b"add_one"))
    for arch in ptx:
        text = PTX.format(arch=arch).encode() + b"\0"
        check(NVFATBIN.nvFatbinAddPTX(handle, text, len(text), str(arch).encode(), b"add_one", b""))
    size = ctypes.c_size_t()
    check(NVFATBIN.nvFatbinSize(handle, ctypes.byref(size)))
    buf = ctypes.create_string_buffer(size.value)
    check(NVFATBIN.nvFatbinGet(handle, buf))
    check(NVFATBIN.nvFatbinDestroy(ctypes.byref(handle)))
    path = folder / "code.fatbin"
    path.write_bytes(buf.raw)
    return path


def shared_library(folder: Path, name: str, sass: list[int], ptx: list[int] = ()) -> Path:
    """lib<name>.so with a fatbin of the given SASS and PTX archs, as nvcc would lay it out."""
    lib = folder / f"lib{name}.so"
    with tempfile.TemporaryDirectory() as scratch:  # intermediate files stay out of audited folders
        fat = fatbin(Path(scratch), sass, list(ptx))
        source = Path(scratch) / "wrap.c"
        source.write_text(WRAPPER_C.format(fatbin=fat))
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(source)], check=True)
    return lib


# what a test that builds device code needs; each missing tool skips it, saying why
NEEDS_TOOLS = [
    pytest.mark.skipif(
        BIN is None, reason="needs triton==3.5.1 (its wheel bundles ptxas and cuobjdump 12.8)"
    ),
    pytest.mark.skipif(NVFATBIN is None, reason="needs nvidia-nvfatbin-cu12 (pip) to build fatbins"),
    pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the host shared library"),
]
