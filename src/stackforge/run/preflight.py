"""Preflight: what must hold before vLLM starts (a GPU, an environment that covers it, its packages
built, the model reachable), and how to launch in the runtime workspace.

`./run_simple.sh` is `stackforge preflight` (checks, names the GPU environment) followed by
`python -m stackforge generate` inside that environment's runtime workspace
(`runtime/pixi.toml`, which installs our triton/pytorch/vllm from `output/`).
`pixi run serve -e pascal -- ARGS` is `stackforge serve ARGS`: the same checks, then `vllm serve`.
Every vLLM default lives in one table, `DEFAULTS`, shared by both paths and by `stackforge run-args`.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from stackforge.core.console import Failure, info, warn
from stackforge.core.workspace import Workspace
from stackforge.cuda.caps import dotted
from stackforge.run.doctor import Report, check_driver, pick_envs, query_gpus
from stackforge.run.gpus import Gpu, find_nvidia_smi
from stackforge.run.vllm_args import redact
from stackforge.spec.envs import GpuEnv, env_for_capability, list_envs, load_env
from stackforge.spec.stack import load_stack

# What the runtime workspace installs from output/, at the versions of stack.yaml.
RUNTIME_PACKAGES = ("triton", "pytorch", "vllm")
RUNTIME_MANIFEST_DIR = "runtime"
BUILD_TASK = "build-cuda"
PLATFORM = "linux-64"


def build_tag(env: GpuEnv) -> str:
    """Build-string prefix of this environment's packages: 'cuda129_sm60_61_' for pascal."""
    return f"{env.build_tag}_"


# --- preflight -----------------------------------------------------------------------------------


def ask_doctor(ws: Workspace) -> Report:
    """The doctor's GPU findings, in-process: GPUs, the environment for them, driver problems."""
    report = Report(find_nvidia_smi())
    query_gpus(report)
    pick_envs(report, ws)
    check_driver(report, ws)
    return report


def visible(gpus: Sequence[Gpu], environ: Mapping[str, str]) -> list[Gpu]:
    """The GPUs CUDA_VISIBLE_DEVICES leaves to vLLM (numeric lists only; UUIDs leave all)."""
    spec = environ.get("CUDA_VISIBLE_DEVICES")
    if spec is None:
        return list(gpus)
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    if not all(s.lstrip("-").isdigit() for s in wanted):
        return list(gpus)
    chosen: list[Gpu] = []
    for s in wanted:
        if int(s) < 0:
            break  # CUDA stops at the first invalid index
        chosen += [g for g in gpus if g.index == int(s)]
    return chosen


def require_gpus(doctor: Report, environ: Mapping[str, str]) -> list[Gpu]:
    """The GPUs vLLM will see, or a failure that says why there are none."""
    if not doctor.gpus:
        raise Failure(
            f"no NVIDIA GPU: {doctor.smi_message or 'nvidia-smi lists none'}",
            hint="install the NVIDIA driver (R580 is the last branch for Pascal and Volta) and check that "
            "`nvidia-smi` lists the card; in a container, pass the GPU through (docker run --gpus all)",
        )
    gpus = visible(doctor.gpus, environ)
    if not gpus:
        raise Failure(
            f"CUDA_VISIBLE_DEVICES={environ.get('CUDA_VISIBLE_DEVICES')!r} hides every GPU",
            hint="unset it, or name GPUs by their nvidia-smi index",
        )
    for problem in doctor.errors:
        warn(f"stackforge doctor: {problem}")
    return gpus


def _env_covering(ws: Workspace, gpu: Gpu) -> GpuEnv | None:
    return env_for_capability(ws, gpu.arch) if gpu.arch is not None else None


def choose_env(
    ws: Workspace, explicit: str | None, doctor: Report, gpus: Sequence[Gpu], environ: Mapping[str, str]
) -> GpuEnv:
    """-e, else $STACKFORGE_ENV (set by `pixi run -e <env>`), else what fits the GPUs: the doctor's
    recommendation, or the first visible GPU's environment when CUDA_VISIBLE_DEVICES picks GPUs."""
    name = explicit or environ.get("STACKFORGE_ENV")
    if name:
        return load_env(ws, name)
    if environ.get("CUDA_VISIBLE_DEVICES") is None and doctor.recommended_env:
        return load_env(ws, doctor.recommended_env)
    env = _env_covering(ws, gpus[0])
    if env:
        return env
    known = ", ".join(
        f"{e.name} ({', '.join(map(dotted, e.archs))})" for e in map(lambda n: load_env(ws, n), list_envs(ws))
    )
    raise Failure(
        f"no stackforge environment covers {gpus[0]}",
        hint=f"stackforge builds for {known}; use upstream vLLM wheels for other GPUs",
    )


