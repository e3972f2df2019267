"""Running the built stack: preflight checks, the vLLM defaults for Pascal/Volta, serve and generate.

`./run_simple.sh` is `stackforge preflight` (checks, names the GPU environment) followed by
`python -m stackforge.runtime generate` inside that environment's runtime workspace
(`runtime/pixi.toml`, which installs our triton/pytorch/vllm from `output/`).
`pixi run serve -e pascal -- ARGS` is `stackforge serve ARGS`: the same checks, then `vllm serve`.
Every vLLM default lives in one table, `DEFAULTS`, shared by both paths and by `stackforge run-args`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stackforge.console import EXIT_OK, Failure, UsageError, echo_command, file_logger, info, out, warn
from stackforge.envs import GpuEnv, env_for_capability, list_envs, load_env
from stackforge.workspace import Workspace, find_workspace

# --- the defaults: one table ---------------------------------------------------------------------


@dataclass(frozen=True)
class Default:
    """One vLLM engine setting: its `vllm.LLM(...)` keyword, value, and why it suits these GPUs."""

    kwarg: str
    value: Any
    why: str
    # other spellings of the same setting: a user who passes any of them replaces this default
    also: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return "--" + self.kwarg.replace("_", "-")

    def cli_value(self) -> str:
        return (
            json.dumps(self.value, separators=(",", ":")) if isinstance(self.value, dict) else str(self.value)
        )


DEFAULT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
DEFAULT_PROMPT = "In two sentences, what is a GPU?"
DEFAULT_MAX_TOKENS = 128

# CUDA graphs for decode steps, with no torch.compile: Inductor is gated off below compute
# capability 7.0 in PyTorch and TRITON_ATTN supports full graphs (AttentionCGSupport.ALWAYS), so
# FULL_DECODE_ONLY needs no compiler. --enforce-eager drops it (vLLM then captures no graphs).
CUDA_GRAPHS = {"mode": "NONE", "cudagraph_mode": "FULL_DECODE_ONLY"}

DEFAULTS: tuple[Default, ...] = (
    Default("dtype", "float16", "Pascal and Volta have no bf16"),
    Default(
        "attention_backend",
        "TRITON_ATTN",
        "FlashAttention needs sm_80; vLLM's Triton backend is the one that runs on sm_60/61/70 "
        "(vLLM 0.14 deprecates VLLM_ATTENTION_BACKEND and refuses it together with this flag)",
    ),
    Default("max_model_len", 4096, "modest context: leaves KV-cache room on 16-24 GB cards"),
    Default("gpu_memory_utilization", 0.85, "headroom for a display or a second process on the card"),
    Default(
        "compilation_config",
        CUDA_GRAPHS,
        "CUDA graphs on (the Volta seed measured 4x single-request speed), no Inductor",
        also=("-O", "-cc", "--optimization-level", "--enforce-eager", "--enforce_eager"),
    ),
)

# `vllm serve` only: an OpenAI-compatible API on port 8000, on loopback unless asked otherwise.
SERVE_DEFAULTS: tuple[Default, ...] = (
    Default("host", "127.0.0.1", "loopback only; pass --host 0.0.0.0 to serve the network"),
    Default("port", 8000, "vLLM's usual OpenAI API port"),
)

# Per-environment changes to DEFAULTS ({"volta": {"max_model_len": 8192}}): none measured yet.
ENV_OVERRIDES: dict[str, dict[str, Any]] = {}

# Set in the process that runs vLLM: no usage reports from air-gapped or private boxes.
RUNTIME_ENV = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}

# What the runtime workspace installs from output/ (runtime/pixi.toml pins the same versions).
RUNTIME_PACKAGES = {"triton": "3.5.1", "pytorch": "2.9.1", "vllm": "0.14.0"}
RUNTIME_MANIFEST_DIR = "runtime"
BUILD_TASK = "build-cuda"
PLATFORM = "linux-64"


def defaults_for(env: GpuEnv) -> list[Default]:
    changes = ENV_OVERRIDES.get(env.name, {})
    return [Default(d.kwarg, changes.get(d.kwarg, d.value), d.why, d.also) for d in DEFAULTS]


def build_tag(env: GpuEnv) -> str:
    """Build-string prefix of this environment's packages: 'cuda129_sm60_61_' for pascal."""
    return f"{env.build_tag}_"


