"""Real upstream source from PyPI, cached: the ground the patch series is proven on.

No GitHub here (FACTS.md), so the proof uses what PyPI publishes:

* vLLM publishes an sdist. setuptools-scm builds it from the git checkout, so every file in it
  is byte-for-byte the file in git at v0.14.0 (b17039bc), except the few packaging artefacts
  `_GENERATED` drops. Blob hashes therefore equal upstream's, and the `index <old>..<new>` lines
  of our patches name blobs that exist in the real repository: `git am --3way` on a real clone
  can fall back to a three-way merge exactly as it does here.
* PyTorch and Triton publish wheels only. Their Python files are verbatim copies of the source
  files (wheel path `torch/X` is repo path `torch/X`; `triton/backends/nvidia/X` is
  `third_party/nvidia/backend/X`; `triton/X` is `python/triton/X`), so a repository holding
  just the files a series touches, at their repo paths, is enough to prove it applies.
  Caveat for PyTorch: the PyPI torch 2.9.1 wheels were built from 5811a8d7, not from the
  pinned v2.9.1 commit d38164a (FACTS.md). A patch proven here is proven on 5811a8d7's copy of
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
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

from filelock import FileLock

from stackforge.console import Failure, UsageError

# A PEP 691 simple index; STACKFORGE_PYPI_INDEX points at a mirror (or a local test server).
DEFAULT_INDEX = "https://pypi.org/simple"
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
USER_AGENT = "stackforge-upstream/0.1 (+https://pypi.org)"

# The pinned stack (FACTS.md): which PyPI release stands in for each upstream repository.
PINNED = {"vllm": "0.14.0", "pytorch": "2.9.1", "triton": "3.5.1"}
PYPI_PROJECT = {"vllm": "vllm", "pytorch": "torch", "triton": "triton"}

# repo path prefix -> wheel path prefix, most specific first (the first match wins both ways).
PATH_MAP: dict[str, tuple[tuple[str, str], ...]] = {
    "pytorch": (("torch/", "torch/"),),
    "triton": (
        ("third_party/nvidia/backend/", "triton/backends/nvidia/"),
        ("third_party/amd/backend/", "triton/backends/amd/"),
        ("python/triton/", "triton/"),
    ),
}

# sdist members that setuptools writes and git does not hold (vllm/_version.py is git-ignored).
_GENERATED = ("PKG-INFO", "setup.cfg", "vllm.egg-info", "vllm/_version.py")

# One commit with fixed identity and dates, so the same files always give the same SHA.
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "stackforge",
    "GIT_AUTHOR_EMAIL": "stackforge@users.noreply.github.com",
    "GIT_COMMITTER_NAME": "stackforge",
    "GIT_COMMITTER_EMAIL": "stackforge@users.noreply.github.com",
    "GIT_AUTHOR_DATE": "2025-01-01T00:00:00+00:00",
    "GIT_COMMITTER_DATE": "2025-01-01T00:00:00+00:00",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}

# `git am` takes author and date from each patch: only the committer is fixed (its date follows
# the author's), so the patched HEAD is the same commit everywhere.
_AM_ENV = {k: v for k, v in _GIT_ENV.items() if "AUTHOR" not in k and "DATE" not in k}
# Inherited variables that would redirect git or override identities and dates.
_SCRUBBED = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_AUTHOR_", "GIT_COMMITTER_")

_RETRIES = 4
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
    delay = 1.0
    for attempt in range(1, _RETRIES + 1):
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
            if (exc.code < 500 and exc.code != 429) or attempt == _RETRIES:
                raise Failure(
                    f"{url}: HTTP {exc.code} {exc.reason}", hint="check the URL and your network"
                ) from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            if attempt == _RETRIES:
                reason = getattr(exc, "reason", exc)
                raise Failure(
                    f"{url}: {reason} (after {_RETRIES} tries)",
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


def vllm_sdist(version: str = PINNED["vllm"]) -> Path:
    """The vLLM sdist's source tree, downloaded, sha256-checked and extracted once."""
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
        _atomic_write(where, json.dumps(meta, sort_keys=True).encode())
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
    _atomic_write(cached, data)  # concurrent writers write the same bytes; os.replace is atomic
    return data


