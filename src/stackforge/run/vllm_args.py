"""The vLLM settings for Pascal/Volta in one table, and the arguments built from it.

`DEFAULTS` feeds `vllm serve` arguments, `vllm.LLM(...)` keywords and `stackforge run-args`; a
user's own option replaces our default for the same setting. Hugging Face tokens never reach
a terminal or a log: `redact` hides them everywhere we print."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stackforge.core.console import UsageError, warn
from stackforge.spec.envs import GpuEnv


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


def defaults_for(env: GpuEnv) -> list[Default]:
    changes = ENV_OVERRIDES.get(env.name, {})
    return [Default(d.kwarg, changes.get(d.kwarg, d.value), d.why, d.also) for d in DEFAULTS]


TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "VLLM_API_KEY")
# vLLM options whose value is a secret: shown as *** wherever we print arguments
SECRET_OPTIONS = ("--api-key", "--api_key", "--hf-token", "--hf_token")


_TOKEN_SHAPE = re.compile(r"hf_[A-Za-z0-9]{20,}")


def redact(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Hide Hugging Face tokens: the values of TOKEN_VARS, and anything shaped like one."""
    environ = os.environ if environ is None else environ
    for var in TOKEN_VARS:
        value = environ.get(var, "")
        if len(value) >= 4:
            text = text.replace(value, "***")
    return _TOKEN_SHAPE.sub("hf_***", text)


def redact_args(args: Sequence[str], environ: Mapping[str, str] | None = None) -> list[str]:
    """Arguments as they may be printed: the value of every SECRET_OPTIONS option (`--api-key K`,
    `--api-key=K`, a value that begins with '-' too) and every token-shaped text become ***."""
    shown: list[str] = []
    hide_next = False
    for arg in args:
        name, eq, _ = arg.partition("=")
        if hide_next:
            shown.append("***")
            hide_next = False
        elif name in SECRET_OPTIONS:
            shown.append(f"{name}=***" if eq else arg)
            hide_next = not eq
        else:
            shown.append(redact(arg, environ))
    return shown


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
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                token = args[i + 1]  # a token may begin with '-': only a --option ends the value
                i += 1
            else:
                rest.append(arg)  # bare flag: use the stored login, nothing secret
        else:
            rest.append(arg)
        i += 1
    return rest, token


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
    """Settings these GPUs cannot run, refused before vLLM starts.

    `--dtype bfloat16` is not among them: Pascal and Volta have no bf16 (compute capability below
    8.0), and patches/vllm/0004 makes vLLM run such a request in float16 with one warning, as its
    own `auto` does. The rule lives in vLLM; here we only say so early, for `serve` and `generate`
    alike."""
    values = _flag_values(args)
    if values.get("dtype", "").lower() in ("bfloat16", "bf16"):
        warn("--dtype bfloat16: Pascal and Volta have no bf16; vLLM will run the model in float16")
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
