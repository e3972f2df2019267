"""Real upstream source from PyPI, cached: the ground the patch series is proven on.

The proof needs no GitHub (build farms and CI may reach only a package index), so it uses what
PyPI publishes:

* vLLM publishes an sdist. setuptools-scm builds it from the git checkout, so every file in it
  is byte-for-byte the file in git at the release's commit, except the few packaging artefacts
  `_GENERATED` drops. Blob hashes therefore equal upstream's, and the `index <old>..<new>` lines
  of our patches name blobs that exist in the real repository: `git am --3way` on a real clone
  can fall back to a three-way merge exactly as it does here.
* PyTorch and Triton publish wheels only. Their Python files are verbatim copies of the source
  files (wheel path `torch/X` is repo path `torch/X`; `triton/backends/nvidia/X` is
  `third_party/nvidia/backend/X`; `triton/X` is `python/triton/X`), so a repository holding
  just the files a series touches, at their repo paths, is enough to prove it applies (the path table is
  `stackforge.spec.layout.PATH_MAP`; git repositories: `stackforge.verify.upstream.repos`).
  Caveat for PyTorch: the first stack's PyPI torch wheels were built from 5811a8d7, not from
  the pinned commit d38164a (git-repos.txt): the wheel's own torch/version.py says
  `git_version = '5811a8d7da873dd699ff6687092c225caffcf1bb'`. A patch proven here is proven on 5811a8d7's copy of
  each file; where the two commits hold the same file (the blob hash in the patch's `index`
  line matches), the proof carries over exactly; where they differ, `stackforge patches check`
  on a real clone is the final word. Files a wheel does not ship (C++ sources) cannot be
  proven here at all: `upstream_repo` says which.

Downloads use only the stdlib (urllib), retry with backoff, and verify what can be verified:
the sdist's sha256 from the index, each wheel member's CRC-32 from the zip directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

from filelock import FileLock

from stackforge.core.console import Failure, UsageError
from stackforge.core.files import atomic_write
from stackforge.core.git import env_number

# A PEP 691 simple index; STACKFORGE_PYPI_INDEX points at a mirror (or a local test server).
DEFAULT_INDEX = "https://pypi.org/simple"
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
USER_AGENT = "stackforge-upstream/0.1 (+https://pypi.org)"

# which PyPI project stands in for each upstream repository; the release is the stack's (stack.yaml)
PYPI_PROJECT = {"vllm": "vllm", "pytorch": "torch", "triton": "triton"}


_RETRIES = 4  # PyPI's CDN has short hiccups; the git remotes' policy (3 tries) is tighter
_TIMEOUT = 60


def index_url(project: str) -> str:
    """The simple-index page of `project`: $STACKFORGE_PYPI_INDEX, else PyPI."""
    base = os.environ.get("STACKFORGE_PYPI_INDEX") or DEFAULT_INDEX
    return f"{base.rstrip('/')}/{project}/"


def cache_dir() -> Path:
    """Where downloads live: $STACKFORGE_CACHE, else ~/.cache/stackforge/upstream."""
    env = os.environ.get("STACKFORGE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "stackforge" / "upstream"


def _lock(key: str) -> FileLock:
    locks = cache_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    return FileLock(str(locks / f"{key}.lock"))


# --- HTTP --------------------------------------------------------------------------------------


def http_get(
    url: str, *, headers: dict[str, str] | None = None, byte_range: tuple[int, int] | None = None
) -> bytes:
    """GET `url` with retries; `byte_range` (first, last inclusive; first < 0 means the last
    -first bytes) asks for part of it, and a server that ignores the Range header is an error
    (it would send the whole 900 MB wheel)."""
    request_headers = {"User-Agent": USER_AGENT, **(headers or {})}
    if byte_range is not None:
        first, last = byte_range
        request_headers["Range"] = f"bytes={first}" if first < 0 else f"bytes={first}-{last}"
    # One retry policy for git and HTTP: STACKFORGE_NET_RETRIES / STACKFORGE_RETRY_DELAY
    # (seconds, doubled after each try); offline tests set the delay to 0.
    retries = int(env_number("STACKFORGE_NET_RETRIES", _RETRIES, minimum=1, integer=True))
    delay = env_number("STACKFORGE_RETRY_DELAY", 1.0)
    for attempt in range(1, retries + 1):
        try:
            with urllib.request.urlopen(
                urllib.request.Request(url, headers=request_headers), timeout=_TIMEOUT
            ) as r:
                if byte_range is not None and r.status != 206:
                    raise Failure(
                        f"{url}: asked for {request_headers['Range']}, got HTTP {r.status} (not 206)",
                        hint="use a server that answers HTTP range requests (files.pythonhosted.org does)",
                    )
                return r.read()
        except urllib.error.HTTPError as exc:
            # 4xx other than 429 will not get better by asking again.
            if (exc.code < 500 and exc.code != 429) or attempt == retries:
                raise Failure(
                    f"{url}: HTTP {exc.code} {exc.reason}", hint="check the URL and your network"
                ) from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            if attempt == retries:
                reason = getattr(exc, "reason", exc)
                raise Failure(
                    f"{url}: {reason} (after {retries} tries)",
                    hint="check network access to pypi.org / files.pythonhosted.org, or fill the cache "
                    f"({cache_dir()}) on a machine that has it",
                ) from exc
        time.sleep(delay)
        delay *= 2
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class IndexFile:
    filename: str
    url: str
    sha256: str
    size: int | None


def index_files(project: str) -> list[IndexFile]:
    """Every file PyPI's simple JSON index lists for `project`."""
    url = index_url(project)
    data = json.loads(http_get(url, headers={"Accept": SIMPLE_JSON}))
    return [
        # PEP 691 allows file URLs relative to the index page.
        IndexFile(f["filename"], urljoin(url, f["url"]), f.get("hashes", {}).get("sha256", ""), f.get("size"))
        for f in data.get("files", [])
    ]