def wheel_members(
    project: str, version: str, *, platform_tag_contains: str = "manylinux", python_tag: str = "cp312"
) -> list[str]:
    """Names of every member of the wheel that `wheel_member` reads from."""
    return sorted(_wheel_index(project, version, python_tag, platform_tag_contains)[1]["entries"])


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


# --- repo paths <-> wheel paths, and what a series touches -------------------------------------


def repo_to_wheel(name: str, repo_path: str) -> str | None:
    """Where the wheel ships repo file `repo_path`, or None if it ships no copy of it."""
    for repo_prefix, wheel_prefix in PATH_MAP.get(name, ()):
        if repo_path.startswith(repo_prefix):
            return wheel_prefix + repo_path[len(repo_prefix) :]
    return None


def wheel_to_repo(name: str, wheel_path: str) -> str | None:
    """The repository path of wheel member `wheel_path`, or None for build products."""
    for repo_prefix, wheel_prefix in PATH_MAP.get(name, ()):
        if wheel_path.startswith(wheel_prefix):
            return repo_prefix + wheel_path[len(wheel_prefix) :]
    return None


_DIFF_HEADER = re.compile(r"^diff --git a/(\S+) b/(\S+)$")


def touched_paths(patch_files: Iterable[Path]) -> list[str]:
    """Repo paths a series needs to exist before it applies: every `diff --git a/X` whose
    old side is not /dev/null, minus files an earlier patch of the series creates."""
    needed: list[str] = []
    created: set[str] = set()
    for patch in patch_files:
        current: str | None = None
        for line in patch.read_text(encoding="utf-8", errors="replace").splitlines():
            m = _DIFF_HEADER.match(line)
            if m:
                current = m[1]
                if current not in created and current not in needed:
                    needed.append(current)
            elif current and (line.startswith("new file mode") or line == "--- /dev/null"):
                if current in needed and current not in created:
                    needed.remove(current)
                created.add(current)
                current = None
    return needed


# --- a git repository of upstream files --------------------------------------------------------


def _git_env(extra: dict[str, str]) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED)}
    return {**inherited, **extra}


def _run_git(dest: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=dest, env=_git_env(env), capture_output=True, text=True)


