"""`stackforge audit binaries`: does every library with CUDA code have code for every GPU arch of
the environment?

A GPU of compute capability X runs a library if the library carries SASS for X (or for an older
minor of the same major: sm_60 covers 6.1) or PTX of some compute_Y <= X that the driver JITs.
Otherwise the user meets "no kernel image is available for execution on the device" at run time,
after the build succeeded: this audit catches that before shipping.

By default it audits the packages in the workspace channel (output/) whose build string carries
the environment's archs (`..._sm60_61_h<hash>_0`); PATHs may name packages, libraries or folders
(an installed prefix) instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from stackforge.build.channel import extract_package
from stackforge.core.console import Failure, UsageError
from stackforge.core.workspace import Workspace
from stackforge.cuda.caps import sm
from stackforge.cuda.fatbin import Coverage, Embedded, list_embedded, may_hold_device_code
from stackforge.spec.envs import GpuEnv, build_string_archs

PACKAGE_SUFFIXES = (".conda", ".tar.bz2")


@dataclass
class LibraryReport:
    """One library's embedded code and its coverage of the environment's archs."""

    label: str  # e.g. "vllm-X.Y.Z-cuda129_sm60_61_h1234abcd_0.conda:lib/.../_C.abi3.so"
    embedded: Embedded
    coverage: list[Coverage]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.coverage)

    def to_json(self) -> dict:
        return {
            "library": self.label,
            "sass": [str(s) for s in self.embedded.sass],
            "ptx": [f"compute_{p}" for p in self.embedded.ptx],
            "coverage": {sm(c.arch): {"status": c.status, "by": c.by} for c in self.coverage},
            "ok": self.ok,
        }


def package_build_string(path: Path) -> str:
    """The build string of a conda package file `name-version-build.conda`."""
    name = path.name
    for suffix in PACKAGE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name.rsplit("-", 1)[-1]


def is_package(path: Path) -> bool:
    return path.is_file() and path.name.endswith(PACKAGE_SUFFIXES)


def env_packages(ws: Workspace, env: GpuEnv) -> list[Path]:
    """Packages in the workspace channel built for exactly this environment's archs."""
    if not ws.output.is_dir():
        return []
    found = []
    for path in sorted(ws.output.rglob("*")):
        if is_package(path) and set(build_string_archs(package_build_string(path)) or ()) == set(env.archs):
            found.append(path)
    return found


def candidate_files(root: Path) -> Iterable[Path]:
    """Regular files under `root` (or `root` itself) that may hold device code; links are skipped so a
    library reached through libfoo.so -> libfoo.so.1 is audited once."""
    if root.is_file():
        if may_hold_device_code(root):
            yield root
        return
    for folder, _dirs, files in os.walk(root):
        for name in sorted(files):
            path = Path(folder) / name
            if not path.is_symlink() and path.is_file() and may_hold_device_code(path):
                yield path


def audit_files(
    files: list[tuple[str, Path]], archs: tuple[int, ...], cuobjdump: Path
) -> list[LibraryReport]:
    """Run cuobjdump over (label, path) pairs, a few at a time, and judge each against `archs`."""
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        embedded = list(pool.map(lambda item: list_embedded(cuobjdump, item[1]), files))
    return [
        LibraryReport(label, emb, [emb.coverage(a) for a in archs])
        for (label, _path), emb in zip(files, embedded, strict=True)
        if emb.has_code
    ]


def collect(ws: Workspace, env: GpuEnv, paths: list[Path], scratch: Path) -> list[tuple[str, Path]]:
    """(label, file) for every file to audit; packages are unpacked under `scratch`."""
    if not paths:
        paths = env_packages(ws, env)
        if not paths:
            raise Failure(
                f"no packages built for environment {env.name!r} in {ws.output} "
                f"(looked for build strings starting {env.build_tag}_)",
                hint=f"build them first, or name libraries/prefixes: stackforge audit binaries -e {env.name} PATH...",
            )
    files: list[tuple[str, Path]] = []
    for i, path in enumerate(paths):
        if not path.exists():
            raise UsageError(f"{path}: no such file or folder")
        if is_package(path):
            root = extract_package(path, scratch / f"{i}")
            files += [(f"{path.name}:{f.relative_to(root)}", f) for f in candidate_files(root)]
        elif path.is_dir():
            files += [(str(f.relative_to(path.parent)), f) for f in candidate_files(path)]
        else:
            files += [(str(path), f) for f in candidate_files(path)]
    return files


def render(env: GpuEnv, reports: list[LibraryReport]) -> Table:
    table = Table(title=f"GPU code per library, environment {env.name}", title_justify="left")
    table.add_column("library", overflow="fold")
    table.add_column("SASS")
    table.add_column("PTX")
    for arch in env.archs:
        table.add_column(sm(arch))
    for rep in reports:
        cells = []
        for cov in rep.coverage:
            if cov.status == "sass":
                cells.append(f"[green]SASS {cov.by}[/green]")
            elif cov.status == "ptx":
                cells.append(f"[yellow]JIT {cov.by}[/yellow]")
            else:
                cells.append("[red bold]MISSING[/red bold]")
        sass = " ".join(str(s) for s in rep.embedded.sass) or "-"
        ptx = " ".join(f"compute_{p}" for p in rep.embedded.ptx) or "-"
        table.add_row(rep.label, sass, ptx, *cells)
    return table


def failure_message(env: GpuEnv, reports: list[LibraryReport]) -> str:
    bad = [r for r in reports if not r.ok]
    lines = [f"{len(bad)} of {len(reports)} libraries cannot run on every GPU of environment {env.name!r}:"]
    for rep in bad:
        missing = ", ".join(sm(c.arch) for c in rep.coverage if not c.ok)
        has = " ".join([str(s) for s in rep.embedded.sass] + [f"compute_{p}" for p in rep.embedded.ptx])
        lines.append(f"  {rep.label}: no SASS or JIT-able PTX for {missing} (it has: {has})")
    return "\n".join(lines)


def require_inputs_cover(ws: Workspace, env: GpuEnv, package: str, inputs: list[tuple[str, Path]]) -> int:
    """The build's check of a derived package's binary inputs (the artifact and its audited native
    dependencies): every library with GPU code must run on every arch of the environment, or the
    build stops naming the library and the arch, before anything is made from it. Returns the
    number of libraries with GPU code."""
    import tempfile

    from stackforge.cuda.fatbin import find_cuobjdump

    cuobjdump = find_cuobjdump([ws.root / ".pixi" / "envs" / env.name])
    with tempfile.TemporaryDirectory(prefix="stackforge-inputs-") as scratch:
        files: list[tuple[str, Path]] = []
        for i, (label, archive) in enumerate(inputs):
            root = extract_package(archive, Path(scratch) / str(i))
            files += [(f"{label}:{f.relative_to(root)}", f) for f in candidate_files(root)]
        reports = audit_files(files, env.archs, cuobjdump)
    if not all(r.ok for r in reports):
        raise Failure(
            f"{package}: its binary inputs cannot run on environment {env.name}; nothing was built\n"
            + failure_message(env, reports),
            hint=f"pin a build that carries code for {', '.join(sm(a) for a in env.archs)} "
            f"(`stackforge lock --update-binaries`), or compile it: --from-source {package}",
        )
    return len(reports)
