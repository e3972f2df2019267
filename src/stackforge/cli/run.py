"""Commands of the run stage: doctor, preflight, run-args, serve, generate."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from stackforge.cli.options import VLLM_ARGS, add_dry_run, add_env, add_json, positive_int
from stackforge.core.console import (
    EXIT_FAILED,
    EXIT_OK,
    Failure,
    StackforgeError,
    UsageError,
    echo_command,
    escape,
    info,
    out,
    print_json,
)

if TYPE_CHECKING:
    from stackforge.core.workspace import Workspace
    from stackforge.run.supervise import ServePlan
    from stackforge.spec.envs import GpuEnv


def _cmd_doctor(args: argparse.Namespace) -> int:
    from stackforge.core.workspace import find_workspace
    from stackforge.run.doctor import diagnose, render

    try:
        ws: Workspace | None = find_workspace(args.root)
    except StackforgeError:
        ws = None
    report = diagnose(ws, args.python)
    if args.json:
        print_json(report.to_json())
    else:
        render(report)
    return EXIT_OK if report.ok else EXIT_FAILED


def _register_doctor(groups) -> None:
    p = groups[""].add_parser(
        "doctor",
        help="detect GPUs, pick the environment, check driver and installed torch/triton/vllm",
        description="Which GPUs are here, which environment fits them, and what will stop the stack from "
        "running (driver branch, CUDA driver minimum, torch/triton/vllm builds): one line of advice each.",
    )
    add_json(p, "the report (key recommended_env)")
    p.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter whose torch/triton/vllm to check (default: this one)",
    )
    p.set_defaults(func=_cmd_doctor)


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The options of ./run_simple.sh, shared by `stackforge preflight` and `generate`."""
    from stackforge.run.vllm_args import DEFAULT_MAX_TOKENS, DEFAULT_MODEL, DEFAULT_PROMPT

    add_env(p, fallback="what `stackforge doctor` recommends for this GPU")
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


def run_preflight(args: argparse.Namespace) -> int:
    from stackforge.core.workspace import find_workspace
    from stackforge.run.preflight import preflight, report

    ws = find_workspace(args.root)
    plan = preflight(ws, args.env, args.model)
    report(plan)
    print(plan.env.name)  # stdout: for run_simple.sh
    return EXIT_OK


def _env_for_args(ws: Workspace, name: str | None) -> GpuEnv:
    from stackforge.spec.envs import list_envs, load_env

    name = name or os.environ.get("STACKFORGE_ENV")
    if not name:
        raise UsageError("which environment?", hint=f"pass -e one of: {', '.join(list_envs(ws))}")
    return load_env(ws, name)


def run_args(args: argparse.Namespace) -> int:
    from stackforge.core.workspace import find_workspace
    from stackforge.run.vllm_args import (
        DEFAULT_MODEL,
        SERVE_DEFAULTS,
        defaults_for,
        llm_kwargs,
        redact_args,
        refuse_unsupported,
        runtime_environment,
        serve_argv,
        take_hf_token,
        user_model,
    )

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
                    "serve_argv": redact_args(argv),
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
    out.print(escape(shlex.join(redact_args(argv))))
    return EXIT_OK


def run_serve(args: argparse.Namespace) -> int:
    from stackforge.core.workspace import find_workspace
    from stackforge.run.vllm_args import refuse_unsupported, take_hf_token

    ws = find_workspace(args.root)
    user_args, token = take_hf_token(args.vllm_args)
    refuse_unsupported(user_args)
    env_name = args.env or os.environ.get("STACKFORGE_ENV")
    environ = {**os.environ, **({"HF_TOKEN": token} if token is not None else {})}
    from stackforge.run.supervise import prepare

    plan = prepare(ws, env_name, args.gpus, args.layout, user_args, environ)
    for env, packages in plan.packages.items():
        info(f"{env} packages: " + ", ".join(f"{p.name} {p.version} {p.build}" for p in packages))
    info(f"model: {plan.model}")
    info(f"layout {plan.layout.layout}: {plan.layout.reason}")
    for why in plan.layout.skipped:
        info(f"left out: {why}")
    if plan.router is None:
        return _serve_one(plan, args.dry_run)
    return _serve_several(plan, args.dry_run)