def _git(dest: Path, *args: str, env: dict[str, str] = _GIT_ENV) -> str:
    done = _run_git(dest, *args, env=env)
    if done.returncode != 0:
        raise Failure(f"git {' '.join(args)} in {dest} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def _default_patches(name: str) -> list[Path]:
    from stackforge.workspace import find_workspace

    return sorted(find_workspace().patch_dir(name).glob("*.patch"))


def upstream_files(
    name: str, patch_files: Sequence[Path] | None = None, *, version: str | None = None
) -> dict[str, bytes]:
    """repo path -> bytes for the files of `name` that the series touches (pytorch, triton), from
    the wheel of `version` (default: the pinned one, `PINNED`)."""
    if name not in PATH_MAP:
        raise UsageError(f"no wheel path map for {name!r}", hint=f"one of: {', '.join(PATH_MAP)}")
    patches = list(patch_files) if patch_files is not None else _default_patches(name)
    project, version = PYPI_PROJECT[name], version or PINNED[name]
    files: dict[str, bytes] = {}
    unshipped = []
    for repo_path in touched_paths(patches):
        wheel_path = repo_to_wheel(name, repo_path)
        if wheel_path is None:
            unshipped.append(repo_path)
            continue
        files[repo_path] = wheel_member(project, version, wheel_path)
    if unshipped:
        raise Failure(
            f"the {project} {version} wheel ships no copy of {', '.join(unshipped)} "
            f"(touched by {', '.join(p.name for p in patches)})",
            hint="such patches can be proven only on a git checkout: `stackforge clone` then `patches check`",
        )
    return files


def upstream_repo(
    name: str, dest: Path, *, patch_files: Sequence[Path] | None = None, version: str | None = None
) -> Path:
    """A git repository at `dest` holding upstream `name` at `version` (default: the pinned one,
    `PINNED`; another release proves a series for a newer stack) as one commit
    (fixed identity and dates: same files, same SHA), ready for `git am --3way`.

    vllm: the whole sdist tree minus packaging artefacts (committed once in the cache, then
    cloned). pytorch/triton: the wheel files the series touches (`patch_files`, default patches/<name>/*.patch of the workspace) at their
    repository paths (`PATH_MAP`).
    """
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise UsageError(f"{dest} is not empty", hint="give upstream_repo a new or empty folder")
    if name not in PINNED:
        raise UsageError(f"no pinned upstream {name!r}", hint=f"one of: {', '.join(PINNED)}")
    version = version or PINNED[name]
    if name == "vllm":
        # Committing 3,700 files takes seconds; clone a commit made once in the cache instead.
        base = _vllm_base_repo(version)
        dest.parent.mkdir(parents=True, exist_ok=True)
        _git(dest.parent, "clone", "--quiet", str(base), str(dest))
        _git(dest, "remote", "remove", "origin")  # self-contained: nothing points into the cache
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    for repo_path, data in upstream_files(name, patch_files, version=version).items():
        target = dest / repo_path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    _commit_all(
        dest,
        f"{name} {version}: files of the PyPI {PYPI_PROJECT[name]} {version} wheel, at their repository paths",
    )
    return dest


def _commit_all(repo: Path, message: str) -> None:
    """`git init` + one commit of everything in `repo` (fixed identity and dates)."""
    _git(repo, "init", "--quiet", "--initial-branch=main")
    _git(repo, "config", "core.autocrlf", "false")
    # -f: some upstream files match the upstream .gitignore (it is in the tree) yet are tracked.
    _git(repo, "add", "--all", "--force")
    _git(repo, "commit", "--quiet", "--no-verify", "-m", message)


def _vllm_base_repo(version: str) -> Path:
    """The sdist tree minus packaging artefacts as one commit, built once in the cache."""
    repo = cache_dir() / "repos" / f"vllm-{version}"
    if (repo / ".git" / "stackforge-complete").is_file():
        return repo
    with _lock(f"repo-vllm-{version}"):
        if (repo / ".git" / "stackforge-complete").is_file():
            return repo
        tree = vllm_sdist(version)
        repo.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".vllm-{version}-", dir=repo.parent) as scratch:
            work = Path(scratch) / "repo"
            shutil.copytree(tree, work, symlinks=True)
            for generated in _GENERATED:
                target = work / generated
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
            _commit_all(work, f"vllm {version}: the PyPI sdist vllm-{version}.tar.gz")
            (work / ".git" / "stackforge-complete").touch()
            if repo.exists():  # a leftover of an interrupted build
                shutil.rmtree(repo)
            work.rename(repo)
    return repo


def apply_series(repo: Path, patch_files: Sequence[Path]) -> dict[str, str]:
    """`git am --3way` each patch onto `repo` in order, with no user git config. Returns
    patch name -> "clean" (applies exactly, checked first with `git apply --check`) or "3way"
    (needed git's three-way fallback); a patch that does not apply raises Failure naming it."""
    verdicts: dict[str, str] = {}
    for patch in (Path(p).resolve() for p in patch_files):
        clean = _run_git(repo, "apply", "--check", str(patch), env=_AM_ENV)
        try:
            _git(repo, "am", "--3way", "--quiet", "--committer-date-is-author-date", str(patch), env=_AM_ENV)
        except Failure as exc:
            _run_git(repo, "am", "--abort", env=_AM_ENV)
            raise Failure(
                f"{patch.name} does not apply to {repo}: {exc.message}",
                hint="rebase the patch onto the pinned upstream and export it again",
            ) from exc
        verdicts[patch.name] = "clean" if clean.returncode == 0 else "3way"
    return verdicts


def patched_repo(
    name: str, dest: Path, patch_files: Sequence[Path] | None = None, *, version: str | None = None
) -> Path:
    """`upstream_repo` plus the series (default patches/<name>/*.patch) applied with `git am`."""
    patches = list(patch_files) if patch_files is not None else _default_patches(name)
    upstream_repo(name, dest, patch_files=patches, version=version)
    apply_series(dest, patches)
    return dest