def _pick(files: Iterable[IndexFile], wanted, what: str, project: str) -> IndexFile:
    matches = sorted((f for f in files if wanted(f.filename)), key=lambda f: f.filename)
    if not matches:
        raise Failure(
            f"{index_url(project)} lists no {what}",
            hint="check the version and tags against the files PyPI lists for the project",
        )
    # Prefer x86_64 when several platforms match: Python files are the same, the choice only
    # has to be stable.
    return next((f for f in matches if "x86_64" in f.filename), matches[0])


# --- the vLLM sdist ----------------------------------------------------------------------------


def pinned(name: str) -> str:
    """The release of `name` (vllm, pytorch, triton) that the workspace's stack builds (stack.yaml of
    the workspace found from the current folder or STACKFORGE_ROOT, with STACKFORGE_STACK)."""
    from stackforge.core.workspace import find_workspace
    from stackforge.spec.stack import load_stack

    if name not in PYPI_PROJECT:
        raise UsageError(f"no pinned upstream {name!r}", hint=f"one of: {', '.join(PYPI_PROJECT)}")
    return load_stack(find_workspace()).version(name)


def vllm_sdist(version: str | None = None) -> Path:
    """The vLLM sdist's source tree, downloaded, sha256-checked and extracted once."""
    version = version or pinned("vllm")
    root = cache_dir() / "sdist"
    tree = root / f"vllm-{version}"
    if (tree / "CMakeLists.txt").is_file():
        return tree
    with _lock(f"sdist-vllm-{version}"):
        if (tree / "CMakeLists.txt").is_file():  # another process finished while we waited
            return tree
        name = f"vllm-{version}.tar.gz"
        entry = _pick(index_files("vllm"), lambda n: n == name, name, "vllm")
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".vllm-{version}-", dir=root) as scratch:
            archive = Path(scratch) / name
            archive.write_bytes(http_get(entry.url))
            digest = hashlib.sha256(archive.read_bytes()).hexdigest()
            if digest != entry.sha256:
                raise Failure(
                    f"{entry.url}: sha256 {digest} does not match the index's {entry.sha256}",
                    hint="a proxy or mirror altered the download; try again or from another network",
                )
            with tarfile.open(archive) as tar:
                tar.extractall(Path(scratch) / "x", filter="data")
            extracted = Path(scratch) / "x" / f"vllm-{version}"
            if not (extracted / "CMakeLists.txt").is_file():
                raise Failure(f"{entry.url}: no vllm-{version}/CMakeLists.txt in the archive")
            if tree.exists():  # a leftover without CMakeLists.txt: never trust a half tree
                shutil.rmtree(tree)
            extracted.rename(tree)  # same filesystem: atomic, so readers see all or nothing
    return tree