def check_coverage(ws: Workspace, env: GpuEnv, gpus: Sequence[Gpu]) -> None:
    """Every GPU vLLM may use must run this environment's kernels."""
    for g in gpus:
        if g.arch is None:
            warn(
                f"{g}: cannot check it against {env.name}; update the driver so nvidia-smi reports compute_cap"
            )
    outside = [g for g in gpus if g.arch is not None and not env.covers(g.arch)]
    if not outside:
        return
    inside = [g for g in gpus if g not in outside]
    if inside:
        keep = ",".join(str(g.index) for g in inside)
        hint = f"run on the covered GPUs only: CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES={keep}"
    else:
        other = _env_covering(ws, outside[0])
        hint = (
            f"use -e {other.name} (built by: pixi run {BUILD_TASK} -e {other.name})"
            if other
            else "stackforge targets Pascal (6.0/6.1) and Volta (7.0); use upstream vLLM wheels for this GPU"
        )
    archs = ", ".join(map(dotted, env.archs))
    raise Failure(
        f"{'; '.join(str(g) for g in outside)}: not covered by environment {env.name!r} (it builds for {archs})",
        hint=hint,
    )


@dataclass(frozen=True)
class BuiltPackage:
    name: str
    version: str
    build: str
    filename: str


def _version_matches(version: str, pin: str) -> bool:
    return version == pin or (version.startswith(pin) and version[len(pin)] in ".+-_")


def check_built(ws: Workspace, env: GpuEnv) -> list[BuiltPackage]:
    """Our triton, pytorch and vllm for this environment are in the output/ channel's index."""
    subdir = ws.output / PLATFORM
    repodata = subdir / "repodata.json"
    build_cmd = f"pixi run {BUILD_TASK} -e {env.name}"
    if not repodata.is_file():
        archives = sorted(p.name for p in subdir.glob("*.conda")) if subdir.is_dir() else []
        if archives:
            raise Failure(
                f"{subdir} holds {len(archives)} packages but no repodata.json: the channel is not indexed",
                hint=f"run `{build_cmd}` again (it indexes output/)",
            )
        raise Failure(
            f"environment {env.name!r} is not built yet: no packages in {subdir}",
            hint=f"build them: `{build_cmd}`, then run this again",
        )
    import rattler

    try:
        index = rattler.RepoData.from_path(repodata).into_repo_data(rattler.Channel(str(ws.output)))
    except Exception as exc:  # rattler's own parse error: the file is empty, cut or not repodata
        raise Failure(
            f"{repodata}: not a readable channel index ({exc})",
            hint=f"run `{build_cmd}` again (it re-indexes)",
        ) from None
    records = [BuiltPackage(r.name.normalized, str(r.version), str(r.build), r.file_name) for r in index]
    tag = build_tag(env)
    found: list[BuiltPackage] = []
    missing: list[str] = []
    stack = load_stack(ws)
    for name in RUNTIME_PACKAGES:
        pin = stack.version(name)
        ours = [r for r in records if r.name == name and r.build.startswith(tag)]
        good = [r for r in ours if _version_matches(r.version, pin)]
        if good:
            found.append(max(good, key=lambda r: r.filename))
        elif ours:
            missing.append(f"{name} {pin} (found {', '.join(sorted({r.version for r in ours}))})")
        else:
            missing.append(f"{name} {pin}")
    if missing:
        raise Failure(
            f"environment {env.name!r} is not built yet: {', '.join(missing)} with build {tag}* "
            f"missing from {subdir}",
            hint=f"build them: `{build_cmd}`, then run this again",
        )
    return found


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def offline(environ: Mapping[str, str]) -> bool:
    return _truthy(environ.get("HF_HUB_OFFLINE")) or _truthy(environ.get("TRANSFORMERS_OFFLINE"))


