"""Several GPUs: which vLLM servers to start on which cards, and why (pure functions, no processes).

A layout turns the GPUs `stackforge doctor` found (each with its environment) into server groups:
  per-gpu  one vLLM server per GPU, all behind the router (session affinity on X-Session-ID)
  tp       one server per environment group, --tensor-parallel-size N over identical cards (NCCL)
  dp       one server per environment group, vLLM's own --data-parallel-size N load balancer
GPUs of different environments (a P40 and a V100) never share a process: each group gets its own
server(s), and the router stands in front of them all. `auto` picks per-gpu unless the model is too
big for one card, then the smallest tensor-parallel group it fits in; `Fleet.reason` says why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from stackforge.core.console import Failure, UsageError
from stackforge.run.gpus import Gpu

LAYOUTS = ("auto", "per-gpu", "tp", "dp")

# The weights must leave room for the KV cache and CUDA graphs inside vLLM's share of the card
# (--gpu-memory-utilization 0.85): at most 60% of the card for weights leaves ~25% for the rest.
WEIGHTS_SHARE = 0.60

# vLLM flags whose value the layout decides; a user who passes them would fight the plan.
LAYOUT_FLAGS = ("--tensor-parallel-size", "-tp", "--data-parallel-size", "-dp")

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")


@dataclass(frozen=True)
class Server:
    """One `vllm serve` process."""

    env: str
    gpus: tuple[int, ...]  # nvidia-smi indices (CUDA_DEVICE_ORDER=PCI_BUS_ID makes CUDA agree)
    port: int
    host: str = "127.0.0.1"
    tensor_parallel: int = 1
    data_parallel: int = 1

    @property
    def visible_devices(self) -> str:
        return ",".join(map(str, self.gpus))

    def environment(self) -> dict[str, str]:
        return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": self.visible_devices}

    def vllm_args(self) -> list[str]:
        return ["--host", self.host, "--port", str(self.port), *self.parallel_args()]

    def parallel_args(self) -> list[str]:
        args = []
        if self.tensor_parallel > 1:
            args += ["--tensor-parallel-size", str(self.tensor_parallel)]
        if self.data_parallel > 1:
            args += ["--data-parallel-size", str(self.data_parallel)]
        return args


@dataclass(frozen=True)
class Fleet:
    layout: str  # the layout used (auto resolved)
    servers: tuple[Server, ...]
    reason: str  # one line: why this layout
    host: str  # where clients connect: the router, or the only server
    port: int
    skipped: tuple[str, ...] = ()  # GPUs left out, each with why

    @property
    def router(self) -> bool:
        return len(self.servers) > 1

    @property
    def backends(self) -> list[tuple[str, int]]:
        return [(s.host, s.port) for s in self.servers]


def parse_gpu_list(text: str) -> list[int]:
    """`--gpus 0,2`: nvidia-smi indices, or `all`."""
    if text.strip() == "all":
        return []
    try:
        indices = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise UsageError(f"--gpus {text!r}: expected indices like 0,1 or 'all'") from None
    if not indices or any(i < 0 for i in indices) or len(set(indices)) != len(indices):
        raise UsageError(f"--gpus {text!r}: expected distinct indices like 0,1 or 'all'")
    return indices


def select(gpus: Sequence[Gpu], wanted: Sequence[int]) -> list[Gpu]:
    """The GPUs --gpus names (all when empty); an unknown index is a usage error."""
    if not wanted:
        return list(gpus)
    by_index = {g.index: g for g in gpus}
    missing = [i for i in wanted if i not in by_index]
    if missing:
        have = ", ".join(str(g) for g in gpus) or "none"
        raise UsageError(f"--gpus: no GPU {', '.join(map(str, missing))} here (nvidia-smi lists {have})")
    return [by_index[i] for i in wanted]


def refuse_layout_flags(user_args: Sequence[str]) -> None:
    for arg in user_args:
        name = arg.split("=", 1)[0]
        if name in LAYOUT_FLAGS or name.replace("_", "-") in LAYOUT_FLAGS:
            raise UsageError(
                f"{name} is set by the layout",
                hint="use stackforge's --layout tp|dp|per-gpu and --gpus instead",
            )


def take_address(user_args: Sequence[str]) -> tuple[list[str], str, int]:
    """--host/--port out of the vLLM arguments: with several servers they are the router's."""
    rest: list[str] = []
    found = {"--host": "127.0.0.1", "--port": "8000"}
    i = 0
    while i < len(user_args):
        name, eq, value = user_args[i].partition("=")
        if name in found:
            if not eq and i + 1 < len(user_args):
                value, i = user_args[i + 1], i + 1
            found[name] = value
        else:
            rest.append(user_args[i])
        i += 1
    if not found["--port"].isdigit():
        raise UsageError(f"--port {found['--port']!r}: expected a port number")
    return rest, found["--host"], int(found["--port"])


