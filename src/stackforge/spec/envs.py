"""GPU environments (pascal, volta) as data: read from `recipes/variants/<env>.yaml`.

Per-architecture hardware facts (shared memory per block, bf16, tensor cores) are a table
keyed by compute capability, so adding an environment never means adding code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from stackforge.core.console import UsageError
from stackforge.core.workspace import Workspace


@dataclass(frozen=True)
class ArchFacts:
    """What one compute capability can do (NVIDIA's CUDA programming guide, FACTS.md)."""

    smem_per_block: int  # bytes a kernel gets without opting in
    smem_per_block_optin: int  # bytes after cudaFuncSetAttribute(MaxDynamicSharedMemorySize)
    bf16: bool
    fast_fp16: bool
    tensor_cores: bool


ARCH_FACTS: dict[int, ArchFacts] = {
    60: ArchFacts(49152, 49152, bf16=False, fast_fp16=True, tensor_cores=False),
    61: ArchFacts(49152, 49152, bf16=False, fast_fp16=False, tensor_cores=False),
    70: ArchFacts(49152, 98304, bf16=False, fast_fp16=True, tensor_cores=True),
}


@dataclass(frozen=True)
class GpuEnv:
    """One build/runtime environment: which archs it compiles for, with which CUDA."""

    name: str
    archs: tuple[int, ...]  # e.g. (60, 61)
    cuda_version: str  # e.g. "12.9"
    variant_file: Path

    @property
    def torch_cuda_arch_list(self) -> str:
        return ";".join(f"{a // 10}.{a % 10}" for a in self.archs)

    def covers(self, arch: int) -> bool:
        """Whether this environment's code runs on a GPU of compute capability `arch`: SASS of an
        arch runs on newer minors of the same major (sm_60 code on a 6.1 card), never across majors."""
        return any(a == arch or (a // 10 == arch // 10 and a < arch) for a in self.archs)

    def facts(self, arch: int) -> ArchFacts:
        return ARCH_FACTS[arch]

    @property
    def build_tag(self) -> str:
        """What every package built for this environment carries at the start of its build string:
        'cuda129_sm60_61' (pascal), 'cuda129_sm70' (volta). Underscores, not dots: conda's
        `name version build` spec syntax refuses a dot in the build field."""
        return f"cuda{self.cuda_version.replace('.', '')}_sm{'_'.join(str(a) for a in self.archs)}"

    @property
    def smem_limit(self) -> int:
        """The shared memory a kernel may use on every GPU of this environment, without opt-in."""
        return min(ARCH_FACTS[a].smem_per_block for a in self.archs)


_BUILD_ARCHS = re.compile(r"(?:^|_)sm(\d{2}(?:_\d{2})*)(?=_h[0-9a-f]|_?$)")


def build_string_archs(build: str) -> tuple[int, ...] | None:
    """`cuda129_sm60_61_h1a2b3c4d_0` -> (60, 61); None when the build string names no archs."""
    match = _BUILD_ARCHS.search(build)
    return tuple(int(a) for a in match.group(1).split("_")) if match else None


def parse_arch_list(text: str, where: str) -> tuple[int, ...]:
    """'6.0;6.1' -> (60, 61); PTX suffixes ('+PTX') are not ours to interpret here."""
    archs = []
    for item in text.replace(" ", ";").split(";"):
        if not item:
            continue
        major, _, minor = item.partition(".")
        if not (major.isdigit() and minor.isdigit()):
            raise UsageError(f"{where}: bad arch {item!r} in torch_cuda_arch_list", hint="use e.g. '6.0;6.1'")
        arch = int(major) * 10 + int(minor)
        if arch not in ARCH_FACTS:
            known = ", ".join(str(a) for a in ARCH_FACTS)
            raise UsageError(f"{where}: compute capability {item} is not one stackforge targets ({known})")
        archs.append(arch)
    return tuple(archs)


def _single(data: dict, key: str, where: str) -> str:
    value = data.get(key)
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str | int | float):
        raise UsageError(f"{where}: needs exactly one value for {key!r}")
    return str(value)


def load_env(ws: Workspace, name: str) -> GpuEnv:
    path = ws.variants / f"{name}.yaml"
    if not path.is_file():
        raise UsageError(
            f"unknown environment {name!r}: {path} does not exist",
            hint=f"choose one of: {', '.join(list_envs(ws)) or '(none found)'}",
        )
    data = yaml.safe_load(path.read_text()) or {}
    where = str(path)
    return GpuEnv(
        name=name,
        archs=parse_arch_list(_single(data, "torch_cuda_arch_list", where), where),
        cuda_version=_single(data, "cuda_compiler_version", where),
        variant_file=path,
    )


def list_envs(ws: Workspace) -> list[str]:
    return sorted(p.stem for p in ws.variants.glob("*.yaml")) if ws.variants.is_dir() else []


def env_for_capability(ws: Workspace, arch: int) -> GpuEnv | None:
    """The first environment (by name) whose code runs on a GPU of compute capability `arch`."""
    return next((env for env in load_all(ws) if env.covers(arch)), None)


def load_all(ws: Workspace) -> list[GpuEnv]:
    return [load_env(ws, name) for name in list_envs(ws)]
