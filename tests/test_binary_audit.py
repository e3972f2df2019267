"""`stackforge audit binaries` on real device code: cubins assembled with Triton's ptxas 12.8 for
sm_60/61/70, packed into fatbins with NVIDIA's nvFatbin library, embedded by gcc in a shared
library's `.nv_fatbin` section as nvcc lays it out, and read back by cuobjdump."""

from __future__ import annotations

import ctypes
import importlib.util
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from stackforge.cli import main
from stackforge.cuda.fatbin import Embedded, Sass, find_cuobjdump, list_embedded, triton_bin_dir
from stackforge.spec.envs import build_string_archs
from stackforge.verify.binaries import package_build_string

REPO_ROOT = Path(__file__).resolve().parents[1]

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
pytestmark = [
    pytest.mark.skipif(
        BIN is None, reason="needs triton==3.5.1 (its wheel bundles ptxas and cuobjdump 12.8)"
    ),
    pytest.mark.skipif(NVFATBIN is None, reason="needs nvidia-nvfatbin-cu12 (pip) to build fatbins"),
    pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the host shared library"),
]


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


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    shutil.copytree(REPO_ROOT / "recipes" / "variants", root / "recipes" / "variants")
    (root / "git-repos.txt").write_text("# no sources needed for the audit\n")
    return root


def audit(root: Path, *args: str) -> int:
    return main(["--root", str(root), "audit", "binaries", *args])


def test_cuobjdump_reads_the_library_we_built(tmp_path: Path) -> None:
    lib = shared_library(tmp_path, "full", sass=[60, 61, 70], ptx=[60])
    found = list_embedded(find_cuobjdump(), lib)
    assert found.sass == [Sass(60), Sass(61), Sass(70)]
    assert found.ptx == [60]


def test_plain_library_has_no_device_code(tmp_path: Path) -> None:
    (tmp_path / "plain.c").write_text("int plain(void) { return 1; }\n")
    lib = tmp_path / "libplain.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(tmp_path / "plain.c")], check=True)
    assert not list_embedded(find_cuobjdump(), lib).has_code


def test_coverage_rules() -> None:
    emb = Embedded(Path("x"), sass=[Sass(60), Sass(90, "a")], ptx=[70])
    assert emb.coverage(60).by == "sm_60"
    assert (emb.coverage(61).status, emb.coverage(61).by) == ("sass", "sm_60")  # older minor, same major
    assert (emb.coverage(70).status, emb.coverage(70).by) == ("ptx", "compute_70")  # JIT
    assert emb.coverage(90).by == "sm_90a"
    assert emb.coverage(89).by == "compute_70"  # sm_90a runs on 9.0 only
    # code for a newer GPU never runs on an older one
    assert not Embedded(Path("y"), sass=[Sass(70)], ptx=[70]).coverage(61).ok


def test_pascal_library_passes_and_sm60_covers_sm61(tmp_path: Path, workspace: Path, capsys) -> None:
    both = shared_library(tmp_path, "both", sass=[60, 61])
    only60 = shared_library(tmp_path, "only60", sass=[60])
    assert audit(workspace, "-e", "pascal", str(both), str(only60), "--json") == 0
    report = json.loads(capsys.readouterr().out)
    by_lib = {Path(r["library"]).name: r for r in report["libraries"]}
    assert by_lib["libboth.so"]["coverage"]["sm_61"] == {"status": "sass", "by": "sm_61"}
    assert by_lib["libonly60.so"]["coverage"]["sm_61"] == {"status": "sass", "by": "sm_60"}
    assert report["ok"] is True and report["archs"] == ["sm_60", "sm_61"]


