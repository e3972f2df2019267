"""`stackforge doctor`: which GPUs are here, which environment fits them, and what will stop the stack
from running (driver branch, CUDA driver minimum, torch/triton/vllm builds) — one line of advice each.

GPUs come from `nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader`
($STACKFORGE_NVIDIA_SMI names another executable: tests replay recorded answers through it). The
packages are probed in a child Python (`--python`, default this one), so a broken torch cannot take
the doctor down with it.

Exit 0 when nothing is an error (also on a machine with no NVIDIA GPU), 1 when something is.
`--json` prints the report with `recommended_env` (an environment name or null) at the top level.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.table import Table

from stackforge.core.console import StackforgeError, escape, out
from stackforge.core.workspace import Workspace
from stackforge.cuda.caps import sm
from stackforge.cuda.fatbin import Embedded, Sass
from stackforge.run.gpus import (
    FALLBACK_QUERY,
    QUERY,
    Gpu,
    _smi,
    find_nvidia_smi,
    parse_smi_csv,
    version_tuple,
)
from stackforge.spec.envs import env_for_capability, load_env
from stackforge.spec.stack import describe, load_stack

# R580 is the last driver branch that supports Maxwell, Pascal and Volta (NVIDIA's CUDA 13.0 and
# R580 release notes). Newer branches drop compute capability < 7.5.
LAST_BRANCH_FOR_OLD_GPUS = 580
OLD_GPU_LIMIT = 75  # compute capability below which the R580 limit applies

# Minimum Linux driver per CUDA toolkit, from NVIDIA's CUDA Toolkit release notes, table "CUDA
# Toolkit and Corresponding Driver Versions": CUDA 12.9 GA >= 575.51.03 (NVIDIA ships it as
# cuda_12.9.0_575.51.03_linux.run). Older drivers down to 525.60.13 run CUDA 12.x binaries only
# through minor-version compatibility (docs.nvidia.com/deploy/cuda-compatibility), which cannot
# JIT PTX made by the newer toolkit.
CUDA_MIN_DRIVER = {"12.9": (575, 51, 3)}
CUDA12_COMPAT_FLOOR = (525, 60, 13)


PROBE = r"""
import importlib.metadata as md, json
r = {}
for name in ("torch", "triton", "vllm"):
    try:
        r[name] = md.version(name)
    except md.PackageNotFoundError:
        r[name] = None
if r["torch"]:
    try:
        import torch
        r["torch_cuda"] = torch.version.cuda
        flags = getattr(torch._C, "_cuda_getArchFlags", lambda: "")()
        r["arch_list"] = flags.split() if flags else torch.cuda.get_arch_list()
        r["cuda_available"] = torch.cuda.is_available()
        if r["cuda_available"]:
            from torch.utils._triton import has_triton
            r["has_triton"] = bool(has_triton())
    except Exception as exc:
        r["torch_error"] = f"{type(exc).__name__}: {exc}"
