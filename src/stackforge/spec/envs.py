"""GPU environments (pascal, volta) as data: read from `recipes/variants/<env>.yaml`.

The hardware facts of each arch are the table in `stackforge.cuda.caps`; an environment is a
name, its archs and its CUDA version, so adding one never means adding code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from stackforge.core.console import UsageError
from stackforge.core.workspace import Workspace
from stackforge.cuda.caps import CAPABILITIES, cuda_can_compile, dotted, parse_dotted, sass_runs_on


@dataclass(frozen=True)
class GpuEnv:
    """One build/runtime environment: which archs it compiles for, with which CUDA."""

    name: str
    archs: tuple[int, ...]  # e.g. (60, 61)
    cuda_version: str  # e.g. "12.9"
    variant_file: Path

    @property
    def torch_cuda_arch_list(self) -> str:
        return ";".join(dotted(a) for a in self.archs)

    def covers(self, arch: int) -> bool:
        """Whether this environment's code runs on a GPU of compute capability `arch`."""
        return any(sass_runs_on(a, arch) for a in self.archs)

    @property
    def build_tag(self) -> str:
        """What every package built for this environment carries at the start of its build string:
        'cuda129_sm60_61' (pascal), 'cuda129_sm70' (volta). Underscores, not dots: conda's
        `name version build` spec syntax refuses a dot in the build field."""
        return f"cuda{self.cuda_version.replace('.', '')}_sm{'_'.join(str(a) for a in self.archs)}"

    @property
    def smem_per_block(self) -> int:
        """Shared memory a kernel may use on every GPU of this environment without opting in."""
        return min(CAPABILITIES[a].smem_per_block for a in self.archs)

    @property
    def smem_per_block_optin(self) -> int:
        """Shared memory a kernel may use on every GPU of this environment after opting in."""
        return min(CAPABILITIES[a].smem_per_block_optin for a in self.archs)


_BUILD_ARCHS = re.compile(r"(?:^|_)sm(\d{2}(?:_\d{2})*)(?=_h[0-9a-f]|_?$)")


def build_string_archs(build: str) -> tuple[int, ...] | None:
    """`cuda129_sm60_61_h1a2b3c4d_0` -> (60, 61); None when the build string names no archs."""
    match = _BUILD_ARCHS.search(build)
    return tuple(int(a) for a in match.group(1).split("_")) if match else None


def parse_arch_list(text: str, where: str) -> tuple[int, ...]:
    """'6.0;6.1' -> (60, 61), refusing what cannot be a build target: an empty list, duplicates,
    unknown archs, and archs of different majors (SASS never crosses a major, so one environment
    is one GPU family). PTX suffixes ('+PTX') are not ours to interpret here."""
    archs: list[int] = []
    for item in text.replace(" ", ";").split(";"):
        if not item:
            continue
        arch = parse_dotted(item)
        if arch is None:
            raise UsageError(f"{where}: bad arch {item!r} in torch_cuda_arch_list", hint="use e.g. '6.0;6.1'")
        if arch not in CAPABILITIES:
            known = ", ".join(c.dotted for c in CAPABILITIES.values())
            raise UsageError(f"{where}: compute capability {item} is not one stackforge targets ({known})")
        if arch in archs:
            raise UsageError(f"{where}: compute capability {item} is listed twice in torch_cuda_arch_list")
        archs.append(arch)
    if not archs:
        raise UsageError(
            f"{where}: torch_cuda_arch_list is empty: the packages would carry no GPU code",
            hint="list the archs of the environment, e.g. '6.0;6.1'",
        )
    families = {CAPABILITIES[a].family for a in archs}
    if len(families) > 1:
        raise UsageError(
            f"{where}: torch_cuda_arch_list mixes {' and '.join(sorted(families))}: one environment is one GPU family",
            hint="make one variant file per family (pascal: '6.0;6.1', volta: '7.0')",
        )
    return tuple(archs)


def _node_line(node: yaml.Node | None, key: str) -> int | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if getattr(k, "value", None) == key:
                return v.start_mark.line + 1
    return None


def _single(data: dict, node: yaml.Node | None, key: str, path: Path) -> str:
    """One string value of `key`: a list of one, or a scalar. A YAML number is refused, since
    '12.10' would silently become 12.1: variant values are quoted strings."""
    line = _node_line(node, key)
    where = f"{path}:{line}" if line else str(path)
    if key not in data:
        raise UsageError(
            f"{path}: no {key!r} key", hint=f'add `{key}: ["..."]` (a list of one quoted string)'
        )
    value = data[key]
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, str):
        kind = type(value).__name__
        raise UsageError(
            f"{where}: {key} must be one quoted string, not {kind} {value!r}",
            hint=f'write it as a list of one quoted string, e.g. {key}:\n    - "12.9"',
        )
    return value


def load_env(ws: Workspace, name: str) -> GpuEnv:
    path = ws.variants / f"{name}.yaml"
    if not name or "/" in name or not path.is_file():
        raise UsageError(
            f"unknown environment {name!r}: {path} does not exist",
            hint=f"choose one of: {', '.join(list_envs(ws)) or '(none found)'}",
        )
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text)
        data = yaml.safe_load(text) or {}
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise UsageError(f"{path}{line}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a variant file is a mapping of keys to lists, not {type(data).__name__}")
    archs_text = _single(data, node, "torch_cuda_arch_list", path)
    archs = parse_arch_list(archs_text, f"{path}:{_node_line(node, 'torch_cuda_arch_list') or 1}")
    cuda = _single(data, node, "cuda_compiler_version", path)
    cuda_where = f"{path}:{_node_line(node, 'cuda_compiler_version') or 1}"
    if not re.fullmatch(r"\d+\.\d+", cuda):
        raise UsageError(
            f"{cuda_where}: cuda_compiler_version {cuda!r} is not MAJOR.MINOR", hint='e.g. "12.9"'
        )
    for arch in archs:
        if not cuda_can_compile(cuda, arch):
            cap = CAPABILITIES[arch]
            raise UsageError(
                f"{cuda_where}: CUDA {cuda} cannot compile for compute capability {cap.dotted} "
                f"(CUDA {cap.min_cuda} to {cap.max_cuda} can)",
                hint=f'use cuda_compiler_version "{cap.max_cuda}"',
            )
    return GpuEnv(name=name, archs=archs, cuda_version=cuda, variant_file=path)


def list_envs(ws: Workspace) -> list[str]:
    return sorted(p.stem for p in ws.variants.glob("*.yaml")) if ws.variants.is_dir() else []


def env_for_capability(ws: Workspace, arch: int) -> GpuEnv | None:
    """The first environment (by name) whose code runs on a GPU of compute capability `arch`."""
    return next((env for env in load_all(ws) if env.covers(arch)), None)


def load_all(ws: Workspace) -> list[GpuEnv]:
    return [load_env(ws, name) for name in list_envs(ws)]
