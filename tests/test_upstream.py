"""stackforge.verify.upstream.pypi without the network: a real HTTP server on 127.0.0.1 serves a PEP 691
index, an sdist and wheels built here; the zip reader, the caches, the path map and the git
repositories are checked against Python's own zipfile and real git."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pypihelpers import Server, publish, zip_bytes

from stackforge.core.console import Failure, UsageError
from stackforge.spec import layout
from stackforge.verify.upstream import pypi as upstream
from stackforge.verify.upstream import repos


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, Server]]:
    root = tmp_path / "www"
    root.mkdir()
    server = Server(root)
    yield root, server
    server.close()


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty download cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("STACKFORGE_CACHE", str(cache))
    return cache


def _members() -> dict[str, bytes]:
    text = "".join(f"line {i}: the quick brown fox\n" for i in range(4000)).encode()
    return {
        "pkg/__init__.py": b"",
        "pkg/big.py": text,
        "pkg/data.bin": os.urandom(3000),
        "pkg/ünïcode.py": "x = 'ü'\n".encode(),
        "pkg-1.0.dist-info/RECORD": b"pkg/__init__.py,,\n",
    }


def test_zip_members_read_by_range_requests_match_zipfile(served: tuple[Path, Server]) -> None:
    root, server = served
    # A member nobody asks for, first in the archive (away from the directory at the end).
    padding = os.urandom(1_000_000)
    members = {"pkg/padding.bin": padding, **_members()}
    blob = zip_bytes(members, comment=b"c" * 3000)
    (root / "a.whl").write_bytes(blob)
    url = f"{server.url}/a.whl"

    entries = upstream.read_zip_directory(url)
    assert sorted(entries) == sorted(members)
    for name, data in members.items():
        if name != "pkg/padding.bin":
            assert upstream.read_zip_member(url, name, entries[name]) == data
    # A 64 kB tail read, the directory and the small members (~85 kB): not the 1 MB padding.
    assert server.sent < len(padding) // 5, (server.sent, len(blob))


def test_zip64_directory(served: tuple[Path, Server]) -> None:
    """More than 65535 members force zip64 end records: the reader must follow them."""
    root, server = served
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for i in range(65_537):
            zf.writestr(f"f/{i}", b"")
        zf.writestr("last.txt", b"the last one")
    (root / "many.zip").write_bytes(buf.getvalue())
    assert b"PK\x06\x06" in buf.getvalue()[-200:]  # zipfile did write a zip64 end record
    url = f"{server.url}/many.zip"
    entries = upstream.read_zip_directory(url)
    assert len(entries) == 65_538
    assert upstream.read_zip_member(url, "last.txt", entries["last.txt"]) == b"the last one"


def test_corrupt_member_fails_its_crc(served: tuple[Path, Server]) -> None:
    root, server = served
    data = b"A" * 1000
    blob = bytearray(zip_bytes({"pkg/x.py": b"", "pkg/stored.py": data}))
    offset = bytes(blob).index(data)
    blob[offset + 10] ^= 0xFF
    (root / "bad.whl").write_bytes(bytes(blob))
    url = f"{server.url}/bad.whl"
    entries = upstream.read_zip_directory(url)
    with pytest.raises(Failure, match=r"pkg/stored.py fails its CRC-32"):
        upstream.read_zip_member(url, "pkg/stored.py", entries["pkg/stored.py"])


def test_server_without_range_support_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    root.mkdir()
    (root / "a.whl").write_bytes(zip_bytes(_members()))
    server = Server(root, ranges=False)
    try:
        with pytest.raises(Failure, match=r"got HTTP 200 \(not 206\)") as info:
            upstream.read_zip_directory(f"{server.url}/a.whl")
        assert f"{server.url}/a.whl" in info.value.message
    finally:
        server.close()


def test_missing_file_names_the_url(served: tuple[Path, Server]) -> None:
    _, server = served
    with pytest.raises(Failure, match=r"/nothing.whl: HTTP 404"):
        upstream.http_get(f"{server.url}/nothing.whl")


def test_retries_follow_the_network_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that keeps answering 503 is asked exactly STACKFORGE_NET_RETRIES times, with the
    delay of STACKFORGE_RETRY_DELAY (0 here), and the error names the URL and the status."""
    asked: list[str] = []

    class Busy(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_error(503)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("STACKFORGE_NET_RETRIES", "2")
        with pytest.raises(Failure, match=r"/busy: HTTP 503"):
            upstream.http_get(f"http://127.0.0.1:{httpd.server_address[1]}/busy")
        assert asked == ["/busy", "/busy"]
        monkeypatch.setenv("STACKFORGE_RETRY_DELAY", "soon")
        with pytest.raises(UsageError, match="STACKFORGE_RETRY_DELAY"):
            upstream.http_get(f"http://127.0.0.1:{httpd.server_address[1]}/busy")
    finally:
        httpd.shutdown()
        httpd.server_close()


def _wheel_name(project: str, version: str, plat: str) -> str:
    return f"{project}-{version}-cp312-cp312-{plat}.whl"


def test_wheel_member_picks_the_wheel_and_caches(
    served: tuple[Path, Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, server = served
    x86 = zip_bytes({"demo/a.py": b"x86\n", "demo-1.0.dist-info/METADATA": b"Name: demo\n"})
    arm = zip_bytes({"demo/a.py": b"arm\n"})
    publish(
        root,
        "demo",
        {
            _wheel_name("demo", "1.0", "manylinux_2_28_aarch64"): arm,
            _wheel_name("demo", "1.0", "manylinux_2_28_x86_64"): x86,
            _wheel_name("demo", "1.0", "win_amd64"): arm,
            "demo-1.0-cp311-cp311-manylinux_2_28_x86_64.whl": arm,
        },
    )
    monkeypatch.setenv("STACKFORGE_PYPI_INDEX", f"{server.url}/simple")
    assert upstream.wheel_member("demo", "1.0", "demo/a.py") == b"x86\n"  # x86_64 preferred
    assert upstream.wheel_members("demo", "1.0") == ["demo-1.0.dist-info/METADATA", "demo/a.py"]
    with pytest.raises(Failure, match=r"has no member demo/missing.py"):
        upstream.wheel_member("demo", "1.0", "demo/missing.py")
    with pytest.raises(Failure, match=r"lists no demo 2.0 wheel"):
        upstream.wheel_member("demo", "2.0", "demo/a.py")
    server.close()  # from now on only the cache can answer
    assert upstream.wheel_member("demo", "1.0", "demo/a.py") == b"x86\n"


def _sdist(version: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in {
            "CMakeLists.txt": b"project(vllm)\n",
            "PKG-INFO": b"Name: vllm\n",
            "setup.cfg": b"[egg_info]\n",
            "vllm.egg-info/SOURCES.txt": b"x\n",
            "vllm/_version.py": b"__version__ = 'x'\n",
            "vllm/__init__.py": b"",
            "build/tracked.txt": b"a tracked file the sdist's .gitignore matches\n",
            ".gitignore": b"build/\n",
        }.items():
            info = tarfile.TarInfo(f"vllm-{version}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_vllm_sdist_verifies_extracts_once_and_builds_a_stable_repo(
    served: tuple[Path, Server], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root, server = served
    publish(root, "vllm", {"vllm-9.9.9.tar.gz": _sdist("9.9.9")})
    monkeypatch.setenv("STACKFORGE_PYPI_INDEX", f"{server.url}/simple")
    stack = tmp_path / "stack-ws"  # a workspace whose stack builds vLLM 9.9.9
    stack.mkdir()
    (stack / "git-repos.txt").write_text("")
    (stack / "stack.yaml").write_text('packages:\n  vllm: "9.9.9"\n')
    monkeypatch.setenv("STACKFORGE_ROOT", str(stack))
    assert upstream.pinned("vllm") == "9.9.9"
    tree = upstream.vllm_sdist("9.9.9")
    assert (tree / "vllm" / "__init__.py").is_file()
    assert [p.name for p in tree.parent.iterdir()] == ["vllm-9.9.9"]  # no scratch left behind
    server.close()
    assert upstream.vllm_sdist("9.9.9") == tree  # cached: no network needed

    built = [repos.upstream_repo("vllm", tmp_path / f"repo{i}") for i in (1, 2)]
    heads = [
        subprocess.run(["git", "rev-parse", "HEAD"], cwd=r, capture_output=True, text=True).stdout
        for r in built
    ]
    assert heads[0] == heads[1] and len(heads[0].strip()) == 40  # same files, same commit
    tracked = subprocess.run(["git", "ls-files"], cwd=built[0], capture_output=True, text=True).stdout.split()
    assert tracked == [".gitignore", "CMakeLists.txt", "build/tracked.txt", "vllm/__init__.py"]


def test_sdist_with_a_wrong_digest_is_refused(
    served: tuple[Path, Server], monkeypatch: pytest.MonkeyPatch, private_cache: Path
) -> None:
    root, server = served
    publish(root, "vllm", {"vllm-9.9.8.tar.gz": _sdist("9.9.8")})
    (root / "files" / "vllm-9.9.8.tar.gz").write_bytes(_sdist("9.9.8") + b"tampered")
    monkeypatch.setenv("STACKFORGE_PYPI_INDEX", f"{server.url}/simple")
    with pytest.raises(Failure, match=r"sha256 [0-9a-f]{64} does not match the index's"):
        upstream.vllm_sdist("9.9.8")
    assert not (private_cache / "sdist" / "vllm-9.9.8").exists()


def test_path_map_both_ways() -> None:
    assert layout.repo_to_wheel("pytorch", "torch/utils/_triton.py") == "torch/utils/_triton.py"
    assert layout.repo_to_wheel("triton", "third_party/nvidia/backend/compiler.py") == (
        "triton/backends/nvidia/compiler.py"
    )
    assert layout.repo_to_wheel("triton", "python/triton/language/core.py") == "triton/language/core.py"
    assert layout.repo_to_wheel("triton", "lib/Dialect/TritonGPU/IR/Ops.cpp") is None  # C++: no copy
    assert layout.wheel_to_repo("triton", "triton/backends/nvidia/driver.py") == (
        "third_party/nvidia/backend/driver.py"
    )
    assert layout.wheel_to_repo("triton", "triton/runtime/jit.py") == "python/triton/runtime/jit.py"
    for path in ("third_party/amd/backend/compiler.py", "python/triton/compiler/compiler.py"):
        assert layout.wheel_to_repo("triton", layout.repo_to_wheel("triton", path) or "") == path


def _patch(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def test_touched_paths_skips_files_the_series_creates(tmp_path: Path) -> None:
    first = _patch(
        tmp_path,
        "0001.patch",
        "Subject: [PATCH] x\n\n---\n"
        "diff --git a/python/triton/a.py b/python/triton/a.py\nindex 1..2 100644\n--- a/python/triton/a.py\n"
        "+++ b/python/triton/a.py\n"
        "diff --git a/python/triton/new.py b/python/triton/new.py\nnew file mode 100644\n"
        "index 0000000..3\n--- /dev/null\n+++ b/python/triton/new.py\n"
        "diff --git a/python/triton/old.py b/python/triton/old.py\ndeleted file mode 100644\n"
        "--- a/python/triton/old.py\n+++ /dev/null\n",
    )
    second = _patch(
        tmp_path,
        "0002.patch",
        "diff --git a/python/triton/new.py b/python/triton/new.py\n--- a/python/triton/new.py\n"
        "diff --git a/third_party/nvidia/backend/compiler.py b/third_party/nvidia/backend/compiler.py\n",
    )
    assert repos.touched_paths([first, second]) == [
        "python/triton/a.py",
        "python/triton/old.py",
        "third_party/nvidia/backend/compiler.py",
    ]


def test_wheel_repo_holds_the_touched_files_and_series_applies(
    served: tuple[Path, Server], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The whole pytorch path offline: files from a wheel at their repo paths, one stable
    commit, a real format-patch series applied with git am (clean verdicts)."""
    root, server = served
    original = b"def gate(major):\n    return major >= 7\n"
    wheel = zip_bytes({"torch/utils/_triton.py": original, "torch/other.py": b"x = 1\n"})
    publish(root, "torch", {_wheel_name("torch", upstream.pinned("pytorch"), "manylinux_2_28_x86_64"): wheel})
    monkeypatch.setenv("STACKFORGE_PYPI_INDEX", f"{server.url}/simple")

    # Author a one-commit series on a copy of the upstream repo, the way patches are made.
    seed = _patch(tmp_path, "seed.patch", "diff --git a/torch/utils/_triton.py b/torch/utils/_triton.py\n")
    work = repos.upstream_repo("pytorch", tmp_path / "work", patch_files=[seed])
    (work / "torch/utils/_triton.py").write_bytes(original.replace(b">= 7", b">= 6"))
    repos._git(work, "commit", "--quiet", "-am", "gate: admit 6.x")
    out = tmp_path / "series"
    repos._git(
        work,
        "format-patch",
        "--zero-commit",
        "--no-signature",
        "-N",
        "--full-index",
        "-o",
        str(out),
        "HEAD~1",
    )
    series = sorted(out.glob("*.patch"))
    assert [p.name for p in series] == ["0001-gate-admit-6.x.patch"]

    proved = repos.patched_repo("pytorch", tmp_path / "proof", series)
    assert (proved / "torch/utils/_triton.py").read_bytes().endswith(b"major >= 6\n")
    assert not (proved / "torch/other.py").exists()  # only what the series touches
    again = repos.upstream_repo("pytorch", tmp_path / "again", patch_files=series)
    assert repos.apply_series(again, series) == {"0001-gate-admit-6.x.patch": "clean"}
    heads = [repos._git(r, "rev-parse", "HEAD") for r in (proved, again)]
    assert heads[0] == heads[1]  # the patched HEAD is the same commit every time

    bad = _patch(tmp_path, "0002-bad.patch", series[0].read_text().replace("major >= 7", "major >= 9"))
    fresh = repos.upstream_repo("pytorch", tmp_path / "fresh", patch_files=series)
    with pytest.raises(Failure, match=r"0002-bad.patch does not apply"):
        repos.apply_series(fresh, [bad])
    assert repos._git(fresh, "status", "--porcelain") == ""  # the failed am was aborted


def test_unshipped_files_are_named(tmp_path: Path) -> None:
    patch = _patch(tmp_path, "0001-cpp.patch", "diff --git a/lib/Conversion/X.cpp b/lib/Conversion/X.cpp\n")
    with pytest.raises(Failure, match=r"ships no copy of lib/Conversion/X.cpp \(touched by 0001-cpp.patch\)"):
        repos.upstream_files("triton", [patch])
