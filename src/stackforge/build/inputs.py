"""Binary inputs: the conda-forge artifacts a derived package repackages, pinned like git inputs.

`stackforge lock` resolves each stack.yaml `derive:` entry once, by a solve against the
environment's channels (py-rattler, the solver pixi uses), and records the artifact and the
native packages it audits with URL and sha256 in stackforge.lock. Every later build fetches by
that URL into the user cache, checks the sha256 and refuses a mismatch: the same lock gives the
same bytes, or no build. A lock without an entry stops the build with what to run; nothing here
ever computes a pin from a file it has not downloaded.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from stackforge.build.variant import exclude_newer, extra_channels, solve_virtual_packages
from stackforge.core.console import Failure, escape, info
from stackforge.core.files import sha256_file, waiting_lock
from stackforge.core.git import redact_url
from stackforge.spec.envs import GpuEnv
from stackforge.spec.stack import Derive

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Pin:
    """One artifact as the lock records it."""

    name: str
    version: str
    build: str
    subdir: str
    url: str
    sha256: str
    depends: tuple[str, ...] = ()
    timestamp: int = 0  # the channel's build time (seconds): the derived package's file times

    @property
    def file_name(self) -> str:
        return urllib.parse.unquote(self.url.rsplit("/", 1)[-1])

    def label(self) -> str:
        return f"{self.name}-{self.version}-{self.build}"

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "build": self.build,
            "subdir": self.subdir,
            "url": self.url,
            "sha256": self.sha256,
            "depends": list(self.depends),
            "timestamp": self.timestamp,
        }

    @classmethod
    def from_json(cls, data: dict, where: str) -> Pin:
        try:
            return cls(**{**data, "depends": tuple(data.get("depends") or ())})
        except TypeError as exc:
            raise Failure(
                f"{where}: not a binary pin ({exc})", hint="rewrite it with `stackforge lock`"
            ) from exc


@dataclass(frozen=True)
class DerivedPins:
    """What one derived package rests on: the artifact it repackages and the audited natives."""

    input: Pin
    audit: tuple[Pin, ...]

    def to_json(self) -> dict:
        return {"input": self.input.to_json(), "audit": [p.to_json() for p in self.audit]}

    @classmethod
    def from_json(cls, data: dict, where: str) -> DerivedPins:
        if not isinstance(data, dict) or "input" not in data:
            raise Failure(f"{where}: not a binary pin", hint="rewrite it with `stackforge lock`")
        return cls(
            Pin.from_json(data["input"], f"{where}.input"),
            tuple(Pin.from_json(p, f"{where}.audit") for p in data.get("audit") or ()),
        )


def _pin(record) -> Pin:
    sha = record.sha256
    if sha is None:
        raise Failure(
            f"{record.url}: the channel's index gives no sha256 for {record.file_name}",
            hint="a binary input is pinned by sha256: use a channel whose repodata.json carries it",
        )
    return Pin(
        name=record.name.normalized,
        version=str(record.version),
        build=str(record.build),
        subdir=str(record.subdir),
        url=redact_url(str(record.url)),
        sha256=sha.hex() if isinstance(sha, bytes) else str(sha),
        depends=tuple(record.depends),
        timestamp=int(record.timestamp.timestamp()) if record.timestamp else 0,
    )


class NoArtifact(Failure):
    """The channels answered, and hold no artifact that satisfies the request."""


def resolve(env: GpuEnv, derive: Derive, version: str, python: str | None) -> DerivedPins:
    """Solve the derived package's input against the environment's channels, once. Raises
    NoArtifact when the channels have none (the lock then records that, and the package compiles)."""
    import rattler
    from rattler.exceptions import SolverError

    channels = extra_channels(env)
    if not channels:
        raise Failure(f"{env.variant_file}: no channel to resolve {derive.input} from (channel_sources)")
    specs = [derive.spec(version)] + ([f"python {python}.*"] if python else [])
    try:
        records = asyncio.run(
            rattler.solve(
                [rattler.Channel(c) for c in channels],
                specs,
                platforms=["linux-64", "noarch"],
                virtual_packages=solve_virtual_packages(env.cuda_version),
                exclude_newer=exclude_newer(env),
            )
        )
    except SolverError as exc:
        raise NoArtifact(f"no artifact satisfies {', '.join(specs)}: " + " ".join(str(exc).split())) from exc
    except Exception as exc:  # rattler's fetch errors explain themselves
        raise Failure(
            f"cannot resolve {', '.join(specs)} for {derive.package} ({env.name}) against {', '.join(channels)}: "
            + " ".join(str(exc).split()),
            hint="resolving needs the channel (conda-forge) once; run `stackforge lock` where it is reachable, "
            "or build the package from source: --from-source " + derive.package,
        ) from exc
    by_name = {r.name.normalized: r for r in records}
    missing = [n for n in (derive.input, *derive.audit) if n not in by_name]
    if missing:
        raise Failure(
            f"resolving {derive.package} for {env.name}: {', '.join(missing)} not in the solved environment "
            f"({', '.join(sorted(by_name))})",
            hint="fix `derive: ... audit:` in stack.yaml",
        )
    return DerivedPins(_pin(by_name[derive.input]), tuple(_pin(by_name[n]) for n in derive.audit))


def cache_dir() -> Path:
    """Downloaded artifacts by sha256, shared by the user's workspaces: $STACKFORGE_BINARY_CACHE, else
    $XDG_CACHE_HOME (~/.cache)/stackforge/binaries."""
    explicit = os.environ.get("STACKFORGE_BINARY_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stackforge" / "binaries"


def fetch(pin: Pin) -> Path:
    """The artifact, from the cache or its URL, checked against the lock's sha256."""
    folder = cache_dir() / pin.sha256[:2]
    dest = folder / f"{pin.sha256}-{pin.file_name}"
    if dest.is_file():
        if sha256_file(dest) == pin.sha256:
            return dest
        dest.unlink()  # a corrupted cache entry is refetched, never trusted
    folder.mkdir(parents=True, exist_ok=True)
    with waiting_lock(folder / f"{pin.sha256}.lock", f"downloading {pin.file_name}"):
        if dest.is_file():
            return dest
        part = dest.with_name(dest.name + ".part")
        info(f"fetching {escape(pin.url)}")
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(pin.url, timeout=60) as response, part.open("wb") as out:
                while chunk := response.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, OSError) as exc:
            part.unlink(missing_ok=True)
            raise Failure(
                f"cannot download {pin.label()} from {pin.url}: {getattr(exc, 'reason', exc)}",
                hint="the build needs each binary input once; put the file in "
                f"{folder} as {dest.name}, or build from source: --from-source",
            ) from exc
        if digest.hexdigest() != pin.sha256:
            part.unlink(missing_ok=True)
            raise Failure(
                f"{pin.url}: sha256 {digest.hexdigest()} does not match stackforge.lock's {pin.sha256}; "
                "the file was not used",
                hint="the channel now serves other bytes under this name: review the change, then re-pin "
                "with `stackforge lock --update-binaries`",
            )
        shutil.move(part, dest)
    return dest
