"""Rust crates vendored at clone time, so that a build needs no network.

A git-repos.txt line with `cargo=PATH` (a Cargo.toml in the checkout) gets, after checkout and
patches, `cargo vendor --locked` of that manifest into `sources/<name>.crates/`: beside the
checkout, not in it, because in it the crates would be hundreds of untracked folders of the
checkout (seen by status and `git clean`, moved aside by a pin change). The folder holds

    vendor/              the crates, in cargo's layout with their checksum files
    .cargo/config.toml   the [source] replacement cargo printed, `directory = "vendor"`: a path
                         relative to the folder, so a copy anywhere works (CARGO_HOME=<copy>/.cargo)
    Cargo.lock.sha256    the sha256 of the Cargo.lock it was made from

A rerun with the same Cargo.lock does nothing. A changed one is vendored into
`sources/.<name>.crates.partial-PID` and renamed into place, so an interrupted vendor leaves the
old folder or none, never a part, and the next run starts afresh (cargo's download cache
keeps the crates it had fetched).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from stackforge.core.console import Failure, echo_command, info
from stackforge.core.files import atomic_write, sha256_file
from stackforge.core.workspace import Workspace
from stackforge.spec.manifest import Source

SUFFIX = ".crates"
DIGEST = "Cargo.lock.sha256"
CONFIG = ".cargo/config.toml"


def crates_dir(ws: Workspace, src: Source) -> Path:
    return ws.sources / f"{src.name}{SUFFIX}"


def cargo_lock(ws: Workspace, src: Source) -> Path:
    assert src.cargo is not None
    return ws.checkout(src.name) / Path(src.cargo).parent / "Cargo.lock"


def lock_digest(ws: Workspace, src: Source) -> str | None:
    lock = cargo_lock(ws, src)
    return sha256_file(lock) if lock.is_file() else None


def vendor_problem(ws: Workspace, src: Source) -> str:
    """Why sources/<name>.crates is not the vendored crates of the checkout's Cargo.lock ('' if it is)."""
    folder = crates_dir(ws, src)
    digest = lock_digest(ws, src)
    if digest is None:
        return f"has no {cargo_lock(ws, src).relative_to(ws.sources)}"
    try:
        made_from = (folder / DIGEST).read_text().strip()
    except OSError:
        return f"has no vendored crates ({folder.name}/)"
    return (
        ""
        if made_from == digest and (folder / CONFIG).is_file()
        else f"{folder.name}/ is for another Cargo.lock"
    )


def vendor_crates(ws: Workspace, src: Source, *, quiet: bool = False, dry_run: bool = False) -> str:
    """Vendor src's crates unless sources/<name>.crates already holds them; say what was done."""
    folder = crates_dir(ws, src)
    for partial in ws.sources.glob(f".{folder.name}.*-*"):
        if not dry_run:  # left by an interrupted vendor: never anyone's work
            info(f"{src.name}: removing {partial.name} left by an interrupted run")
            shutil.rmtree(partial, ignore_errors=True)
    problem = vendor_problem(ws, src)
    if not problem:
        return ""
    lock = cargo_lock(ws, src)
    if not lock.is_file():
        raise Failure(
            f"{src.where}: cargo={src.cargo}, but sources/{src.name} has no {lock.relative_to(ws.checkout(src.name))}",
            hint="`cargo vendor --locked` needs the Cargo.lock beside the manifest: fix cargo= in the line",
        )
    if dry_run:
        return f"would vendor its crates ({problem})"
    cargo = shutil.which("cargo")
    if cargo is None:
        raise Failure(
            f"cargo is not installed: sources/{src.name}'s crates ({src.where} cargo={src.cargo}) are vendored "
            "with `cargo vendor` for a build without network",
            hint="the pixi environments have it (conda-forge's `rust`, pixi.toml: run `pixi install`); "
            "elsewhere install Rust's cargo (Debian/Ubuntu: apt-get install cargo), then run the same command again",
        )
    tmp = ws.sources / f".{folder.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        config = _cargo_vendor(ws, src, cargo, tmp, quiet=quiet)
        atomic_write(tmp / CONFIG, config)
        atomic_write(tmp / DIGEST, f"{lock_digest(ws, src)}\n")
        _replace(folder, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    crates = (
        sum(1 for p in (folder / "vendor").iterdir() if p.is_dir()) if (folder / "vendor").is_dir() else 0
    )
    return f"{crates} crate(s) vendored in sources/{folder.name}/"


def _cargo_vendor(ws: Workspace, src: Source, cargo: str, tmp: Path, *, quiet: bool) -> str:
    """Run `cargo vendor --locked` into tmp/vendor; return the [source] config it printed."""
    manifest = ws.checkout(src.name) / (src.cargo or "")
    argv = [cargo, "vendor", "--locked", "--manifest-path", str(manifest), "vendor"]
    if not quiet:
        echo_command(argv, tmp)
    log = ws.state / "logs" / f"sources-{src.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(argv, cwd=tmp, capture_output=True, text=True, check=False)
    with log.open("a", encoding="utf-8") as fh:
        fh.write(f"$ {' '.join(argv)}  (in {tmp})\n{proc.stderr}{proc.stdout}")
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        reason = next((ln for ln in lines if ln.startswith("error")), lines[-1] if lines else "no output")
        raise Failure(
            f"{src.name}: `cargo vendor --locked` failed: {reason}",
            hint=f"the crate sources must be reachable now (crates.io, git); with --locked a Cargo.lock "
            f"that does not fit {src.cargo} is refused. Full output: {log}; nothing half-vendored was kept",
        )
    if 'directory = "vendor"' not in proc.stdout:
        raise Failure(
            f"{src.name}: `cargo vendor` printed no [source] replacement for vendor/",
            hint=f"see {log}; a cargo too old for Cargo.lock's version fails this way: update cargo",
        )
    return proc.stdout


def _replace(folder: Path, new: Path) -> None:
    """Put `new` at `folder`; an old folder is moved aside first and removed after."""
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    if folder.exists():
        os.replace(folder, old)
    os.replace(new, folder)
    shutil.rmtree(old, ignore_errors=True)
