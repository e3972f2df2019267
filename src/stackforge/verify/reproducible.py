"""`stackforge verify reproducible`: rebuild packages into a scratch folder and compare them, member by member, with output/."""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from stackforge.build.builder import build_package
from stackforge.build.plan import build_root, make_plan
from stackforge.core.console import Failure, err
from stackforge.core.files import sha256_file
from stackforge.core.workspace import Workspace
from stackforge.spec.envs import GpuEnv


@dataclass
class Difference:
    member: str  # "metadata.json", "info/index.json", "pkg:lib/libfoo.so", ...
    detail: str


def _tar_digests(data: bytes) -> dict[str, tuple[str, str]]:
    """member -> (sha256 of content or link target, header summary)."""
    result = {}
    with tarfile.open(
        fileobj=io.BytesIO(zstandard.ZstdDecompressor().decompressobj().decompress(data))
    ) as tf:
        for m in tf.getmembers():
            content = tf.extractfile(m).read() if m.isfile() else m.linkname.encode()  # type: ignore[union-attr]
            header = f"mode={m.mode:o} mtime={m.mtime} uid={m.uid} gid={m.gid} type={m.type!r}"
            result[m.name] = (hashlib.sha256(content).hexdigest(), header)
    return result


def _zip_parts(path: Path) -> Iterator[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            yield name, zf.read(name)


def compare_packages(a: Path, b: Path) -> list[Difference]:
    """Where two .conda files differ, member by member (empty when byte-identical)."""
    if sha256_file(a) == sha256_file(b):
        return []
    diffs: list[Difference] = []
    parts_a, parts_b = dict(_zip_parts(a)), dict(_zip_parts(b))
    for name in sorted(set(parts_a) | set(parts_b)):
        if name not in parts_a or name not in parts_b:
            diffs.append(Difference(name, "only in " + ("second" if name not in parts_a else "first")))
            continue
        if parts_a[name] == parts_b[name]:
            continue
        if not name.endswith(".tar.zst"):
            diffs.append(Difference(name, "content differs"))
            continue
        prefix = "info:" if name.startswith("info-") else "pkg:"
        ta, tb = _tar_digests(parts_a[name]), _tar_digests(parts_b[name])
        inner = []
        for member in sorted(set(ta) | set(tb)):
            if member not in ta or member not in tb:
                inner.append(
                    Difference(prefix + member, "only in " + ("second" if member not in ta else "first"))
                )
            elif ta[member][0] != tb[member][0]:
                inner.append(Difference(prefix + member, "content differs"))
            elif ta[member][1] != tb[member][1]:
                inner.append(
                    Difference(prefix + member, f"header differs: {ta[member][1]} vs {tb[member][1]}")
                )
        if not inner and list(ta) != list(tb):
            inner.append(Difference(name, "same members in a different order"))
        diffs.extend(inner or [Difference(name, "same members, different compressed bytes (zstd version?)")])
    if not diffs:
        diffs.append(Difference("(zip)", "same members, different zip headers"))
    return diffs


@dataclass
class Comparison:
    name: str
    file_name: str
    sha256: str
    rebuilt_sha256: str
    differences: list = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return self.sha256 == self.rebuilt_sha256


def rebuild_and_compare(
    ws: Workspace, env: GpuEnv, names: list[str] | None, *, keep: bool = False
) -> list[Comparison]:
    """Rebuild packages that are in output/ into a scratch directory and compare sha256."""
    plan = make_plan(ws, env, names)
    targets = [i for i in plan.items if not names or i.name in names]
    missing = [i.name for i in targets if i.status != "cached"]
    if missing:
        raise Failure(
            f"not built yet for {env.name} with the current inputs: {', '.join(missing)}",
            hint=f"run `stackforge build -e {env.name}` first",
        )
    scratch = ws.state / "verify" / env.name
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    results = []
    finished = False
    try:
        for item in targets:
            err.print(f"rebuilding {item.name} ({item.build_string}) ...")
            rebuilt = build_package(ws, plan, item, publish_to=None, log_dir=scratch / "logs")
            kept = scratch / item.file_name
            shutil.move(str(rebuilt), kept)
            shutil.rmtree(build_root() / item.name, ignore_errors=True)
            original = ws.output / item.subdir / item.file_name
            results.append(
                Comparison(
                    item.name,
                    item.file_name,
                    sha256_file(original),
                    sha256_file(kept),
                    compare_packages(original, kept),
                )
            )
        finished = True
    finally:
        if keep or not finished:  # a failed rebuild keeps its log (named in the error)
            err.print(f"rebuilt packages and logs kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return results