print("STACKFORGE-PROBE " + json.dumps(r))
"""


@dataclass
class Problem:
    level: str  # "error": will not work; "warning": works with a caveat, or needs a decision
    what: str
    advice: str


@dataclass
class Report:
    nvidia_smi: str | None
    gpus: list[Gpu] = field(default_factory=list)
    smi_message: str | None = None
    recommended_env: str | None = None
    recommended_devices: str | None = None  # nvidia-smi indices, for CUDA_VISIBLE_DEVICES on mixed boxes
    packages: dict = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    stack: str | None = None  # the stack whose versions the installed packages are checked against

    @property
    def errors(self) -> list[str]:
        return [f"{p.what} (what to do: {p.advice})" for p in self.problems if p.level == "error"]

    def add(self, level: str, what: str, advice: str) -> None:
        self.problems.append(Problem(level, what, advice))

    @property
    def ok(self) -> bool:
        return not any(p.level == "error" for p in self.problems)

    def to_json(self) -> dict:
        return {
            "stack": self.stack,
            "nvidia_smi": self.nvidia_smi,
            "smi_message": self.smi_message,
            "gpus": [{**asdict(g), "compute_capability": g.capability} for g in self.gpus],
            "driver": self.gpus[0].driver if self.gpus else None,
            "recommended_env": self.recommended_env,
            "recommended_devices": self.recommended_devices,
            "packages": self.packages,
            "problems": [asdict(p) for p in self.problems],
            "ok": self.ok,
        }


def query_gpus(report: Report) -> None:
    """Fill report.gpus from nvidia-smi; problems where the driver does not answer."""
    smi = report.nvidia_smi
    if smi is None:
        report.smi_message = "no NVIDIA GPU/driver found (nvidia-smi is not installed or not on PATH)"
        return
    try:
        proc = _smi(smi, QUERY)
        answer = (proc.stdout + proc.stderr).strip()
        if proc.returncode != 0 and "compute_cap" in answer:  # drivers before R510 lack the field
            proc = _smi(smi, FALLBACK_QUERY)
            answer = (proc.stdout + proc.stderr).strip()
            report.gpus = parse_smi_csv(proc.stdout, with_cap=False) if proc.returncode == 0 else []
        else:
            report.gpus = parse_smi_csv(proc.stdout) if proc.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired) as exc:
        report.add(
            "error", f"{smi} did not run: {exc}", "reinstall the NVIDIA driver (R580 for Pascal/Volta)"
        )
        return
    if report.gpus:
        return
    if "No devices were found" in answer:
        report.smi_message = "the NVIDIA driver is loaded but sees no GPU"
        report.add(
            "warning",
            "nvidia-smi found no GPU",
            f"if a Pascal/Volta card is installed, the driver may be newer than R{LAST_BRANCH_FOR_OLD_GPUS}, "
            f"which dropped them: install an R{LAST_BRANCH_FOR_OLD_GPUS} driver",
        )
    else:
        first = answer.splitlines()[0] if answer else f"exit {proc.returncode}, no output"
        report.smi_message = f"nvidia-smi failed: {first}"
        report.add(
            "error",
            f"nvidia-smi failed: {first}",
            "load or reinstall the NVIDIA driver (R580 for Pascal/Volta)",
        )


def pick_envs(report: Report, ws: Workspace | None) -> None:
    """Map each GPU to an environment; recommend one, and say what to do on mixed boxes."""
    if not report.gpus:
        return
    if ws is None:
        report.add(
            "warning",
            "not inside a stackforge workspace",
            "run from the checkout (or pass --root) to get an environment",
        )
        return
    for gpu in report.gpus:
        env = env_for_capability(ws, gpu.arch) if gpu.arch is not None else None
        gpu.env = env.name if env else None
        if gpu.arch is None:
            report.add(
                "warning",
                f"GPU {gpu.index} ({gpu.name}): compute capability unknown",
                "update the driver to R580 so nvidia-smi reports compute_cap",
            )
        elif env is None:
            report.add(
                "warning",
                f"GPU {gpu.index} ({gpu.name}, compute capability {gpu.capability}) is not a stackforge target",
                "stackforge builds for Pascal (6.0/6.1) and Volta (7.0); use upstream vLLM/PyTorch wheels for this GPU",
            )
    by_env: dict[str, list[int]] = {}
    for gpu in report.gpus:
        if gpu.env:
            by_env.setdefault(gpu.env, []).append(gpu.index)
    if not by_env:
        return
    # most GPUs first; on a tie, the environment of the lowest-numbered GPU
    report.recommended_env = max(by_env, key=lambda name: (len(by_env[name]), -by_env[name][0]))
    if len(by_env) > 1 or len(by_env[report.recommended_env]) < len(report.gpus):
        report.recommended_devices = ",".join(str(i) for i in by_env[report.recommended_env])
        split = "; ".join(
            f"{name}: CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES={','.join(map(str, idx))} pixi run -e {name} ..."
            for name, idx in by_env.items()
        )
        report.add(
            "warning",
            f"mixed GPUs: {', '.join(f'{g.index}={g.name}' for g in report.gpus)}",
            f"one environment per GPU group: {split}",
        )


def check_driver(report: Report, ws: Workspace | None) -> None:
    drivers = sorted({g.driver for g in report.gpus})
    if not drivers:
        return
    driver = drivers[0]
    version = version_tuple(driver)
    old = [g for g in report.gpus if g.arch is not None and g.arch < OLD_GPU_LIMIT]
    if old and version and version[0] > LAST_BRANCH_FOR_OLD_GPUS:
        report.add(
            "error",
            f"driver {driver} is newer than R{LAST_BRANCH_FOR_OLD_GPUS}, the last branch that supports "
            f"{', '.join(sorted({g.name for g in old}))}",
            f"install an R{LAST_BRANCH_FOR_OLD_GPUS} driver (580.x) and hold it there",
        )
    if not report.recommended_env or ws is None:
        return
    cuda = load_env(ws, report.recommended_env).cuda_version
    minimum = CUDA_MIN_DRIVER.get(cuda)
    if minimum is None:
        return
    need = ".".join(f"{p:02d}" if i == 2 else str(p) for i, p in enumerate(minimum))
    if version < CUDA12_COMPAT_FLOOR:
        report.add(
            "error",
            f"driver {driver} is too old for CUDA {cuda} (CUDA 12.x needs >= 525.60.13, {cuda} needs >= {need})",
            f"install an R{LAST_BRANCH_FOR_OLD_GPUS} driver (580.x)",
        )
    elif version < minimum:
        report.add(
            "warning",
            f"driver {driver} is older than CUDA {cuda}'s minimum {need}: CUDA {cuda} code runs only through "
            "minor-version compatibility, and PTX it built cannot be JIT-compiled",
            f"install an R{LAST_BRANCH_FOR_OLD_GPUS} driver (580.x)",
        )


def probe_packages(python: str) -> dict:
    try:
        proc = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"python": python, "error": str(exc)}
    for line in proc.stdout.splitlines():
        if line.startswith("STACKFORGE-PROBE "):
            return {"python": python, **json.loads(line.split(" ", 1)[1])}
    return {"python": python, "error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}


def expected_pins(ws: Workspace | None) -> dict[str, str]:
    """Distribution name -> the version stack.yaml builds; empty outside a workspace (or with an
    unreadable stack file, which the build commands report)."""
    if ws is None or not ws.stack_file.is_file():
        return {}
    try:
        return load_stack(ws).distributions()
    except StackforgeError:
        return {}


def arch_list_covers(arch_list: list[str], arch: int) -> bool:
    """torch arch flags ('sm_60', 'compute_70') against one GPU, by the same rules as the binary audit."""
    emb = Embedded(Path("torch"))
    for flag in arch_list:
        match = re.fullmatch(r"(sm|compute)_(\d+)([a-z]?)", flag)
        if match and match.group(1) == "sm":
            emb.sass.append(Sass(int(match.group(2)), match.group(3)))
        elif match:
            emb.ptx.append(int(match.group(2)))
    return emb.coverage(arch).ok


def check_packages(report: Report, ws: Workspace | None) -> None:
    pkgs = report.packages
    if "error" in pkgs:
        report.add(
            "warning",
            f"could not probe packages with {pkgs['python']}: {pkgs['error']}",
            "pass --python PATH of the environment's interpreter",
        )
        return
    pins = expected_pins(ws)  # empty outside a workspace with a stack.yaml: nothing to compare
    for dist, pin in pins.items():
        have = pkgs.get(dist)
        if have and have.split("+")[0] != pin:
            report.add(
                "warning",
                f"{dist} {have} is installed; this stack pins {pin}",
                f"use the stackforge-built {dist} {pin} (pixi run -e <env> ...)",
            )
    if not pkgs.get("torch"):
        return
    if pkgs.get("torch_error"):
        report.add(
            "error", f"import torch failed: {pkgs['torch_error']}", "reinstall torch in this environment"
        )
        return
    old = [g for g in report.gpus if g.arch is not None and g.arch < OLD_GPU_LIMIT]
    cuda = pkgs.get("torch_cuda")
    if cuda is None:
        if report.gpus:
            report.add(
                "error",
                f"torch {pkgs['torch']} is a CPU-only build",
                "install the stackforge CUDA build of torch",
            )
        return
    if old and version_tuple(cuda)[:1] >= (13,):
        report.add(
            "error",
            f"torch {pkgs['torch']} is built with CUDA {cuda}, which cannot run on compute capability < 7.5",
            "use a CUDA 12.x build (the stackforge environments use 12.9)",
        )
    arch_list = pkgs.get("arch_list") or []
    for gpu in report.gpus:
        if gpu.arch is not None and arch_list and not arch_list_covers(arch_list, gpu.arch):
            report.add(
                "error",
                f"torch {pkgs['torch']} has no kernels for GPU {gpu.index} ({gpu.name}, {sm(gpu.arch)}); it has {' '.join(arch_list)}",
                f"install the stackforge {gpu.env or 'matching'} build of torch (TORCH_CUDA_ARCH_LIST includes {gpu.capability})",
            )
    if pkgs.get("cuda_available") and pkgs.get("has_triton") is False and report.gpus:
        report.add(
            "warning",
            "torch.utils._triton.has_triton() is False: torch.compile/Inductor will not use Triton on this GPU",
            "upstream torch gates Triton at compute capability >= 7.0; the stackforge pascal torch patches that gate",
        )


def diagnose(ws: Workspace | None, python: str) -> Report:
    report = Report(nvidia_smi=find_nvidia_smi())
    query_gpus(report)
    pick_envs(report, ws)
    check_driver(report, ws)
    report.packages = probe_packages(python)
    check_packages(report, ws)
    report.stack = describe(ws)
    return report


def render(report: Report) -> None:
    if report.stack:
        out.print(escape(f"stack {report.stack}"))
    if report.gpus:
        table = Table(title=f"GPUs (from {report.nvidia_smi})", title_justify="left")
        for column in ("#", "name", "compute capability", "driver", "environment"):
            table.add_column(column)
        for g in report.gpus:
            table.add_row(str(g.index), g.name, g.capability, g.driver, g.env or "[dim](none)[/dim]")
        out.print(table)
    else:
        out.print(report.smi_message or "no GPU found")
    if report.recommended_env:
        devices = f" on GPUs {report.recommended_devices}" if report.recommended_devices else ""
        out.print(
            f"environment: [bold]{report.recommended_env}[/bold]{devices} (pixi run -e {report.recommended_env} ...)"
        )
    pkgs = report.packages
    found = (
        ", ".join(f"{d} {pkgs[d]}" for d in ("torch", "triton", "vllm") if pkgs.get(d))
        or "no torch/triton/vllm"
    )
    extra = (
        f" (CUDA {pkgs['torch_cuda']}; archs {' '.join(pkgs.get('arch_list') or []) or '?'})"
        if pkgs.get("torch_cuda")
        else ""
    )
    out.print(f"python {pkgs.get('python')}: {found}{extra}")
    for p in report.problems:
        mark = "[red]error[/red]" if p.level == "error" else "[yellow]warning[/yellow]"
        out.print(f"{mark}: {p.what}\n  what to do: {p.advice}")
    if not report.gpus and report.nvidia_smi is None:
        out.print(
            "what to do: on a machine with a Pascal or Volta GPU, install the NVIDIA R580 driver; "
            "without a GPU you can still build (pixi run -e pascal ...) and audit (stackforge audit binaries)"
        )
    if not report.problems:
        out.print("[green]no problems found[/green]")