def groups_by_env(gpus: Sequence[Gpu]) -> tuple[dict[str, list[Gpu]], list[str]]:
    """GPUs per environment, in nvidia-smi order; GPUs no environment covers are left out."""
    groups: dict[str, list[Gpu]] = {}
    skipped = []
    for g in gpus:
        if g.env:
            groups.setdefault(g.env, []).append(g)
        else:
            skipped.append(f"{g}: no stackforge environment runs on it")
    return groups, skipped


def _card(g: Gpu) -> str:
    memory = f", {g.memory_mib} MiB" if g.memory_mib else ""
    return f"{g.name}{memory}"


def describe(gpus: Sequence[Gpu]) -> str:
    """'2 x Tesla P40 (24576 MiB)' or 'Tesla P40 (24576 MiB) + Tesla V100 (32768 MiB)'."""
    kinds: dict[tuple[str, int | None], int] = {}
    for g in gpus:
        kinds[(g.name, g.memory_mib)] = kinds.get((g.name, g.memory_mib), 0) + 1
    return " + ".join(
        f"{n} x {name}{f' ({mib} MiB)' if mib else ''}"
        if n > 1
        else f"{name}{f' ({mib} MiB)' if mib else ''}"
        for (name, mib), n in kinds.items()
    )


def identical(gpus: Sequence[Gpu]) -> bool:
    """Tensor parallelism splits each layer evenly: the slowest, smallest card sets the pace."""
    return len({(g.name, g.memory_mib) for g in gpus}) == 1


def tp_size_needed(gpus: Sequence[Gpu], model_bytes: int | None) -> int | None:
    """The smallest power-of-two group of these cards whose memory holds the weights (1: one card
    does); None when even all of them cannot, or when the size or the memory is unknown (1)."""
    mem = min((g.memory_mib for g in gpus), default=None)
    if model_bytes is None or not mem:
        return 1
    size = 1
    while size <= len(gpus):
        if model_bytes <= WEIGHTS_SHARE * size * mem * 2**20:
            return size
        size *= 2
    return None


def _servers(
    layout: str, groups: Mapping[str, list[Gpu]], tp: Mapping[str, int], host: str, first_port: int
) -> list[Server]:
    servers: list[Server] = []
    for env, cards in groups.items():
        indices = [g.index for g in cards]
        if layout == "per-gpu":
            chunks = [(i,) for i in indices]
            servers += [Server(env, c, 0, host) for c in chunks]
        elif layout == "tp":
            n = tp[env]
            for start in range(0, len(indices) - len(indices) % n, n):
                servers.append(Server(env, tuple(indices[start : start + n]), 0, host, tensor_parallel=n))
        else:  # dp
            servers.append(Server(env, tuple(indices), 0, host, data_parallel=len(indices)))
    return [
        Server(s.env, s.gpus, first_port + i, s.host, s.tensor_parallel, s.data_parallel)
        for i, s in enumerate(servers)
    ]