# --- one member of a wheel, by HTTP range requests ---------------------------------------------

_EOCD = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_EOCD = b"PK\x06\x06"
_CENTRAL = b"PK\x01\x02"
_LOCAL = b"PK\x03\x04"
_TAIL = 65536 + 22  # the end record plus the longest comment a zip may carry


@dataclass(frozen=True)
class ZipEntry:
    offset: int  # of the local file header
    compressed: int
    size: int
    method: int  # 0 stored, 8 deflate
    crc: int


def read_zip_directory(url: str) -> dict[str, ZipEntry]:
    """The central directory of the zip at `url`, read with two or three range requests."""
    tail = http_get(url, byte_range=(-_TAIL, -1))
    end = tail.rfind(_EOCD)
    if end < 0:
        raise Failure(f"{url}: no zip end-of-central-directory record in the last {_TAIL} bytes")
    count, cd_size, cd_offset = struct.unpack_from("<HII", tail, end + 10)
    locator = end - 20
    if locator >= 0 and tail[locator : locator + 4] == _ZIP64_LOCATOR:
        (z64_offset,) = struct.unpack_from("<Q", tail, locator + 8)
        record = http_get(url, byte_range=(z64_offset, z64_offset + 55))
        if record[:4] != _ZIP64_EOCD:
            raise Failure(f"{url}: broken zip64 end record at byte {z64_offset}")
        count, _, cd_size, cd_offset = struct.unpack_from("<QQQQ", record, 24)
    directory = http_get(url, byte_range=(cd_offset, cd_offset + cd_size - 1))
    entries: dict[str, ZipEntry] = {}
    pos = 0
    for _ in range(count):
        if directory[pos : pos + 4] != _CENTRAL:
            raise Failure(f"{url}: broken central directory entry at byte {cd_offset + pos}")
        method, _, _, crc, compressed, size, n_name, n_extra, n_comment = struct.unpack_from(
            "<HHHIIIHHH", directory, pos + 10
        )
        (offset,) = struct.unpack_from("<I", directory, pos + 42)
        name = directory[pos + 46 : pos + 46 + n_name].decode("utf-8")
        extra = directory[pos + 46 + n_name : pos + 46 + n_name + n_extra]
        size, compressed, offset = _zip64_fields(extra, size, compressed, offset)
        entries[name] = ZipEntry(offset, compressed, size, method, crc)
        pos += 46 + n_name + n_extra + n_comment
    return entries


def _zip64_fields(extra: bytes, size: int, compressed: int, offset: int) -> tuple[int, int, int]:
    """Fields set to 0xFFFFFFFF live in the zip64 extra block (id 1), in this order."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        if tag == 1:
            values = iter(struct.unpack_from(f"<{length // 8}Q", extra, pos + 4))
            size = next(values) if size == 0xFFFFFFFF else size
            compressed = next(values) if compressed == 0xFFFFFFFF else compressed
            offset = next(values) if offset == 0xFFFFFFFF else offset
        pos += 4 + length
    return size, compressed, offset


def read_zip_member(url: str, name: str, entry: ZipEntry) -> bytes:
    """One member's bytes, CRC-checked; reads only its local header and data."""
    slack = 1024  # the local extra field can differ from the central one; usually it is short
    chunk = http_get(
        url, byte_range=(entry.offset, entry.offset + 30 + len(name.encode()) + slack + entry.compressed)
    )
    if chunk[:4] != _LOCAL:
        raise Failure(f"{url}: no local file header for {name} at byte {entry.offset}")
    n_name, n_extra = struct.unpack_from("<HH", chunk, 26)
    start = 30 + n_name + n_extra
    if start + entry.compressed > len(chunk):
        chunk += http_get(
            url, byte_range=(entry.offset + len(chunk), entry.offset + start + entry.compressed - 1)
        )
    raw = chunk[start : start + entry.compressed]
    if entry.method == 0:
        data = raw
    elif entry.method == 8:
        data = zlib.decompress(raw, -15)
    else:
        raise Failure(
            f"{url}: {name} uses zip compression method {entry.method}; only stored/deflate are read"
        )
    if zlib.crc32(data) != entry.crc or len(data) != entry.size:
        raise Failure(f"{url}: {name} fails its CRC-32/size check", hint="download again")
    return data