def _serve_one(plan: ServePlan, dry_run: bool) -> int:
    from stackforge.run.supervise import shown
    from stackforge.run.vllm_args import redact_args

    server, argv, child_env = plan.commands[0]
    info(
        f"on GPU {server.visible_devices}: CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES={server.visible_devices}"
    )
    if dry_run:
        print(shown(argv, child_env))
        return EXIT_OK
    echo_command(redact_args(argv, child_env))
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


def _serve_several(plan: ServePlan, dry_run: bool) -> int:
    from stackforge.run import supervise
    from stackforge.run.router import render_config

    router = plan.router
    lines = []
    for server, argv, child_env in plan.commands:
        where = f"CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES={server.visible_devices}"
        lines.append(f"{where} {supervise.shown(argv, child_env)}")
    if dry_run:
        print("\n".join(lines))
        print(
            f"# router: {plan.nginx or 'nginx (not found: install it, or set STACKFORGE_NGINX)'} "
            f"-p {router.prefix} -c {router.conf}"
        )
        print(render_config(router.backends, router.host, router.port, router.prefix), end="")
        return EXIT_OK
    if plan.nginx is None:
        raise Failure(
            "nginx not found: several servers need the router",
            hint="it comes with the runtime environment (runtime/pixi.toml); elsewhere apt-get install "
            "nginx-light, or set STACKFORGE_NGINX to an nginx executable",
        )
    info(f"router: {router.version()} on http://{router.host}:{router.port}/v1 (X-Session-ID affinity)")
    running = []
    for (server, argv, _), line in zip(plan.commands, lines, strict=True):
        log = router.prefix.parent / "serve" / f"{server.port}.log"
        info(f"starting: {line} (log {log})")
        running.append(supervise.Running(server, argv, log))
    sup = supervise.Supervisor(running, router)
    code = supervise.run(sup, [c[2] for c in plan.commands])
    info("stopped: router and every vLLM server")
    return EXIT_OK if code == 0 else EXIT_FAILED


def _serve_address(argv: Sequence[str]) -> str:
    from stackforge.run.vllm_args import _flag_values

    values = _flag_values(argv)
    return f"{values.get('host', '127.0.0.1')}:{values.get('port', '8000')}"


def _register_runtime(groups) -> None:
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
    add_env(p)
    p.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    add_json(p, "the arguments, environment and vllm.LLM keywords")
    p.set_defaults(func=run_args, vllm_args=VLLM_ARGS)

    p = groups[""].add_parser(
        "serve",
        help="vllm serve with the Pascal/Volta defaults in the runtime environment (OpenAI API, port 8000)",
        description="`vllm serve` in the runtime environment (runtime/pixi.toml) after the preflight "
        "checks; on several GPUs, several servers behind nginx (--host/--port are then the router's). "
        "Any option not listed here is passed to vLLM and replaces our default for it; "
        "--hf-token VALUE is passed as HF_TOKEN so that it is never printed.",
        allow_abbrev=False,
    )
    add_env(p, fallback="what `stackforge doctor` recommends for each GPU")
    p.add_argument(
        "--gpus",
        default="all",
        metavar="LIST",
        help="nvidia-smi indices of the GPUs to serve on, e.g. 0,1 (default: all that doctor finds)",
    )
    p.add_argument(
        "--layout",
        default="auto",
        choices=("auto", "per-gpu", "tp", "dp"),
        help="several GPUs: one server per GPU behind nginx (per-gpu), tensor parallel (tp), vLLM's data "
        "parallel (dp); auto: per-gpu unless the model needs more than one card (docs/several-gpus.md)",
    )
    add_dry_run(p, "print every server command (and the router configuration) instead of running them")
    p.set_defaults(func=run_serve, vllm_args=VLLM_ARGS)


def _cmd_generate(args: argparse.Namespace) -> int:
    from stackforge.core.workspace import find_workspace
    from stackforge.run.generate import generate

    return generate(args, find_workspace(args.root))


def _register_generate(groups) -> None:
    p = groups[""].add_parser(
        "generate",
        help="offline generation with vllm.LLM in the runtime environment (what ./run_simple.sh runs)",
        description="Offline generation with vllm.LLM and the Pascal/Volta defaults; prints each answer "
        "and tokens per second. Runs inside the runtime environment, after `stackforge preflight`.",
    )
    add_run_options(p)
    p.set_defaults(func=_cmd_generate)


def register(groups) -> None:
    _register_generate(groups)
    _register_doctor(groups)
    _register_runtime(groups)