def hf_cache_dir(environ: Mapping[str, str]) -> Path:
    """Where huggingface_hub keeps downloads (its documented variables, in its order)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if environ.get(var):
            return Path(environ[var]).expanduser()
    if environ.get("HF_HOME"):
        return Path(environ["HF_HOME"]).expanduser() / "hub"
    xdg = environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path(environ.get("HOME", "~")).expanduser() / ".cache"
    return base / "huggingface" / "hub"


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or Path(model).expanduser().exists()


def check_model(model: str, environ: Mapping[str, str]) -> str:
    """A local model must exist; a hub model must be in the cache when downloads are off."""
    if _looks_like_path(model):
        path = Path(model).expanduser()
        if path.is_dir():
            if not any((path / f).is_file() for f in ("config.json", "params.json")):
                raise Failure(
                    f"model directory {path} has no config.json",
                    hint="point --model at the folder holding config.json and the weights",
                )
        elif not (path.is_file() and path.suffix == ".gguf"):
            raise Failure(
                f"model {path} does not exist", hint="check the path, or pass a Hugging Face model id"
            )
        return f"local {path}"
    if not offline(environ):
        return f"{model} (downloaded on first use)"
    cache = hf_cache_dir(environ)
    repo = cache / ("models--" + model.replace("/", "--"))
    snapshots = sorted((repo / "snapshots").glob("*/config.json")) if repo.is_dir() else []
    if not snapshots:
        var = "HF_HUB_OFFLINE" if _truthy(environ.get("HF_HUB_OFFLINE")) else "TRANSFORMERS_OFFLINE"
        raise Failure(
            f"model {model!r} is not in the Hugging Face cache ({cache}) and {var}=1 forbids downloading it",
            hint=f"on a connected machine run `huggingface-cli download {model}` and copy {cache} here "
            "(or set HF_HUB_CACHE to it), or pass --model /path/to/model-dir",
        )
    return f"{model} from the cache ({snapshots[-1].parent})"


@dataclass(frozen=True)
class Plan:
    env: GpuEnv
    gpus: list[Gpu]
    packages: list[BuiltPackage]
    model: str | None


def preflight(
    ws: Workspace, env_name: str | None, model: str | None, environ: Mapping[str, str] | None = None
) -> Plan:
    """Everything that must hold before anything heavy starts, cheapest first."""
    environ = os.environ if environ is None else environ
    if env_name:
        load_env(ws, env_name)  # a typo in -e is a usage error before any probing
    doctor = ask_doctor(ws)
    gpus = require_gpus(doctor, environ)
    env = choose_env(ws, env_name, doctor, gpus, environ)
    check_coverage(ws, env, gpus)
    packages = check_built(ws, env)
    where = check_model(model, environ) if model else None
    return Plan(env, gpus, packages, where)


def report(plan: Plan) -> None:
    info(f"environment: {plan.env.name} ({', '.join(str(g) for g in plan.gpus)})")
    info("packages: " + ", ".join(f"{p.name} {p.version} {p.build}" for p in plan.packages))
    if plan.model:
        info(f"model: {redact(plan.model)}")


# --- launching in the runtime workspace ----------------------------------------------------------


def launcher(ws: Workspace, env: GpuEnv, environ: Mapping[str, str] | None = None) -> list[str]:
    """The command prefix that runs a program in the runtime environment.

    STACKFORGE_RUNTIME_EXEC replaces it (e.g. `env` when that environment is already active)."""
    environ = os.environ if environ is None else environ
    override = environ.get("STACKFORGE_RUNTIME_EXEC")
    if override is not None:
        return shlex.split(override)
    pixi = environ.get("PIXI_EXE") or shutil.which("pixi")
    if not pixi:
        raise Failure(
            "pixi not found: the runtime environments are pixi environments (runtime/pixi.toml)",
            hint="install pixi (https://pixi.sh), or set STACKFORGE_RUNTIME_EXEC to a command prefix that "
            "runs programs where the built packages are installed",
        )
    manifest = ws.root / RUNTIME_MANIFEST_DIR
    return [pixi, "run", "--manifest-path", str(manifest), "--environment", env.name]


# --- commands ------------------------------------------------------------------------------------


# --- generate: runs inside the runtime environment ------------------------------------------------