# --- secrets -------------------------------------------------------------------------------------

TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
_TOKEN_SHAPE = re.compile(r"hf_[A-Za-z0-9]{20,}")


def redact(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Hide Hugging Face tokens: the values of TOKEN_VARS, and anything shaped like one."""
    environ = os.environ if environ is None else environ
    for var in TOKEN_VARS:
        value = environ.get(var, "")
        if len(value) >= 4:
            text = text.replace(value, "***")
    return _TOKEN_SHAPE.sub("hf_***", text)


def take_hf_token(args: Sequence[str]) -> tuple[list[str], str | None]:
    """Remove `--hf-token VALUE` from vLLM arguments: the value travels as HF_TOKEN instead, so
    neither our echo nor vLLM's own 'non-default args' log line can show it."""
    rest: list[str] = []
    token = None
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        if name in ("--hf-token", "--hf_token"):
            if eq:
                token = value
            elif i + 1 < len(args) and not args[i + 1].startswith("-"):
                token = args[i + 1]
                i += 1
            else:
                rest.append(arg)  # bare flag: use the stored login, nothing secret
        else:
            rest.append(arg)
        i += 1
    return rest, token


# --- vLLM arguments ------------------------------------------------------------------------------


def _given(args: Sequence[str], spellings: Sequence[str]) -> bool:
    for arg in args:
        for s in spellings:
            if s.startswith("--"):
                if arg == s or arg.startswith((s + "=", s + ".")):
                    return True
            elif arg.startswith(s):  # short flags glue their value: -O3, -cc.mode=NONE
                return True
    return False


def _spellings(d: Default) -> tuple[str, ...]:
    return (d.flag, "--" + d.kwarg, *d.also)


def refuse_unsupported(args: Sequence[str]) -> None:
    """Settings these GPUs cannot run, refused before vLLM starts (FACTS.md)."""
    values = _flag_values(args)
    if values.get("dtype", "").lower() in ("bfloat16", "bf16"):
        raise UsageError(
            "--dtype bfloat16: Pascal and Volta have no bf16", hint="use --dtype float16 (the default)"
        )
    if values.get("kv-cache-dtype", "").lower().startswith("fp8"):
        # vLLM's TRITON_ATTN stores every fp8 cache (e5m2 included) as float8_e4m3fn, which
        # Triton refuses below sm_89 (patches/vllm/0005 makes vLLM itself say so too).
        raise UsageError(
            f"--kv-cache-dtype {values['kv-cache-dtype']}: the Triton attention backend keeps any fp8 KV "
            "cache as float8 e4m3, which Triton refuses below compute capability 8.9",
            hint="use --kv-cache-dtype auto (fp16, the default)",
        )


def _flag_values(args: Sequence[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for i, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        name, eq, value = arg[2:].partition("=")
        name = name.replace("_", "-")
        if eq:
            values[name] = value
        elif i + 1 < len(args) and not args[i + 1].startswith("-"):
            values[name] = args[i + 1]
    return values


def user_model(args: Sequence[str]) -> str | None:
    """The model named in `vllm serve` arguments: `--model X` or a leading positional model tag."""
    if args and not args[0].startswith("-"):
        return args[0]
    return _flag_values(args).get("model")


def serve_argv(env: GpuEnv, user_args: Sequence[str], environ: Mapping[str, str] | None = None) -> list[str]:
    """`vllm serve` with our defaults; every setting the user passes replaces ours."""
    environ = os.environ if environ is None else environ
    argv = ["vllm", "serve", *user_args]
    for d in [*defaults_for(env), *SERVE_DEFAULTS]:
        if _given(user_args, _spellings(d)):
            continue
        if d.kwarg == "attention_backend" and environ.get("VLLM_ATTENTION_BACKEND"):
            continue  # the user's (deprecated) variable wins; vLLM refuses both together
        argv += [d.flag, d.cli_value()]
    if user_model(user_args) is None:
        argv += ["--model", DEFAULT_MODEL]
    return argv


def llm_kwargs(
    env: GpuEnv, model: str, *, enforce_eager: bool = False, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Keyword arguments for `vllm.LLM(...)`, from the same table."""
    environ = os.environ if environ is None else environ
    kwargs: dict[str, Any] = {"model": model}
    for d in defaults_for(env):
        if d.kwarg == "compilation_config" and enforce_eager:
            continue
        if d.kwarg == "attention_backend" and environ.get("VLLM_ATTENTION_BACKEND"):
            continue
        kwargs[d.kwarg] = d.value
    if enforce_eager:
        kwargs["enforce_eager"] = True
    return kwargs


def runtime_environment(env: GpuEnv) -> dict[str, str]:
    return {**RUNTIME_ENV, "STACKFORGE_ENV": env.name}


# --- preflight -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    arch: int | None  # 61 for compute capability 6.1

    @property
    def capability(self) -> str:
        return f"{self.arch // 10}.{self.arch % 10}" if self.arch is not None else "unknown"

    def __str__(self) -> str:
        return f"GPU {self.index} ({self.name}, compute capability {self.capability})"


@dataclass(frozen=True)
class Doctor:
    """What `stackforge doctor --json` says: the GPUs and the environment it recommends."""

    gpus: tuple[Gpu, ...]
    recommended_env: str | None
    message: str | None
    errors: tuple[str, ...]


def ask_doctor(ws: Workspace) -> Doctor:
    """Run `stackforge doctor --json` (its JSON is the contract; STACKFORGE_NVIDIA_SMI passes through)."""
    cmd = [sys.executable, "-m", "stackforge", "--root", str(ws.root), "doctor", "--json"]
    hint = "run `stackforge doctor` to see why"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Failure(f"`stackforge doctor --json` did not run: {exc}", hint=hint) from exc
    try:  # doctor exits 1 when it found a problem, and still prints its report
        report = json.loads(proc.stdout)
        gpus = tuple(
            Gpu(int(g.get("index", i)), str(g.get("name", "?")), g.get("arch"))
            for i, g in enumerate(report.get("gpus") or [])
        )
        problems = report.get("problems") or []
        errors = tuple(
            f"{p['what']} (what to do: {p['advice']})" for p in problems if p.get("level") == "error"
        )
        return Doctor(gpus, report.get("recommended_env"), report.get("smi_message"), errors)
    except (ValueError, AttributeError, KeyError, TypeError) as exc:
        raise Failure(
            f"`stackforge doctor --json` gave no report (exit {proc.returncode}): "
            f"{redact(_last_line(proc.stderr))}",
            hint=hint,
        ) from exc


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


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


def require_gpus(doctor: Doctor, environ: Mapping[str, str]) -> list[Gpu]:
    """The GPUs vLLM will see, or a failure that says why there are none."""
    if not doctor.gpus:
        raise Failure(
            f"no NVIDIA GPU: {doctor.message or 'nvidia-smi lists none'}",
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
    ws: Workspace, explicit: str | None, doctor: Doctor, gpus: Sequence[Gpu], environ: Mapping[str, str]
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
        f"{e.name} ({', '.join(f'{a // 10}.{a % 10}' for a in e.archs)})"
        for e in map(lambda n: load_env(ws, n), list_envs(ws))
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
    archs = ", ".join(f"{a // 10}.{a % 10}" for a in env.archs)
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
    try:
        data = json.loads(repodata.read_text())
    except ValueError as exc:
        raise Failure(f"{repodata}: not valid JSON ({exc})", hint=f"run `{build_cmd}` again") from exc
    records = [
        BuiltPackage(r.get("name", ""), r.get("version", ""), r.get("build", ""), fn)
        for key in ("packages", "packages.conda")
        for fn, r in (data.get(key) or {}).items()
    ]
    tag = build_tag(env)
    found: list[BuiltPackage] = []
    missing: list[str] = []
    for name, pin in RUNTIME_PACKAGES.items():
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


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The options of ./run_simple.sh, shared by `stackforge preflight` and `generate`."""
    p.add_argument(
        "-e",
        "--env",
        help="GPU environment: pascal or volta (default: $STACKFORGE_ENV, else what `stackforge doctor` "
        "recommends for this GPU)",
    )
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"Hugging Face model id or local model directory (default: {DEFAULT_MODEL})",
    )
    p.add_argument(
        "--prompt", action="append", help=f"a prompt; repeat for a batch (default: {DEFAULT_PROMPT!r})"
    )
    p.add_argument(
        "--max-tokens",
        type=positive_int,
        default=DEFAULT_MAX_TOKENS,
        help=f"tokens to generate per prompt (default: {DEFAULT_MAX_TOKENS})",
    )
    p.add_argument(
        "--enforce-eager", action="store_true", help="no CUDA graphs: slower, for debugging a failing graph"
    )


def _collect_unknown(parser: argparse.ArgumentParser) -> None:
    """Let a sub-command take vLLM's own options as they come (`serve --model X --port 8001`):
    whatever the parser does not know lands in `vllm_args` instead of being an error."""
    original = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        ns, extra = original(args, namespace)
        ns.vllm_args = [a for a in extra if a != "--"]
        return ns, []

    parser.parse_known_args = parse_known_args  # type: ignore[method-assign]


def run_preflight(args: argparse.Namespace) -> int:
    ws = find_workspace(args.root)
    plan = preflight(ws, args.env, args.model)
    report(plan)
    print(plan.env.name)  # stdout: for run_simple.sh
    return EXIT_OK


def _env_for_args(ws: Workspace, name: str | None) -> GpuEnv:
    name = name or os.environ.get("STACKFORGE_ENV")
    if not name:
        raise UsageError("which environment?", hint=f"pass -e one of: {', '.join(list_envs(ws))}")
    return load_env(ws, name)


def run_args(args: argparse.Namespace) -> int:
    ws = find_workspace(args.root)
    env = _env_for_args(ws, args.env)
    user_args, token = take_hf_token(args.vllm_args)
    if args.enforce_eager:
        user_args.append("--enforce-eager")  # ours and vLLM's flag at once
    refuse_unsupported(user_args)
    argv = serve_argv(env, user_args)
    kwargs = llm_kwargs(env, user_model(user_args) or DEFAULT_MODEL, enforce_eager=args.enforce_eager)
    environment = runtime_environment(env)
    if args.json:
        print(
            json.dumps(
                {
                    "env": env.name,
                    "environment": environment,
                    "serve_argv": argv,
                    "llm_kwargs": kwargs,
                    "hf_token_from_args": token is not None,
                    "defaults": [
                        {"kwarg": d.kwarg, "flag": d.flag, "value": d.value, "why": d.why}
                        for d in [*defaults_for(env), *SERVE_DEFAULTS]
                    ],
                },
                indent=2,
            )
        )
        return EXIT_OK
    out.print(
        f"# environment {env.name}: compute capability {env.torch_cuda_arch_list}, CUDA {env.cuda_version}"
    )
    for d in [*defaults_for(env), *SERVE_DEFAULTS]:
        out.print(f"#   {d.flag} {d.cli_value()}: {d.why}")
    for key, value in environment.items():
        out.print(f"{key}={shlex.quote(value)}")
    out.print(redact(shlex.join(argv)))
    return EXIT_OK


def run_serve(args: argparse.Namespace) -> int:
    ws = find_workspace(args.root)
    user_args, token = take_hf_token(args.vllm_args)
    refuse_unsupported(user_args)
    env_name = args.env or os.environ.get("STACKFORGE_ENV")
    model = user_model(user_args) or DEFAULT_MODEL
    plan = preflight(ws, env_name, model)
    report(plan)
    child_env = {**os.environ, **runtime_environment(plan.env)}
    if token is not None:
        child_env["HF_TOKEN"] = token
    argv = [*launcher(ws, plan.env, child_env), *serve_argv(plan.env, user_args, child_env)]
    if args.dry_run:
        print(redact(shlex.join(argv), child_env))
        return EXIT_OK
    echo_command([redact(a, child_env) for a in argv])
    info(f"OpenAI-compatible API on http://{_serve_address(argv)}/v1 once the model has loaded")
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(argv[0], argv, child_env)
    except OSError as exc:
        raise Failure(
            f"could not start {argv[0]}: {exc}", hint="check STACKFORGE_RUNTIME_EXEC / pixi"
        ) from exc
    return EXIT_OK  # not reached


def _serve_address(argv: Sequence[str]) -> str:
    values = _flag_values(argv)
    return f"{values.get('host', '127.0.0.1')}:{values.get('port', '8000')}"


def register(groups) -> None:
    p = groups[""].add_parser(
        "preflight",
        help="check GPU, built packages and model before ./run_simple.sh; print the environment name",
        description="Checks for ./run_simple.sh, before anything heavy: a GPU, an environment whose "
        "archs cover it, its triton/pytorch/vllm built into output/, the model reachable. Prints the "
        "environment name on stdout; every message goes to stderr.",
    )
    add_run_options(p)
    p.set_defaults(func=run_preflight)

    p = groups[""].add_parser(
        "run-args",
        help="show the vLLM arguments and environment the runtime uses (for serve and run_simple.sh)",
        description="The vLLM defaults for an environment, as `vllm serve` arguments (or JSON with the "
        "vllm.LLM keyword arguments too). Any other option is a vLLM argument that replaces a default.",
        allow_abbrev=False,
    )
    p.add_argument("-e", "--env", help="pascal or volta (default: $STACKFORGE_ENV)")
    p.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    p.add_argument("--json", action="store_true", help="machine-readable")
    _collect_unknown(p)
    p.set_defaults(func=run_args)

    p = groups[""].add_parser(
        "serve",
        help="vllm serve with the Pascal/Volta defaults in the runtime environment (OpenAI API, port 8000)",
        description="`vllm serve` in the runtime environment (runtime/pixi.toml) after the preflight "
        "checks. Any option not listed here is passed to vLLM and replaces our default for it; "
        "--hf-token VALUE is passed as HF_TOKEN so that it is never printed.",
        allow_abbrev=False,
    )
    p.add_argument("-e", "--env", help="pascal or volta (default: $STACKFORGE_ENV, else stackforge doctor's)")
    p.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    _collect_unknown(p)
    p.set_defaults(func=run_serve)


# --- generate: runs inside the runtime environment ------------------------------------------------


def generate(opts: argparse.Namespace, ws: Workspace) -> int:
    """Offline generation with vllm.LLM; prints each answer and tokens per second."""
    env = load_env(ws, opts.env or os.environ.get("STACKFORGE_ENV") or "")
    os.environ.update(runtime_environment(env))
    kwargs = llm_kwargs(env, opts.model, enforce_eager=opts.enforce_eager)
    prompts = opts.prompt or [DEFAULT_PROMPT]
    log = file_logger("run_simple", ws.logs / "run_simple.log")
    log.info(redact(f"env={env.name} prompts={len(prompts)} max_tokens={opts.max_tokens} llm={kwargs}"))
    info(redact(f"vllm.LLM({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"))

    from vllm import LLM, SamplingParams  # heavy: only once every check has passed

    started = time.perf_counter()
    llm = LLM(**kwargs)
    load_s = time.perf_counter() - started
    params = SamplingParams(max_tokens=opts.max_tokens, temperature=0.0)  # greedy: repeatable output
    started = time.perf_counter()
    if getattr(llm.get_tokenizer(), "chat_template", None):
        outputs = llm.chat([[{"role": "user", "content": p}] for p in prompts], params, use_tqdm=False)
    else:
        outputs = llm.generate(prompts, params, use_tqdm=False)
    gen_s = time.perf_counter() - started
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    for i, (prompt, result) in enumerate(zip(prompts, outputs, strict=True), 1):
        print(f"--- prompt {i}: {prompt}")
        print(result.outputs[0].text.strip())
    rate = tokens / gen_s if gen_s > 0 else float("inf")
    summary = (
        f"{len(prompts)} prompt(s), {tokens} tokens in {gen_s:.2f} s: {rate:.1f} tokens/s "
        f"(model load {load_s:.1f} s; env {env.name}; "
        f"{'eager' if opts.enforce_eager else 'CUDA graphs'})"
    )
    print(summary)
    log.info(redact(summary))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stackforge.runtime", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="offline generation in the runtime environment (run_simple.sh)")
    add_run_options(g)
    args = parser.parse_args(argv)
    try:
        return generate(args, find_workspace(None))
    except (Failure, UsageError) as exc:
        from stackforge.console import err

        err.print(f"[red]error:[/red] {exc.render()}")
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
