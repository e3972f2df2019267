"""The environment's variant file as the build reads it: the channels after output/, the solve
date, and what the machines that run the packages offer (the virtual packages of every solve)."""

from __future__ import annotations

from datetime import UTC, datetime

import yaml

from stackforge.core.console import UsageError
from stackforge.spec.envs import GpuEnv

DEFAULT_CHANNELS = ("conda-forge",)

# What the machines that run these packages offer: Linux, glibc >= the sysroot (2.17), x86-64, and a
# CUDA 12 driver (R580 is the last branch for Pascal/Volta). A build host needs no GPU.
_VIRTUAL = (
    ("__unix", "0", "0"),
    ("__linux", "5.10", "0"),
    ("__glibc", "2.17", "0"),
    ("__archspec", "1", "x86_64"),
)


def variant_data(env: GpuEnv) -> dict:
    """The variant file as data: comments and key order do not rebuild anything."""
    return yaml.safe_load(env.variant_file.read_text()) or {}


def _single(value: object) -> object:
    return value[0] if isinstance(value, list) and len(value) == 1 else value


def extra_channels(env: GpuEnv) -> list[str]:
    """Channels after output/: the variant file's `channel_sources` (conda-forge's key, a
    comma-separated string), conda-forge when absent; an empty string means output/ only."""
    value = _single(variant_data(env).get("channel_sources"))
    if value is None:
        return list(DEFAULT_CHANNELS)
    items = value if isinstance(value, list) else str(value).split(",")
    return [str(c).strip() for c in items if str(c).strip()]


def exclude_newer(env: GpuEnv) -> datetime | None:
    """`exclude_newer: "YYYY-MM-DD"` in the variant file: solve build/host environments as the
    channels were on that day, so a rebuild next year resolves the same compilers and libraries."""
    value = _single(variant_data(env).get("exclude_newer"))
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)
    except ValueError as exc:
        raise UsageError(f"{env.variant_file}: exclude_newer={value!r} is not a date (YYYY-MM-DD)") from exc


def solve_virtual_packages(cuda: str) -> list:
    """The virtual packages every solve assumes, with the environment's CUDA driver version."""
    import rattler

    packages = [*_VIRTUAL, ("__cuda", cuda, "0")]
    return [
        rattler.GenericVirtualPackage(rattler.PackageName(n), rattler.Version(v), rattler.BuildString(b))
        for n, v, b in packages
    ]
