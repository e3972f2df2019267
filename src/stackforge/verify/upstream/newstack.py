"""`stackforge stack new`: a stack for another vLLM release, started from an existing stack.

Reads the release's pins from PyPI (`pins`), writes stacks/NAME/{stack.yaml, git-repos.txt}
(`stackfiles`), copies the source stack's patch series and tries each patch on the new releases
(`trial`). Everything is made in a hidden folder beside stacks/NAME and renamed into place last,
never over an existing folder: a failed or interrupted run leaves nothing, and nothing a user
made is replaced.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import tempfile
import time
import urllib.error
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

from stackforge.core.console import Failure, UsageError
from stackforge.core.files import waiting_lock
from stackforge.core.workspace import STACKS, Workspace
from stackforge.sources.series import series_files
from stackforge.spec.stack import Stack, load_stack
from stackforge.verify.upstream import pins, stackfiles
from stackforge.verify.upstream.pypi import PYPI_PROJECT, cache_dir, index_files, index_url, vllm_sdist
from stackforge.verify.upstream.trial import SeriesTrial, Verdict, try_series

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_VERSION = re.compile(r"\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?")
T = TypeVar("T")


@dataclass
class Report:
    name: str
    path: str
    source: str  # the stack it was started from
    versions: dict[str, str]
    reads: list[dict[str, str]]  # what was read, and where
    lines: list[stackfiles.Row]  # git-repos.txt, line by line
    series: list[SeriesTrial]
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def conflicts(self) -> list[str]:
        return [f"{s.name}/{v.patch}" for s in self.series for v in s.verdicts if v.verdict == "conflict"]

    def as_json(self) -> dict:
        data = asdict(self)
        data["conflicts"] = self.conflicts
        return data


def source_workspace(ws: Workspace, source: str | None) -> Workspace:
    """The stack to start from: `source` (a stacks/ name, or "default"), else the chosen one."""
    if source is None:
        return ws
    if source == "default":
        return Workspace(ws.root)
    chosen = Workspace(ws.root, source)
    if not _NAME.fullmatch(source) or not chosen.manifest.is_file():
        others = "".join(f", {s}" for s in ws.stacks() if not s.startswith("."))
        raise UsageError(
            f"no stack {source!r} to start from: {chosen.manifest} does not exist",
            hint=f"stacks here: default{others}",
        )
    return chosen


def _offline(what: str, call: Callable[[], T]) -> T:
    """Run a download; no network becomes one line that names the cache."""
    try:
        return call()
    except Failure as exc:
        cause = exc.__cause__
        if isinstance(cause, urllib.error.URLError) and not isinstance(cause, urllib.error.HTTPError):
            raise Failure(
                f"cannot reach the package index for {what}, and the cache {cache_dir()} does not hold it: "
                f"{getattr(cause, 'reason', cause)}",
                hint="connect this machine (or set STACKFORGE_PYPI_INDEX to a mirror), or copy a filled cache "
                "here (STACKFORGE_CACHE names it)",
            ) from exc
        raise


def _sdist(version: str) -> Path:
    # vllm_sdist keeps extracted trees in cache_dir()/sdist; a cached release needs no index
    if not (cache_dir() / "sdist" / f"vllm-{version}" / "CMakeLists.txt").is_file():
        files = _offline(f"vLLM {version}", lambda: index_files("vllm"))
        if not any(f.filename == f"vllm-{version}.tar.gz" for f in files):
            released = sorted(
                {m[1] for f in files if (m := re.match(r"vllm-([\d.]+)\.tar\.gz$", f.filename))},
                key=lambda v: tuple(map(int, v.split("."))),
            )
            near = [v for v in released if v.rsplit(".", 1)[0] == version.rsplit(".", 1)[0]] or released[-5:]
            raise UsageError(
                f"vLLM {version} is not on {index_url('vllm')}: it lists no vllm-{version}.tar.gz",
                hint=f"releases there include {', '.join(near)}",
            )
    return _offline(f"vLLM {version}", lambda: vllm_sdist(version))


def read_release(version: str) -> stackfiles.Reading:
    """The pins of vLLM `version` and of the torch it pins, from PyPI's files (or the cache)."""
    tree = _sdist(version)
    torch_pin = pins.torch_pin(tree)
    requirement, commit = _offline(f"torch {torch_pin.value}", lambda: pins.torch_reads(torch_pin.value))
    triton, how = _offline(f"triton{requirement.value}", lambda: pins.triton_release(requirement.value))
    return stackfiles.Reading(
        versions={"vllm": version, "pytorch": torch_pin.value, "triton": triton},
        torch_pin=torch_pin,
        triton_requirement=requirement,
        triton_how=how,
        torch_commit=commit,
        vllm_commit=pins.vllm_commit(tree),
        externals=pins.externals(tree),
    )