def plan(
    gpus: Sequence[Gpu],
    layout: str = "auto",
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    model_bytes: int | None = None,
) -> Fleet:
    """Server groups for these GPUs (each with its `env` already set by the doctor)."""
    if layout not in LAYOUTS:
        raise UsageError(f"--layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    groups, skipped = groups_by_env(gpus)
    if not groups:
        raise Failure(
            "no GPU here runs a stackforge environment" + (f" ({'; '.join(skipped)})" if skipped else ""),
            hint="stackforge builds for Pascal (6.0/6.1) and Volta (7.0)",
        )
    cards = [g for group in groups.values() for g in group]
    what = describe(cards)
    size = f"{model_bytes / 1e9:.1f} GB of weights" if model_bytes else "weights of unknown size"
    mixed = len(groups) > 1
    if len(cards) == 1:
        only = Server(next(iter(groups)), (cards[0].index,), port, host)
        return Fleet("per-gpu", (only,), f"one GPU ({what}): one vLLM server", host, port, tuple(skipped))
    tp: dict[str, int] = {}
    if layout in ("auto", "tp"):
        for env, group in groups.items():
            need = tp_size_needed(group, model_bytes)
            if need is None:
                raise Failure(
                    f"{size} do not fit {describe(group)} (at most {WEIGHTS_SHARE:.0%} of each card for weights)",
                    hint="use a smaller or quantized model, or more GPUs",
                )
            if layout == "tp":
                need = len(group) if need == 1 else need
            chunks = [group[i : i + need] for i in range(0, len(group) - len(group) % need, need)]
            odd = next((c for c in chunks if need > 1 and not identical(c)), None)
            if odd:
                raise Failure(
                    f"tensor parallelism over {describe(odd)}: the cards differ",
                    hint="pick identical cards with --gpus, or use --layout per-gpu",
                )
            tp[env] = need
    if layout == "auto":
        layout = "tp" if any(n > 1 for n in tp.values()) else "per-gpu"
        if layout == "tp":
            why = f"{size} need {max(tp.values())} cards' memory: tensor parallel (NCCL) over identical cards"
        else:
            fits = f"{size} fit one card" if model_bytes else f"{size} (taken to fit one card)"
            why = (
                f"{fits}: one vLLM server per GPU (no all-reduce between cards over PCIe; "
                "each conversation keeps its KV cache on one server)"
            )
    else:
        why = f"--layout {layout}"
    servers = _servers(layout, groups, tp, "127.0.0.1", port + 1)
    if len(servers) == 1:  # one group behind one endpoint: vLLM listens where clients connect
        s = servers[0]
        servers = [Server(s.env, s.gpus, port, host, s.tensor_parallel, s.data_parallel)]
    unused = [
        g for env, group in groups.items() for g in group if not any(g.index in s.gpus for s in servers)
    ]
    skipped += [f"{g}: not a whole tensor-parallel group" for g in unused]
    front = f"; nginx on {host}:{port} routes by X-Session-ID" if len(servers) > 1 else ""
    env_note = f"; mixed box: {', '.join(groups)} each in its own environment" if mixed else ""
    return Fleet(layout, tuple(servers), f"{what}: {why}{env_note}{front}", host, port, tuple(skipped))


def model_bytes(model: str, hf_cache: Path) -> int | None:
    """Size of the weight files of a local model directory or a cached hub model; None if unknown."""
    path = Path(model).expanduser()
    if not path.exists():
        snapshots = sorted((hf_cache / ("models--" + model.replace("/", "--")) / "snapshots").glob("*"))
        if not snapshots:
            return None
        path = snapshots[-1]
    if path.is_file():
        return path.stat().st_size
    files = [p for p in path.rglob("*") if p.name.endswith(WEIGHT_SUFFIXES) and p.is_file()]
    return sum(p.stat().st_size for p in files) or None  # stat follows the cache's blob links