def test_volta_only_library_fails_for_pascal_naming_it(tmp_path: Path, workspace: Path, capsys) -> None:
    good = shared_library(tmp_path, "good", sass=[60, 61])
    bad = shared_library(tmp_path, "voltaonly", sass=[70], ptx=[70])
    assert audit(workspace, "-e", "pascal", str(good), str(bad)) == 1
    captured = capsys.readouterr()
    assert "1 of 2 libraries" in captured.err
    assert f"{bad}: no SASS or JIT-able PTX for sm_60, sm_61 (it has: sm_70 compute_70)" in captured.err
    assert "MISSING" in captured.out  # the table is printed before the failure
    # the same library is fine for the environment it was built for
    assert audit(workspace, "-e", "volta", str(bad)) == 0


def test_ptx_only_library_passes_through_jit(tmp_path: Path, workspace: Path, capsys) -> None:
    lib = shared_library(tmp_path, "ptxonly", sass=[], ptx=[60])
    assert audit(workspace, "-e", "volta", str(lib), "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["libraries"][0]["coverage"] == {"sm_70": {"status": "ptx", "by": "compute_60"}}


def test_installed_prefix_is_walked_and_links_are_skipped(tmp_path: Path, workspace: Path, capsys) -> None:
    prefix = tmp_path / "prefix"
    (prefix / "lib").mkdir(parents=True)
    lib = shared_library(prefix / "lib", "kern", sass=[70])
    (prefix / "lib" / "libkern.so.1").symlink_to(lib.name)
    (prefix / "lib" / "README").write_text("not a library\n")
    assert audit(workspace, "-e", "volta", str(prefix), "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["library"] for r in report["libraries"]] == ["prefix/lib/libkern.so"]


def test_build_string_archs() -> None:
    assert build_string_archs("cuda129_sm60_61_h1a2b3c4d_0") == (60, 61)
    assert build_string_archs("cuda129_sm70_h1a2b3c4d_0") == (70,)
    assert build_string_archs("py312_h1a2b3c4d_0") is None
    assert (
        package_build_string(Path("vllm-0.14.0-cuda129_sm70_h1a2b3c4d_0.conda")) == "cuda129_sm70_h1a2b3c4d_0"
    )


def test_default_audits_the_channel_packages_of_the_env(tmp_path: Path, workspace: Path, capsys) -> None:
    """Real .conda packages (rattler-build's assembler) in output/: only the pascal-built one is
    audited for pascal, extracted with rattler, and its incomplete library is caught."""
    from rattler_build import assemble_package

    channel = workspace / "output" / "linux-64"
    channel.mkdir(parents=True)
    for build, sass in (("cuda129_sm60_61_h0123abcd_0", [61]), ("cuda129_sm70_h0123abcd_0", [70])):
        staged = tmp_path / build / "files"
        (staged / "lib").mkdir(parents=True)
        shared_library(staged / "lib", "demo_cuda", sass=sass)
        assemble_package("demo-kernels", "1.0", "linux-64", build, channel, files_dir=staged)
    assert audit(workspace, "-e", "volta", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["library"] for r in report["libraries"]] == [
        "demo-kernels-1.0-cuda129_sm70_h0123abcd_0.conda:lib/libdemo_cuda.so"
    ]
    # the pascal package carries sm_61 SASS only: a P100 (sm_60) could not run it
    assert audit(workspace, "-e", "pascal") == 1
    captured = capsys.readouterr()
    assert (
        "demo-kernels-1.0-cuda129_sm60_61_h0123abcd_0.conda:lib/libdemo_cuda.so: no SASS or JIT-able PTX for sm_60"
        in captured.err
    )


def test_no_packages_for_env_says_what_to_do(workspace: Path, capsys) -> None:
    assert audit(workspace, "-e", "pascal") == 1
    err = capsys.readouterr().err
    assert "no packages built for environment 'pascal'" in err and "sm60_61" in err


def test_unknown_env_is_a_usage_error(workspace: Path, capsys) -> None:
    assert audit(workspace, "-e", "kepler", "x.so") == 2
    assert "unknown environment 'kepler'" in capsys.readouterr().err