def _wheel_matches(filename: str, project: str, version: str, python_tag: str, platform: str) -> bool:
    m = re.fullmatch(
        r"(?P<name>[^-]+)-(?P<ver>[^-]+)(-\d[^-]*)?-(?P<py>[^-]+)-(?P<abi>[^-]+)-(?P<plat>[^-]+)\.whl",
        filename,
    )
    return bool(
        m
        and m["name"].lower().replace("_", "-") == project.lower().replace("_", "-")
        and m["ver"] == version
        and python_tag in m["py"].split(".")
        and platform in m["plat"]
    )


def _wheel_index(
    project: str, version: str, python_tag: str, platform_tag_contains: str
) -> tuple[Path, dict]:
    """The cache folder of one wheel and its metadata (url, sha256, central directory)."""
    folder = cache_dir() / "wheels" / f"{project}-{version}-{python_tag}-{platform_tag_contains}"
    where = folder / "wheel.json"
    if where.is_file():
        return folder, json.loads(where.read_text())
    with _lock(f"wheel-{folder.name}"):
        if where.is_file():
            return folder, json.loads(where.read_text())
        wheel = _pick(
            index_files(project),
            lambda n: _wheel_matches(n, project, version, python_tag, platform_tag_contains),
            f"{project} {version} wheel for {python_tag} on a {platform_tag_contains!r} platform",
            project,
        )
        entries = read_zip_directory(wheel.url)
        meta = {
            "filename": wheel.filename,
            "url": wheel.url,
            "sha256": wheel.sha256,
            "entries": {n: [e.offset, e.compressed, e.size, e.method, e.crc] for n, e in entries.items()},
        }
        atomic_write(where, json.dumps(meta, sort_keys=True).encode())
    return folder, meta


def wheel_member(
    project: str,
    version: str,
    member: str,
    *,
    platform_tag_contains: str = "manylinux",
    python_tag: str = "cp312",
) -> bytes:
    """The bytes of `member` (e.g. "torch/utils/_triton.py") in the project's wheel on PyPI,
    read by range requests and cached on disk; the wheel itself is never downloaded."""
    folder = cache_dir() / "wheels" / f"{project}-{version}-{python_tag}-{platform_tag_contains}"
    cached = folder / "members" / member
    if cached.is_file():
        return cached.read_bytes()
    folder, meta = _wheel_index(project, version, python_tag, platform_tag_contains)
    if member not in meta["entries"]:
        raise Failure(
            f"{meta['filename']} ({meta['url']}) has no member {member}",
            hint="wheels ship Python files and binaries, not C++ sources; check the path",
        )
    data = read_zip_member(meta["url"], member, ZipEntry(*meta["entries"][member]))
    atomic_write(cached, data)  # concurrent writers write the same bytes; os.replace is atomic
    return data


def wheel_members(
    project: str, version: str, *, platform_tag_contains: str = "manylinux", python_tag: str = "cp312"
) -> list[str]:
    """Names of every member of the wheel that `wheel_member` reads from."""
    return sorted(_wheel_index(project, version, python_tag, platform_tag_contains)[1]["entries"])