def _reads(r: stackfiles.Reading) -> list[dict[str, str]]:
    v = r.versions
    rows = [
        {
            "what": "torch pin",
            "value": r.torch_pin.value,
            "where": f"vllm {v['vllm']} sdist {r.torch_pin.where}",
        },
        {
            "what": "triton",
            "value": f"triton{r.triton_requirement.value} -> {v['triton']}",
            "where": f"torch {v['pytorch']} wheel {r.triton_requirement.where} ({r.triton_how})",
        },
    ]
    if r.torch_commit:
        rows.append(
            {
                "what": "torch commit",
                "value": r.torch_commit.value,
                "where": f"torch {v['pytorch']} wheel {r.torch_commit.where}",
            }
        )
    if r.vllm_commit:
        rows.append(
            {
                "what": "vllm commit",
                "value": r.vllm_commit.value,
                "where": f"vllm {v['vllm']} sdist {r.vllm_commit.where} (abbreviated)",
            }
        )
    for e in r.externals:
        env = f", {e.env}" if e.env else ""
        rows.append({"what": e.project, "value": f"{e.value} ({e.kind})", "where": f"{e.where}{env}"})
    return rows


def _rename_new(src: Path, dest: Path) -> None:
    """rename(2) that never replaces `dest` (renameat2 RENAME_NOREPLACE; else check, then rename)."""
    fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if fn is not None:
        if fn(-100, os.fsencode(src), -100, os.fsencode(dest), 1) == 0:  # AT_FDCWD, NOREPLACE
            return
        if ctypes.get_errno() == errno.EEXIST:
            raise FileExistsError(errno.EEXIST, "exists", str(dest))
        if ctypes.get_errno() not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), str(dest))
    if dest.exists():
        raise FileExistsError(errno.EEXIST, "exists", str(dest))
    os.rename(src, dest)


def _refuse_existing(target: Path) -> None:
    if target.exists() or target.is_symlink():
        raise UsageError(
            f"{target} already exists: nothing was written",
            hint="choose another NAME, or move that folder away yourself (stackforge replaces no stack)",
        )


def new_stack(
    ws: Workspace,
    name: str,
    vllm: str,
    source: str | None = None,
    progress: Callable[[str], None] = lambda _m: None,
) -> Report:
    """Make stacks/`name` for vLLM `vllm` from the stack `source` (see `source_workspace`)."""
    started = time.perf_counter()
    if not _NAME.fullmatch(name) or name == "default":
        raise UsageError(
            f"{name!r} is not a stack name", hint="letters, digits, '.', '_' and '-'; e.g. vllm-0.33"
        )
    if not _VERSION.fullmatch(vllm):
        raise UsageError(f"--vllm {vllm!r} is not a release number", hint="e.g. --vllm 0.33.0")
    origin_ws = source_workspace(ws, source)
    old_stack, old_manifest = load_stack(origin_ws), stackfiles.old_lines(origin_ws.manifest)
    target = ws.root / STACKS / name
    _refuse_existing(target)
    with waiting_lock(ws.state / "locks" / f"stack-new-{name}.lock", f"making stacks/{name}"):
        for left in target.parent.glob(f".{name}.new-*") if target.parent.is_dir() else []:
            shutil.rmtree(left, ignore_errors=True)  # ours (we hold the lock), from a killed run
        return _make(ws, name, vllm, origin_ws, old_stack, old_manifest, progress, started)


