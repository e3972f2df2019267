"""`stackforge stack new`: a stack for another vLLM release, from a local PyPI on 127.0.0.1 that
serves a synthetic vLLM sdist (CMake external projects, a torch pin) and torch/triton wheels
read by range requests; the series are real `git format-patch` output tried with real git."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pypihelpers import Server, publish, zip_bytes

from stackforge.cli import main
from stackforge.core.console import UsageError
from stackforge.core.workspace import Workspace
from stackforge.spec.manifest import load_manifest, parse_line
from stackforge.spec.stack import load_stack
from stackforge.verify.upstream import pins, pypi

TORCH_SHA = "7" * 40
A_OLD = "".join(f"a line {i}\n" for i in range(1, 31))
A_NEW = A_OLD.replace("a line 13\n", "a line 13, changed upstream\n").replace(
    "a line 25\n", "a line 25 upstream\n"
)
CMAKE = """cmake_minimum_required(VERSION 3.26)
set(CUTLASS_REVISION "{cutlass}")  # a tag
if (DEFINED ENV{{VLLM_CUTLASS_SRC_DIR}})
  set(VLLM_CUTLASS_SRC_DIR $ENV{{VLLM_CUTLASS_SRC_DIR}})
endif()
if(VLLM_CUTLASS_SRC_DIR)
  FetchContent_Declare(cutlass SOURCE_DIR ${{VLLM_CUTLASS_SRC_DIR}})
else()
  FetchContent_Declare(
    cutlass
    GIT_REPOSITORY https://github.com/nvidia/cutlass.git
    GIT_TAG ${{CUTLASS_REVISION}}
    GIT_SHALLOW TRUE)
endif()
"""
FLASHMLA = """if (DEFINED ENV{{FLASH_MLA_SRC_DIR}})
  set(FLASH_MLA_SRC_DIR $ENV{{FLASH_MLA_SRC_DIR}})
