"""Byte-identical packages from identical inputs, and `stackforge verify reproducible`."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
import zstandard
from minihelpers import MiniWs, make_mini

from stackforge.build.repack import normalize_package, path_replacements
from stackforge.verify.reproducible import compare_packages


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _info_tar(package: Path) -> tarfile.TarFile:
    with zipfile.ZipFile(package) as zf:
        name = next(n for n in zf.namelist() if n.startswith("info-"))
        data = zstandard.ZstdDecompressor().decompressobj().decompress(zf.read(name))
    return tarfile.open(fileobj=io.BytesIO(data))


@pytest.mark.build
def test_two_workspaces_at_two_times_give_identical_packages(built: MiniWs, tmp_path: Path) -> None:
    time.sleep(1.1)  # a later wall-clock second than the template's build
    mini = make_mini(tmp_path / "elsewhere" / "second")
    mini.build("pascal")
    assert mini.root != built.root
    names = built.packages()
    assert names == mini.packages() and len(names) == 3
    for name in names:
        a, b = built.channel / "linux-64" / name, mini.channel / "linux-64" / name
        assert _sha(a) == _sha(b), f"{name}: {compare_packages(a, b)}"


@pytest.mark.build
def test_metadata_carries_source_time_not_build_time_or_place(built: MiniWs) -> None:
    package = next((built.channel / "linux-64").glob("mini-vllm-*.conda"))
    # mini-vllm's newest patched source commit is its second patch (2025-07-02T09:00:00Z)
    epoch = 1751446800
    with _info_tar(package) as tf:
        assert {m.mtime for m in tf.getmembers()} == {epoch}
        assert {(m.uid, m.gid, m.uname, m.gname) for m in tf.getmembers()} == {(0, 0, "", "")}
        index = json.loads(tf.extractfile("info/index.json").read())  # type: ignore[union-attr]
        rendered = tf.extractfile("info/recipe/rendered_recipe.yaml").read().decode()  # type: ignore[union-attr]
        about = tf.extractfile("info/about.json").read().decode()  # type: ignore[union-attr]
    assert index["timestamp"] == epoch * 1000
    assert "timestamp: 2025-07-02T09:00:00Z" in rendered
    assert "__linux" not in rendered and "__archspec" not in rendered and "__glibc" in rendered
    for text in (rendered, about):
        assert str(built.root) not in text
        assert "${STACKFORGE_ROOT}" in text


@pytest.mark.build
def test_normalizing_twice_changes_nothing(built: MiniWs, tmp_path: Path) -> None:
    package = next((built.channel / "linux-64").glob("mini-torch-*.conda"))
    copy = tmp_path / package.name
    shutil.copy(package, copy)
    normalize_package(copy, epoch=1751360400, replacements=path_replacements(built.root))
    assert _sha(copy) == _sha(package)


@pytest.mark.build
def test_compare_lists_the_differing_members(built: MiniWs, tmp_path: Path) -> None:
    package = next((built.channel / "linux-64").glob("mini-torch-*.conda"))
    later = tmp_path / package.name
    shutil.copy(package, later)
    normalize_package(later, epoch=1800000000, replacements={})
    diffs = {d.member: d.detail for d in compare_packages(package, later)}
    assert diffs["info:info/index.json"] == "content differs"
    assert diffs["pkg:lib/libminitorch.so.0.1.0"].startswith("header differs: mode=644 mtime=1751360400")
    assert compare_packages(package, package) == []


@pytest.mark.build
def test_verify_reproducible_rebuilds_and_compares(built: MiniWs, capsys: pytest.CaptureFixture[str]) -> None:
    assert built.run("verify", "reproducible", "-e", "pascal", "mini-vllm") == 0
    captured = capsys.readouterr()
    assert "identical" in captured.out and "mini-vllm-0.1.0-cuda129_sm60_61_h" in captured.out
    assert "1 package(s) rebuilt byte-identical" in captured.err


@pytest.mark.build
def test_verify_reproducible_names_the_differing_files(
    built: MiniWs, capsys: pytest.CaptureFixture[str]
) -> None:
    package = next((built.channel / "linux-64").glob("mini-torch-*.conda"))
    normalize_package(package, epoch=1800000000, replacements={})  # as if built by a non-reproducible tool
    assert built.run("verify", "reproducible", "-e", "pascal", "mini-torch") == 1
    captured = capsys.readouterr()
    assert "differs" in captured.out and "info:info/index.json: content differs" in captured.out
    assert "not reproducible: mini-torch" in captured.err


def test_verify_reproducible_needs_a_build_first(mini: MiniWs, capsys: pytest.CaptureFixture[str]) -> None:
    assert mini.run("verify", "reproducible", "-e", "pascal") == 1
    assert "not built yet for pascal" in capsys.readouterr().err


@pytest.mark.build
def test_verify_reproducible_json_is_json_alone(built: MiniWs, capsys: pytest.CaptureFixture[str]) -> None:
    """--json: stdout is one JSON document, nothing else (the human lines went there too before)."""
    import json

    assert built.run("verify", "reproducible", "-e", "pascal", "mini-torch", "--json") == 0
    [result] = json.loads(capsys.readouterr().out)
    assert result["package"] == "mini-torch" and result["identical"] is True