def _make(
    ws: Workspace,
    name: str,
    vllm: str,
    origin_ws: Workspace,
    old_stack: Stack,
    old_manifest: list[stackfiles.OldLine],
    progress: Callable[[str], None],
    started: float,
) -> Report:
    origin, target = origin_ws.stack or "default", ws.root / STACKS / name
    progress(f"reading the pins of vLLM {vllm} from PyPI (cache: {cache_dir()})")
    reading = read_release(vllm)
    read_s = time.perf_counter() - started
    old_text = origin_ws.stack_file.read_text(encoding="utf-8")
    manifest, rows = stackfiles.manifest_text(old_manifest, reading, old_stack.versions, name, origin)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.new-", dir=target.parent))
    try:
        files = {
            "stack.yaml": stackfiles.stack_text(name, reading, old_text, old_stack.versions, origin),
            "git-repos.txt": manifest,
        }
        stackfiles.write(staging, files)
        if origin_ws.patches.is_dir():
            shutil.copytree(origin_ws.patches, staging / "patches", ignore=shutil.ignore_patterns(".*"))
        staged = Workspace(ws.root, staging.name)
        load_stack(staged)  # what we wrote must read back
        trials = _try_all(staged, reading.versions, _bases(ws, origin_ws), progress)
        _refuse_existing(target)
        _rename_new(staging, target)
    except FileExistsError:
        shutil.rmtree(staging, ignore_errors=True)
        _refuse_existing(target)
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    elapsed = time.perf_counter() - started
    notes = [
        "a patch that conflicts is skipped, so the patches after it are tried without it",
        f"copied from {origin}: patches/ only (not its notes, checks or lock file)",
    ]
    return Report(
        name=name,
        path=str(target),
        source=origin,
        versions=reading.versions,
        reads=_reads(reading),
        lines=rows,
        series=trials,
        timings={
            "read_s": round(read_s, 2),
            "check_s": round(elapsed - read_s, 2),
            "total_s": round(elapsed, 2),
        },
        notes=notes,
    )


def _bases(ws: Workspace, origin: Workspace) -> dict[str, list[tuple[str, bool]]]:
    """package -> releases its series may have been written against: the source stack's (may be
    required), then every other stack's of the workspace (read only for blobs still missing), since
    a stack made by `stack new` carries its source's series until they are rebased."""
    bases: dict[str, list[tuple[str, bool]]] = {}
    others = [Workspace(ws.root)] + [Workspace(ws.root, s) for s in ws.stacks() if not s.startswith(".")]
    for stack_ws, required in [(origin, True)] + [(o, False) for o in others if o != origin]:
        try:
            versions = load_stack(stack_ws).versions
        except UsageError:
            continue  # another stack's broken file is not this command's business
        for package, version in versions.items():
            if version not in (v for v, _ in bases.get(package, [])):
                bases.setdefault(package, []).append((version, required))
    return bases


def _try_all(
    staged: Workspace,
    versions: dict[str, str],
    bases: dict[str, list[tuple[str, bool]]],
    progress: Callable[[str], None],
) -> list[SeriesTrial]:
    trials = []
    folders = (
        sorted(p.name for p in staged.patches.iterdir() if p.is_dir()) if staged.patches.is_dir() else []
    )
    with tempfile.TemporaryDirectory(prefix="stackforge-stack-new-") as scratch:
        for series in folders:
            patches = series_files(staged, series)
            if not patches:
                continue
            if series not in PYPI_PROJECT:
                verdicts = [Verdict(p.name, "unchecked", detail="needs a clone") for p in patches]
                trials.append(SeriesTrial(series, "nothing (no PyPI release stands in)", verdicts, "none"))
                continue
            version = versions[series]
            progress(f"trying the {len(patches)} patch(es) of {series} on {PYPI_PROJECT[series]} {version}")
            trials.append(
                _offline(
                    f"{PYPI_PROJECT[series]} {version}",
                    lambda s=series, p=patches, v=version: try_series(
                        s, p, v, bases.get(s, []), Path(scratch)
                    ),
                )
            )
    return trials