endif()
FetchContent_Declare(flashmla GIT_REPOSITORY https://github.com/vllm-project/FlashMLA GIT_TAG {sha})
"""
TRITON_KERNELS = """if (DEFINED ENV{TRITON_KERNELS_SRC_DIR})
  FetchContent_Declare(triton_kernels SOURCE_DIR $ENV{TRITON_KERNELS_SRC_DIR})
else()
  if (VLLM_TARGET_DEVICE STREQUAL "rocm")
    set(TRITON_GIT "https://github.com/ROCm/triton.git")
    set(TRITON_KERNELS_TAG "6666666666666666666666666666666666666666")
  else()
    set(TRITON_GIT "https://github.com/triton-lang/triton.git")
    set(TRITON_KERNELS_TAG "v3.1.0")
  endif()
  FetchContent_Declare(triton_kernels GIT_REPOSITORY ${TRITON_GIT} GIT_TAG ${TRITON_KERNELS_TAG}
          SOURCE_SUBDIR python/triton_kernels/triton_kernels)
endif()
"""
NEWPROJ = """if(DEFINED ENV{NEWPROJ_SRC_DIR})
  set(NEWPROJ_SRC_DIR $ENV{NEWPROJ_SRC_DIR})
endif()
if(NOT NEWPROJ_SRC_DIR)
  set(_NEWPROJ_TAG "9999999999999999999999999999999999999999")
  FetchContent_Populate(newproj GIT_REPOSITORY "https://github.com/vllm-project/NewProj.git" GIT_TAG "${_NEWPROJ_TAG}")
endif()
"""
FLASH_ATTN = """if (DEFINED ENV{VLLM_FLASH_ATTN_SRC_DIR})
  set(VLLM_FLASH_ATTN_SRC_DIR $ENV{VLLM_FLASH_ATTN_SRC_DIR})
endif()
FetchContent_Declare(vllm-flash-attn
  GIT_REPOSITORY https://github.com/vllm-project/flash-attention.git
  GIT_TAG 5555555555555555555555555555555555555555)
"""
STACK_YAML = """# the default stack of the test workspace
name: old
packages:
  vllm: "1.0.0"
  pytorch: "2.0.0"
  triton: "3.0.0"

# how packages are made: copied as is
derive:
  pytorch:
    build: "cuda129*"  # the artifact's build string
    audit: [libtorch]
  triton:
    build: "cuda129*"
"""
MANIFEST = """# the old stack's pins
pytorch          https://github.com/pytorch/pytorch.git  {s1}  ref=v2.0.0 for=pytorch
triton           https://github.com/triton-lang/triton.git  {s2}  ref=3.0.0 for=triton
llvm-project     https://github.com/triton-lang/llvm-project.git {s3} ref=triton-3.0 for=triton-llvm env=LLVM_SOURCE_DIR submodules=none
vllm             https://github.com/vllm-project/vllm.git  {s4}  ref=v1.0.0 for=vllm
flash-attention  https://github.com/vllm-project/flash-attention.git 5555555555555555555555555555555555555555 for=vllm env=VLLM_FLASH_ATTN_SRC_DIR
cutlass          https://github.com/NVIDIA/cutlass.git {s6} ref=v9.0 for=vllm env=VLLM_CUTLASS_SRC_DIR submodules=none
flashmla         https://github.com/vllm-project/FlashMLA.git {s7} for=vllm env=FLASH_MLA_SRC_DIR
triton-kernels   https://github.com/triton-lang/triton.git {s8} ref=v3.0.0 for=vllm env=TRITON_KERNELS_SRC_DIR subdir=python/triton_kernels/triton_kernels submodules=none
gone             https://github.com/x/gone.git {s9} for=vllm env=GONE_SRC_DIR
mytool           https://example.invalid/mytool.git {s0}
""".format(**{f"s{i}": str(i) * 40 for i in range(10)})


def _sdist(version: str, files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"vllm-{version}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _vllm_files(
    version: str, torch: str, a: str, cutlass: str, flashmla: str, extra: dict[str, str]
) -> dict[str, str]:
    return {
        "CMakeLists.txt": CMAKE.format(cutlass=cutlass),
        "requirements/cuda.txt": f"-r common.txt\nnumba == 0.61\ntorch=={torch}  # the pin\n",
        "vllm/_version.py": f"__version__ = '{version}'\n__commit_id__ = commit_id = 'gabc1234de'\n",
        "vllm/__init__.py": "",
        "vllm/a.py": a,
        "vllm/b.py": "def b():\n    return 1\n",
        "PKG-INFO": "Name: vllm\n",
        "cmake/external_projects/flashmla.cmake": FLASHMLA.format(sha=flashmla),
        "cmake/external_projects/triton_kernels.cmake": TRITON_KERNELS,
        "cmake/external_projects/vllm_flash_attn.cmake": FLASH_ATTN,
        **extra,
    }


def _wheel(project: str, version: str, members: dict[str, str]) -> tuple[str, bytes]:
    return f"{project}-{version}-cp312-cp312-manylinux_2_28_x86_64.whl", zip_bytes(
        {k: v.encode() for k, v in members.items()}
    )


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    env |= {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@x",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@x",
    }
    return subprocess.run(
        ["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True
    ).stdout


def _series(tmp: Path, base: dict[str, str], steps: list[tuple[str, dict[str, str]]], out: Path) -> None:
    """`git format-patch` of one commit per step on top of `base`, as `patches export` writes them."""
    repo = tmp / f"author-{out.name}"
    repo.mkdir(parents=True)
    _git(repo, "init", "-q")
    for path, text in base.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "base")
    for subject, files in steps:
        for path, text in files.items():
            (repo / path).parent.mkdir(parents=True, exist_ok=True)
            (repo / path).write_text(text)
        _git(repo, "add", "-A")
        _git(repo, "commit", "-qm", subject)
    out.mkdir(parents=True)
    _git(
        repo,
        "format-patch",
        "--zero-commit",
        "--no-signature",
        "-N",
        "--full-index",
        "-o",
        str(out),
        f"HEAD~{len(steps)}",
    )


@dataclass
class Pypi:
    root: Path  # the workspace
    server: Server

    def run(self, *args: str) -> int:
        return main(["--root", str(self.root), *args])


@pytest.fixture
def pypi_ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pypi]:
    monkeypatch.setenv("STACKFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("STACKFORGE_STACK", raising=False)
    www = tmp_path / "www"
    www.mkdir()
    server = Server(www)
    monkeypatch.setenv("STACKFORGE_PYPI_INDEX", f"{server.url}/simple")
    old = _vllm_files("1.0.0", "2.0.0", A_OLD, "v9.0", "7" * 40, {})
    new = _vllm_files(
        "1.1.0", "2.1.0", A_NEW, "v9.1", "8" * 40, {"cmake/external_projects/newproj.cmake": NEWPROJ}
    )
    publish(
        www, "vllm", {"vllm-1.0.0.tar.gz": _sdist("1.0.0", old), "vllm-1.1.0.tar.gz": _sdist("1.1.0", new)}
    )
    gate = "def has_triton(major):\n    return major >= 7\n"
    torch = {
        "2.0.0": {"torch/utils/_triton.py": gate, "torch/version.py": f"git_version = '{'1' * 40}'\n"},
        "2.1.0": {
            "torch/utils/_triton.py": gate,
            "torch/version.py": f"__version__ = '2.1.0'\ngit_version = '{TORCH_SHA}'\n",
            "torch-2.1.0.dist-info/METADATA": "Name: torch\nVersion: 2.1.0\nRequires-Dist: filelock\n"
            'Requires-Dist: triton~=3.1.0; platform_system == "Linux"\n',
        },
    }
    publish(www, "torch", dict(_wheel("torch", v, m) for v, m in torch.items()))
    compiler = "def make_ptx(src):\n    return src.replace('evict_last', '')\n"
    triton = {
        v: {"triton/backends/nvidia/compiler.py": compiler} for v in ("3.0.0", "3.1.0", "3.1.2", "3.2.0")
    }
    publish(www, "triton", dict(_wheel("triton", v, m) for v, m in triton.items()))

    root = tmp_path / "ws"
    root.mkdir()
    (root / "stack.yaml").write_text(STACK_YAML)
    (root / "git-repos.txt").write_text(MANIFEST)
    b_new = "def b():\n    return 2\n"
    a_2 = A_OLD.replace("a line 15\n", "a line 15 patched\n")
    steps = [
        ("b: return 2", {"vllm/b.py": b_new}),
        ("a: patch line 15", {"vllm/a.py": a_2}),
        ("a: patch line 25", {"vllm/a.py": a_2.replace("a line 25\n", "a line 25 patched\n")}),
        ("c: a new file", {"vllm/c.py": "C = 1\n"}),
    ]
    base = {"vllm/a.py": A_OLD, "vllm/b.py": "def b():\n    return 1\n"}
    _series(tmp_path, base, steps, root / "patches" / "vllm")
    torch_steps = [
        ("gate: admit 6.x", {"torch/utils/_triton.py": gate.replace(">= 7", ">= 6")}),
        ("aten: a C++ file", {"aten/src/x.cpp": "int x() { return 2; }\n"}),
    ]
    base = {"torch/utils/_triton.py": gate, "aten/src/x.cpp": "int x() { return 1; }\n"}
    _series(tmp_path, base, torch_steps, root / "patches" / "pytorch")
    path = "third_party/nvidia/backend/compiler.py"
    _series(
        tmp_path,
        {path: compiler},
        [("no evict", {path: compiler + "# sm_6x\n"})],
        root / "patches" / "triton",
    )
    other = {"csrc/x.cu": "x\n"}
    _series(tmp_path, other, [("fa: x", {"csrc/x.cu": "y\n"})], root / "patches" / "flash-attention")
    (root / "patches" / "vllm" / "NOTES.md").write_text("why each patch\n")
    yield Pypi(root, server)
    server.close()


def _report(capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(capsys.readouterr().out)


def test_new_stack_reads_pins_writes_files_and_judges_every_patch(pypi_ws: Pypi, capsys) -> None:
    assert pypi_ws.run("stack", "new", "next", "--vllm", "1.1.0", "--json") == 1  # a patch conflicts
    report = _report(capsys)
    assert report["versions"] == {
        "vllm": "1.1.0",
        "pytorch": "2.1.0",
        "triton": "3.1.2",
    }  # ~=3.1.0: newest 3.1.x
    verdicts = {
        (s["name"], v["patch"][:4]): (v["verdict"], v["files"])
        for s in report["series"]
        for v in s["verdicts"]
    }
    assert verdicts == {
        ("flash-attention", "0001"): ("unchecked", []),
        ("pytorch", "0001"): ("clean", []),
        ("pytorch", "0002"): ("unchecked", ["aten/src/x.cpp"]),
        ("triton", "0001"): ("clean", []),
        ("vllm", "0001"): ("clean", []),
        ("vllm", "0002"): ("3way", []),  # context changed upstream: merged with the 1.0.0 blobs
        ("vllm", "0003"): ("conflict", ["vllm/a.py"]),
        ("vllm", "0004"): ("clean", []),  # tried after 0003 was skipped
    }
    assert report["conflicts"] == ["vllm/0003-a-patch-line-25.patch"]
    assert set(report["timings"]) == {"read_s", "check_s", "total_s"}

    stack = pypi_ws.root / "stacks" / "next"
    loaded = load_stack(Workspace(pypi_ws.root, "next"))
    old = load_stack(Workspace(pypi_ws.root))
    assert loaded.name == "next" and loaded.versions == report["versions"] and loaded.derive == old.derive
    assert "# how packages are made: copied as is" in (stack / "stack.yaml").read_text()  # verbatim
    for f in (pypi_ws.root / "patches").rglob("*"):
        if f.is_file():
            assert (
                stack / "patches" / f.relative_to(pypi_ws.root / "patches")
            ).read_bytes() == f.read_bytes()

    manifest = load_manifest(stack / "git-repos.txt")
    active = {s.name: s for s in manifest.sources}
    assert set(active) == {"pytorch", "flash-attention", "flashmla", "newproj", "mytool"}
    assert active["pytorch"].commit == TORCH_SHA and active["pytorch"].ref == "v2.1.0"
    assert active["flashmla"].commit == "8" * 40 and active["flashmla"].env == "FLASH_MLA_SRC_DIR"
    assert active["newproj"].commit == "9" * 40 and active["newproj"].env == "NEWPROJ_SRC_DIR"
    assert active["mytool"].commit == "0" * 40
    text = (stack / "git-repos.txt").read_text()
    commented = {ln[1:].split()[0]: ln[1:] for ln in text.splitlines() if re.match(r"#\S+ +https://", ln)}
    assert set(commented) == {"vllm", "triton", "llvm-project", "cutlass", "triton-kernels", "gone"}
    assert commented["cutlass"].split()[2] == "v9.1" and "ref=v9.1" in commented["cutlass"]
    assert commented["triton-kernels"].split()[2] == "v3.1.0"  # the CUDA tag, not ROCm's SHA
    assert "666666" in text  # ... which is named as the other platforms' value
    for name, hint in (("vllm", "short commit SHA"), ("cutlass", "not a full 40-hex")):
        with pytest.raises(UsageError, match=hint):  # uncommented as is, the pin is refused with advice
            parse_line(stack / "git-repos.txt", 1, commented[name])


def test_the_report_table_says_what_was_skipped(pypi_ws: Pypi, capsys) -> None:
    assert pypi_ws.run("stack", "new", "next", "--vllm", "1.1.0") == 1
    captured = capsys.readouterr()
    assert "0003-a-patch-line-25.patch" in captured.out and "conflict" in captured.out
    assert "patches after it are tried without it" in captured.out
    assert "tried on the vLLM 1.1.0 sdist" in captured.out
    assert "wrote " in captured.err and "1 patch(es) conflict" in captured.err


def test_an_existing_stack_is_never_replaced(pypi_ws: Pypi, capsys) -> None:
    mine = pypi_ws.root / "stacks" / "next"
    mine.mkdir(parents=True)
    (mine / "stack.yaml").write_text("mine\n")
    assert pypi_ws.run("stack", "new", "next", "--vllm", "1.1.0") == 2
    assert "already exists: nothing was written" in capsys.readouterr().err
    assert (mine / "stack.yaml").read_text() == "mine\n" and sorted(mine.iterdir()) == [mine / "stack.yaml"]
    assert [p.name for p in mine.parent.iterdir()] == ["next"]  # no scratch left beside it


def test_from_a_named_stack_and_offline_from_the_cache(pypi_ws: Pypi, capsys, monkeypatch) -> None:
    assert pypi_ws.run("stack", "new", "next", "--vllm", "1.1.0", "--json") == 1
    capsys.readouterr()
    pypi_ws.server.close()  # from now on only the cache answers
    monkeypatch.setattr(pypi.time, "sleep", lambda _s: None)  # the retries' back-off
    assert pypi_ws.run("stack", "new", "again", "--vllm", "1.1.0", "--from", "next", "--json") == 1
    report = _report(capsys)
    assert report["source"] == "next" and report["versions"]["triton"] == "3.1.2"
    rows = {r["name"]: r["action"] for r in report["lines"]}
    assert rows["pytorch"] == "kept" and rows["flashmla"] == "kept" and rows["newproj"] == "kept"
    assert "cached" in next(r["where"] for r in report["reads"] if r["what"] == "triton")
    # the series is still the one written for 1.0.0 (stack next carries it): the 3-way fallback
    # finds its blobs in the cached release of the default stack, so the verdicts are the same
    vllm = next(s for s in report["series"] if s["name"] == "vllm")
    assert [v["verdict"] for v in vllm["verdicts"]] == ["clean", "3way", "conflict", "clean"]
    assert vllm["three_way"] == "1 of 1 file version(s) the series was written against, from vllm 1.0.0 (1)"


def test_a_release_pypi_lacks_is_a_usage_error(pypi_ws: Pypi, capsys) -> None:
    assert pypi_ws.run("stack", "new", "next", "--vllm", "1.1.7") == 2
    err = capsys.readouterr().err
    assert "vLLM 1.1.7 is not on" in err and "releases there include 1.1.0" in err
    assert not (pypi_ws.root / "stacks" / "next").exists()
    assert pypi_ws.run("stack", "new", "next", "--vllm", "latest") == 2
    assert pypi_ws.run("stack", "new", "next", "--vllm", "1.1.0", "--from", "nope") == 2
    assert "no stack 'nope' to start from" in capsys.readouterr().err


def test_no_network_names_the_cache(pypi_ws: Pypi, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    pypi_ws.server.close()
    monkeypatch.setattr(pypi.time, "sleep", lambda _s: None)  # the retries' back-off
    assert pypi_ws.run("stack", "new", "next", "--vllm", "1.1.0", "--json") == 1
    answer = _report(capsys)
    assert answer["ok"] is False and "cannot reach the package index for vLLM 1.1.0" in answer["error"]
    assert str(pypi.cache_dir()) in answer["error"] and "\n" not in answer["error"]
    assert not (pypi_ws.root / "stacks").exists() or not any((pypi_ws.root / "stacks").iterdir())


def test_cmake_reader_resolves_variables_and_platforms(tmp_path: Path) -> None:
    (tmp_path / "cmake" / "external_projects").mkdir(parents=True)
    (tmp_path / "CMakeLists.txt").write_text(CMAKE.format(cutlass="v4.7.1"))
    for name, text in (("triton_kernels", TRITON_KERNELS), ("newproj", NEWPROJ)):
        (tmp_path / "cmake" / "external_projects" / f"{name}.cmake").write_text(text)
    found = {e.project: e for e in pins.externals(tmp_path)}
    assert {p: (e.url, e.value, e.kind, e.env) for p, e in found.items()} == {
        "cutlass": ("https://github.com/nvidia/cutlass.git", "v4.7.1", "tag", "VLLM_CUTLASS_SRC_DIR"),
        "newproj": ("https://github.com/vllm-project/NewProj.git", "9" * 40, "sha", "NEWPROJ_SRC_DIR"),
        "triton_kernels": (
            "https://github.com/triton-lang/triton.git",
            "v3.1.0",
            "tag",
            "TRITON_KERNELS_SRC_DIR",
        ),
    }
    assert found["triton_kernels"].subdir == "python/triton_kernels/triton_kernels"
    assert found["triton_kernels"].others == ["6" * 40]
    assert [pins._meets((3, 8, 2), c) for c in ("~=3.8.0", "~=3.9", "<3.9", "==3.8.*")] == [
        True, False, True, True
    ]  # fmt: skip
