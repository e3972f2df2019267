"""Running the built stack: preflight checks, the vLLM defaults for Pascal/Volta, serve and generate.

`./run_simple.sh` is `stackforge preflight` (checks, names the GPU environment) followed by
`python -m stackforge generate` inside that environment's runtime workspace
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

from stackforge.core.console import EXIT_OK, Failure, UsageError, file_logger, info, warn
from stackforge.core.workspace import Workspace
from stackforge.spec.envs import GpuEnv, env_for_capability, list_envs, load_env

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
