"""`stackforge audit binaries` on real device code: cubins assembled with Triton's ptxas 12.8 for
sm_60/61/70, packed into fatbins with NVIDIA's nvFatbin library, embedded by gcc in a shared
library's `.nv_fatbin` section as nvcc lays it out, and read back by cuobjdump."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cudahelpers import NEEDS_TOOLS, shared_library

from stackforge.cli import main
from stackforge.cuda.fatbin import Embedded, Sass, find_cuobjdump, list_embedded
from stackforge.spec.envs import build_string_archs
from stackforge.verify.binaries import package_build_string

REPO_ROOT = Path(__file__).resolve().parents[1]

pytestmark = NEEDS_TOOLS


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
