"""Derived packages end to end: `stackforge lock` resolves the conda-forge artifacts by a real solve
against a local channel that imitates conda-forge's split (forgehelpers), pins them by sha256,
and `stackforge build` repackages them with rattler-build and our series: the patched files are
in, the native libraries are the input's bytes, the pin and the binary audit are enforced."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from cudahelpers import NEEDS_TOOLS
from forgehelpers import (
    LIBTORCH_BUILD,
    REPO_ROOT,
    SITE,
    TORCH_FILES,
    TRITON_FILES,
    WHEEL_PATH,
    forge,
    workspace,
)

from stackforge.build.channel import extract_package
from stackforge.cli import main
from stackforge.core.files import sha256_file

pytestmark = [*NEEDS_TOOLS, pytest.mark.build]


def sf(root: Path, *args: str) -> int:
    return main(["--root", str(root), *args])


@pytest.fixture
def binary_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "binary-cache"
    monkeypatch.setenv("STACKFORGE_BINARY_CACHE", str(cache))
    return cache


@pytest.fixture
def derived_ws(tmp_path: Path, build_root: Path, binary_cache: Path) -> Path:
    return workspace(tmp_path, forge(tmp_path, libtorch_sass=[60, 70]))


def _lock(root: Path) -> dict:
    return json.loads((root / "stackforge.lock").read_text())


def _plan(root: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, dict]:
    capsys.readouterr()
    sf(root, "build", "-e", "pascal", "--dry-run", "--json", *extra)
    return {i["package"]: i for i in json.loads(capsys.readouterr().out)["plan"]}


def _unpack(package: Path, dest: Path) -> Path:
    return extract_package(package, dest)


def test_without_a_pin_the_plan_is_blocked_and_says_what_to_run(derived_ws: Path, capsys) -> None:
    plan = _plan(derived_ws, capsys)
    assert {n: (i["method"], i["status"]) for n, i in plan.items()} == {
        "pytorch": ("derived", "blocked"),
        "triton": ("derived", "blocked"),
    }
    assert "run `stackforge lock`" in plan["pytorch"]["reason"]
    assert "--from-source pytorch" in plan["pytorch"]["reason"]
    assert sf(derived_ws, "build", "-e", "pascal") == 1
    assert not list((derived_ws / "output").glob("*/*.conda"))


def test_clone_all_skips_the_checkouts_of_derived_packages(derived_ws: Path, capsys) -> None:
    # the URLs are unreachable: a clone would fail; derived packages do not read these checkouts
    assert sf(derived_ws, "clone-all", "--json") == 0
    results = json.loads(capsys.readouterr().out)
    assert {r["name"]: r["action"] for r in results} == {"pytorch": "skipped", "triton": "skipped"}
    assert not (derived_ws / "sources" / "pytorch").exists()


def test_lock_pins_the_artifacts_and_build_derives_them(derived_ws: Path, tmp_path: Path, capsys) -> None:
    assert sf(derived_ws, "lock") == 0
    pins = _lock(derived_ws)["binaries"]["pascal"]
    channel = tmp_path / "forge" / "linux-64"
    torch_file = channel / "pytorch-2.9.1-cuda129_generic_py312_h0_200.conda"
    assert pins["pytorch"]["input"]["sha256"] == sha256_file(torch_file)
    assert pins["pytorch"]["input"]["build"] == "cuda129_generic_py312_h0_200"
    assert [p["name"] for p in pins["pytorch"]["audit"]] == ["libtorch"]
    assert pins["triton"]["input"]["sha256"] == sha256_file(channel / "triton-3.5.1-cuda129py312h0_0.conda")
    assert _lock(derived_ws)["sources"]["pytorch"]["patched_tree"].startswith(
        "not cloned: pytorch is derived"
    )
    assert sf(derived_ws, "lock", "--check") == 0

    plan = _plan(derived_ws, capsys)
    assert {n: (i["method"], i["status"]) for n, i in plan.items()} == {
        "pytorch": ("derived", "build"),
        "triton": ("derived", "build"),
    }
    assert sf(derived_ws, "build", "-e", "pascal") == 0
    err = capsys.readouterr().err
    assert "audited pytorch's inputs: 1 libraries with GPU code cover pascal" in err, err

    built = derived_ws / "output" / "linux-64"
    (torch_pkg,) = built.glob("pytorch-2.9.1-cuda129_sm60_61_h*_0.conda")
    ours = _unpack(torch_pkg, tmp_path / "ours")
    theirs = _unpack(torch_file, tmp_path / "theirs")
    for repo_path, (_before, after) in TORCH_FILES.items():
        assert (ours / SITE / WHEEL_PATH[repo_path]).read_text() == after
    native = f"{SITE}/torch/_C.cpython-312-x86_64-linux-gnu.so"
    assert sha256_file(ours / native) == sha256_file(theirs / native)  # conda-forge's bytes
    assert not list(ours.rglob("__pycache__"))  # stale by mtime once repacked: Python compiles them
    index = json.loads((ours / "info" / "index.json").read_text())
    assert f"libtorch ==2.9.1 {LIBTORCH_BUILD}" in index["depends"]  # conda-forge's libtorch, unchanged
    assert sorted(index["depends"]) == sorted(
        json.loads((theirs / "info" / "index.json").read_text())["depends"]
    )
    # the entry point's prefix is recorded again, so the installer relocates it as before
    paths = {p["_path"]: p for p in json.loads((ours / "info" / "paths.json").read_text())["paths"]}
    assert paths["bin/torchrun"].get("prefix_placeholder"), paths["bin/torchrun"]
    assert str(tmp_path) not in (ours / "bin" / "torchrun").read_text()

    (triton_pkg,) = built.glob("triton-3.5.1-cuda129_sm60_61_h*_0.conda")
    tri = _unpack(triton_pkg, tmp_path / "tri")
    for repo_path, (_before, after) in TRITON_FILES.items():
        assert (tri / SITE / WHEEL_PATH[repo_path]).read_text() == after

    # a second build finds both current; a rebuild from the same lock gives the same bytes
    assert {i["status"] for i in _plan(derived_ws, capsys).values()} == {"cached"}
    assert sf(derived_ws, "verify", "reproducible", "-e", "pascal") == 0


def test_a_changed_artifact_is_refused(derived_ws: Path, binary_cache: Path, tmp_path: Path, capsys) -> None:
    assert sf(derived_ws, "lock") == 0
    lock = _lock(derived_ws)
    other = tmp_path / "forge" / "linux-64" / f"libtorch-2.9.1-{LIBTORCH_BUILD}.conda"
    lock["binaries"]["pascal"]["triton"]["input"]["sha256"] = sha256_file(other)  # as if the channel changed
    (derived_ws / "stackforge.lock").write_text(json.dumps(lock))
    capsys.readouterr()
    assert sf(derived_ws, "build", "-e", "pascal") == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "does not match stackforge.lock's" in err and "the file was not used" in err, err
    assert not list((derived_ws / "output").glob("*/triton-*.conda"))
    assert not [p for p in binary_cache.rglob("*triton*") if p.suffix != ".lock"]  # nothing unverified kept


def test_the_audit_stops_an_input_without_code_for_an_arch(
    tmp_path: Path, build_root: Path, binary_cache: Path, capsys
) -> None:
    root = workspace(tmp_path, forge(tmp_path, libtorch_sass=[70]))  # conda-forge dropped sm_60
    assert sf(root, "lock") == 0
    capsys.readouterr()
    assert sf(root, "build", "-e", "pascal", "pytorch") == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "pytorch: its binary inputs cannot run on environment pascal; nothing was built" in err, err
    assert (
        f"libtorch-2.9.1-{LIBTORCH_BUILD}:lib/libtorch_cuda.so: no SASS or JIT-able PTX for sm_60, sm_61"
        in err
    )
    assert not list((root / "output").glob("*/pytorch-*.conda"))


def test_a_patch_to_native_code_blocks_the_plan_by_name(derived_ws: Path, capsys) -> None:
    assert sf(derived_ws, "lock") == 0
    patch = next((derived_ws / "patches" / "pytorch").glob("*.patch"))
    patch.write_text(patch.read_text().replace("torch/utils/_triton.py", "aten/src/ATen/Context.cpp"))
    plan = _plan(derived_ws, capsys)
    assert plan["pytorch"]["status"] == "blocked"
    assert f"{patch.name}: aten/src/ATen/Context.cpp" in plan["pytorch"]["reason"]
    assert "--from-source pytorch" in plan["pytorch"]["reason"]
    assert plan["triton"]["status"] == "build"
    assert sf(derived_ws, "build", "-e", "pascal") == 1
    assert not list((derived_ws / "output").glob("*/*.conda"))


def test_from_source_needs_a_recipe_to_compile(derived_ws: Path, capsys) -> None:
    assert sf(derived_ws, "build", "-e", "pascal", "--dry-run", "--from-source", "triton") == 2
    assert "no recipe" in capsys.readouterr().err


def test_lock_check_names_a_missing_pin(derived_ws: Path, capsys) -> None:
    assert sf(derived_ws, "lock") == 0
    lock = _lock(derived_ws)
    del lock["binaries"]["pascal"]["pytorch"]
    (derived_ws / "stackforge.lock").write_text(json.dumps(lock))
    capsys.readouterr()
    assert sf(derived_ws, "lock", "--check") == 1
    out = capsys.readouterr().out
    assert "binaries.pascal.pytorch: not in the lock" in out, out


def test_one_derived_package_builds_alone(derived_ws: Path) -> None:
    assert sf(derived_ws, "lock") == 0
    assert sf(derived_ws, "build", "-e", "pascal", "triton") == 0
    (pkg,) = (derived_ws / "output" / "linux-64").glob("triton-*.conda")
    assert zipfile.is_zipfile(pkg)  # a .conda, as conda-forge's
    assert not list((derived_ws / "output" / "linux-64").glob("pytorch-*"))


@pytest.mark.upstream
def test_derived_from_the_real_wheel_files_with_the_real_series(
    tmp_path: Path, build_root: Path, binary_cache: Path, capsys
) -> None:
    """The forge packages carry PyTorch 2.9.1's and Triton 3.5.1's own Python files (PyPI wheels,
    range reads), the workspace our real patches/pytorch and patches/triton: the derived packages
    hold exactly the files `git am --3way` makes of the upstream files at their repository paths."""
    from conftest import online

    from stackforge.spec.layout import repo_to_wheel
    from stackforge.verify.upstream import repos

    series = {n: sorted((REPO_ROOT / "patches" / n).glob("*.patch")) for n in ("pytorch", "triton")}
    files = {n: online(lambda n=n: repos.upstream_files(n, series[n])) for n in series}
    wheel = {n: {repo_to_wheel(n, p): data for p, data in files[n].items()} for n in files}
    channel = forge(
        tmp_path, libtorch_sass=[60, 70], torch_files=wheel["pytorch"], triton_files=wheel["triton"]
    )
    root = workspace(tmp_path, channel, series_from=REPO_ROOT)
    assert sf(root, "lock") == 0
    assert sf(root, "build", "-e", "pascal") == 0
    for name in series:
        expected = repos.patched_repo(name, tmp_path / f"expected-{name}", series[name])
        (pkg,) = (root / "output" / "linux-64").glob(f"{name}-*_sm60_61_h*.conda")
        got = _unpack(pkg, tmp_path / f"got-{name}")
        for repo_path in files[name]:
            mine = (got / SITE / repo_to_wheel(name, repo_path)).read_bytes()
            assert mine == (expected / repo_path).read_bytes(), f"{name}: {repo_path}"
            assert mine != files[name][repo_path], f"{name}: {repo_path} left unpatched"


@pytest.mark.parametrize("env", ["pascal", "volta"])
def test_the_real_stack_derives_pytorch_and_triton_and_compiles_vllm(
    tmp_path: Path, env: str, capsys
) -> None:
    import shutil

    root = tmp_path / "ws"
    for folder in ("recipes", "patches"):
        shutil.copytree(REPO_ROOT / folder, root / folder)
    for name in ("stack.yaml", "git-repos.txt"):
        shutil.copy2(REPO_ROOT / name, root / name)
    capsys.readouterr()
    assert sf(root, "build", "-e", env, "--dry-run", "--json") == 1  # blocked: no pin, nothing cloned
    plan = {i["package"]: i["method"] for i in json.loads(capsys.readouterr().out)["plan"]}
    assert plan == {"pytorch": "derived", "triton": "derived", "vllm": "source"}  # no triton-llvm
    capsys.readouterr()
    assert sf(root, "build", "-e", env, "--dry-run", "--json", "--from-source", "all") == 1
    plan = {i["package"]: i["method"] for i in json.loads(capsys.readouterr().out)["plan"]}
    assert plan == dict.fromkeys(("triton-llvm", "triton", "pytorch", "vllm"), "source")


def test_a_series_that_does_not_fit_the_artifact_stops_naming_the_patch(
    tmp_path: Path, build_root: Path, binary_cache: Path, capsys
) -> None:
    # conda-forge's file is not the upstream one the series was made on (a feedstock patch, say)
    changed = {WHEEL_PATH[r]: b"def has_triton():\n    return False  # feedstock edit\n" for r in TORCH_FILES}
    root = workspace(tmp_path, forge(tmp_path, libtorch_sass=[60, 70], torch_files=changed))
    assert sf(root, "lock") == 0
    capsys.readouterr()
    assert sf(root, "build", "-e", "pascal", "pytorch") == 1
    err = " ".join(capsys.readouterr().err.split())
    patch = next((root / "patches" / "pytorch").glob("*.patch"))
    assert f"{patch.name}: does not apply to pytorch-2.9.1-cuda129_generic_py312_h0_200's files" in err, err
    assert "torch/utils/_triton.py" in err
    assert not list((root / "output").glob("*/pytorch-*.conda"))


def test_lock_without_the_channel_locks_the_rest_and_says_what_is_not_pinned(
    derived_ws: Path, tmp_path: Path, capsys
) -> None:
    import shutil

    shutil.rmtree(tmp_path / "forge")  # the channel is out of reach
    assert sf(derived_ws, "lock") == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "not pinned pytorch (pascal)" in err and "run `stackforge lock` where it is reachable" in err, err
    assert "binaries" not in _lock(derived_ws) and _lock(derived_ws)["sources"]
    assert sf(derived_ws, "lock", "--check") == 1
    assert "binaries: not in the lock" in capsys.readouterr().out
