"""Byte-identical packages: repack what rattler-build writes, and `verify reproducible`.

rattler-build 0.73 stamps every package with the moment and the place it was built:
  - info/index.json `timestamp` and info/recipe/rendered_recipe.yaml `build_configuration.timestamp`
    are the wall clock (it ignores SOURCE_DATE_EPOCH; it *sets* SOURCE_DATE_EPOCH to that clock in
    the build script's environment);
  - every tar member's mtime is that clock, and file modes follow the builder's umask;
  - info/about.json `channels` and the rendered recipe's channels and resolved host/build
    dependencies hold `file://` URLs of the local channel, i.e. the workspace's absolute path;
  - the rendered recipe lists the build machine's virtual packages (__linux kernel version,
    __archspec CPU level, __cuda driver version);
  - the build directories and the host-prefix placeholder (paths.json, and text files that
    mention the prefix) hold the absolute build path; stackforge builds under one fixed build root
    (`STACKFORGE_BUILD_ROOT`), so these are the same in every workspace and on every machine;
  - the .conda zip and its zstd streams are otherwise deterministic for a given zstd version.

`normalize_package` rewrites exactly those fields (time -> the sources' commit date, workspace
paths -> `${STACKFORGE_ROOT}`, machine facts dropped), sorts and normalises the tar members, and
recompresses with fixed settings, so identical inputs give identical bytes.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tarfile
import tempfile
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import zstandard

from stackforge.core.console import Failure

# Bump when the repacking changes what bytes come out: it is part of every cache key.
REPACK_VERSION = "1"
ZSTD_LEVEL = 15  # zstd's multi-threaded output is identical for any thread count >= 1
WORKSPACE_TOKEN = "${STACKFORGE_ROOT}"
# Virtual packages that describe the build machine, not what the package was built against
# (__glibc and __unix stay: they decide which binaries the build produced).
_MACHINE_VIRTUALS = re.compile(r"^\s*- __(linux|archspec|cuda|osx|win)=.*\n", re.MULTILINE)
_RENDERED_TIMESTAMP = re.compile(r"^(  timestamp: )\d{4}-\d\d-\d\dT[^\n]*$", re.MULTILINE)
_INDEX_TIMESTAMP = re.compile(r'("timestamp":\s*)\d+')


def zstd_version() -> str:
    return ".".join(str(part) for part in zstandard.ZSTD_VERSION)


def iso_utc(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- repacking -------------------------------------------------------------------------------


def path_replacements(*roots: Path) -> dict[str, str]:
    """Absolute workspace paths (as paths and as file:// URLs) -> WORKSPACE_TOKEN, longest first."""
    pairs: dict[str, str] = {}
    for root in roots:
        resolved = root.resolve()
        pairs[resolved.as_uri()] = "file://" + WORKSPACE_TOKEN
        pairs[str(resolved)] = WORKSPACE_TOKEN
    return dict(sorted(pairs.items(), key=lambda kv: -len(kv[0])))


def _replace(text: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        text = text.replace(old, new)
    return text


def _rewrite_info(name: str, data: bytes, epoch: int, replacements: dict[str, str]) -> bytes:
    """The metadata files rattler-build stamps with time, place or machine."""
    if name == "info/index.json":
        text = _INDEX_TIMESTAMP.sub(lambda m: f"{m.group(1)}{epoch * 1000}", data.decode())
        return text.encode()
    if name == "info/recipe/rendered_recipe.yaml":
        text = _RENDERED_TIMESTAMP.sub(lambda m: f"{m.group(1)}{iso_utc(epoch)}", data.decode())
        text = _MACHINE_VIRTUALS.sub("", text)
        return _replace(text, replacements).encode()
    if name.endswith((".json", ".yaml", ".yml", ".txt", ".sh")):
        try:
            return _replace(data.decode(), replacements).encode()
        except UnicodeDecodeError:
            return data
    return data


def _normal_mode(member: tarfile.TarInfo) -> int:
    if member.issym():
        return 0o777
    if member.isdir() or member.mode & 0o111:
        return 0o755
    return 0o644


def _repack_tar(src: Path, dest: Path, epoch: int, rewrite) -> None:
    """Decompress src (.tar.zst), sort and normalise its members, recompress into dest."""
    with tempfile.TemporaryDirectory(prefix="stackforge-repack-") as tmp:
        plain = Path(tmp) / "plain.tar"
        with src.open("rb") as fin, plain.open("wb") as fout:
            zstandard.ZstdDecompressor().copy_stream(fin, fout)
        with tarfile.open(plain, "r:") as tin, dest.open("wb") as raw:
            compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1)
            with (
                compressor.stream_writer(raw, closefd=False) as zout,
                tarfile.open(fileobj=zout, mode="w|", format=tarfile.PAX_FORMAT) as tout,
            ):
                for member in sorted(tin.getmembers(), key=lambda m: m.name):
                    fresh = tarfile.TarInfo(member.name)
                    fresh.type, fresh.linkname = member.type, member.linkname
                    fresh.mode, fresh.mtime = _normal_mode(member), epoch
                    fresh.uid = fresh.gid = 0
                    fresh.uname = fresh.gname = ""
                    if not member.isfile():
                        tout.addfile(fresh)
                        continue
                    fh = tin.extractfile(member)
                    assert fh is not None
                    if rewrite is None:
                        fresh.size = member.size
                        tout.addfile(fresh, fh)
                    else:
                        data = rewrite(member.name, fh.read())
                        fresh.size = len(data)
                        tout.addfile(fresh, io.BytesIO(data))


def _zip_member(zf: zipfile.ZipFile, name: str, src: Path, epoch: int) -> None:
    stamp = datetime.fromtimestamp(max(epoch, 315532800), UTC).timetuple()[:6]  # zip starts at 1980
    info = zipfile.ZipInfo(name, date_time=stamp)
    info.compress_type = zipfile.ZIP_STORED
    info.create_system = 3
    info.external_attr = (0o100644 & 0xFFFF) << 16
    size = src.stat().st_size
    with src.open("rb") as fin, zf.open(info, "w", force_zip64=size > (1 << 31)) as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


def normalize_package(package: Path, *, epoch: int, replacements: dict[str, str]) -> None:
    """Rewrite a .conda in place so that it depends only on what went into the build."""
    if package.suffix != ".conda":
        raise Failure(f"{package}: only .conda packages can be normalised")
    with tempfile.TemporaryDirectory(prefix="stackforge-repack-", dir=package.parent) as tmp:
        work = Path(tmp)
        with zipfile.ZipFile(package) as zf:
            names = zf.namelist()
            zf.extractall(work)
        stem = package.name[: -len(".conda")]
        pkg, info = f"pkg-{stem}.tar.zst", f"info-{stem}.tar.zst"
        if sorted(names) != sorted(["metadata.json", pkg, info]):
            raise Failure(f"{package}: unexpected .conda layout {names}")
        _repack_tar(work / pkg, work / f"new-{pkg}", epoch, None)
        _repack_tar(
            work / info, work / f"new-{info}", epoch, lambda n, d: _rewrite_info(n, d, epoch, replacements)
        )
        result = work / "new.conda"
        with zipfile.ZipFile(result, "w") as zf:
            # The order conda-package-handling and rattler use: metadata, payload, metadata tar.
            _zip_member(zf, "metadata.json", work / "metadata.json", epoch)
            _zip_member(zf, pkg, work / f"new-{pkg}", epoch)
            _zip_member(zf, info, work / f"new-{info}", epoch)
        os.chmod(result, 0o644)
        os.replace(result, package)


# --- comparing -------------------------------------------------------------------------------


# --- CLI: stackforge verify reproducible -----------------------------------------------------
