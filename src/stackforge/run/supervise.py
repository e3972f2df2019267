"""Running a fleet: one vLLM process per server, the router in front, a /health poll that marks
failing servers down, and a stop that leaves nothing running (SIGINT/SIGTERM, or any error).

Each vLLM runs in a session of its own (pixi, python and vLLM's engine and tensor-parallel workers
all belong to it), with its output in .stackforge/serve/<port>.log: several servers printing to
one terminal cannot be read."""

from __future__ import annotations

import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from stackforge.core.console import info, warn
from stackforge.core.workspace import Workspace
from stackforge.run import fleet
from stackforge.run.fleet import Server
from stackforge.run.preflight import (
    BuiltPackage,
    ask_doctor,
    check_built,
    check_coverage,
    check_model,
    hf_cache_dir,
    launcher,
    require_gpus,
)
from stackforge.run.router import Router, _set_parent_death_signal, find_nginx, get, stop_session
from stackforge.run.vllm_args import DEFAULT_MODEL, redact_args, runtime_environment, serve_argv, user_model
from stackforge.spec.envs import load_env


@dataclass
class Running:
    server: Server
    argv: list[str]
    log: Path
    proc: subprocess.Popen | None = None
    state: str = "starting"  # starting (not listening yet), up, sick (answers, not 200), dead

    def start(self, environ: Mapping[str, str]) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                env=dict(environ),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_set_parent_death_signal,
            )

    def probe(self) -> str:
        if self.proc is None or self.proc.poll() is not None:
            return "dead"
        answer = get(self.server.host, self.server.port, "/health", timeout=5.0)
        if answer is None:
            return "starting" if self.state == "starting" else "sick"
        return "up" if answer[0] == 200 else "sick"

    def stop(self) -> None:
        if self.proc is not None:
            stop_session(self.proc, signal.SIGTERM, grace=30.0)  # vLLM frees the GPU on SIGTERM


@dataclass
class Supervisor:
    servers: list[Running]
    router: Router | None
    stopping: bool = False
    events: list[str] = field(default_factory=list)

    def poll(self) -> bool:
        """Probe every server, mark changes on the router; False once nothing can answer."""
        for r in self.servers:
            state = r.probe()
            if state != r.state:
                self.events.append(f"{r.server.port} {r.state}->{state}")
                where = f"{r.server.env} on GPU {r.server.visible_devices}, port {r.server.port}"
                (info if state == "up" else warn)(f"vLLM server {where}: {state} (log {r.log})")
                r.state = state
        if self.router is not None:
            if self.router.proc is None or self.router.proc.poll() is not None:
                warn("the router (nginx) exited; see " + str(self.router.error_log))
                return False
            self.router.mark_down(r.server.port for r in self.servers if r.state in ("sick", "dead"))
        return any(r.state != "dead" for r in self.servers)

    def stop(self) -> None:
        """The router first (no new requests), then every server; each stop waits until its
        processes are gone."""
        if self.router is not None:
            self.router.stop()
        for r in self.servers:
            r.stop()


def run(
    sup: Supervisor,
    environ: Sequence[Mapping[str, str]],
    interval: float = 2.0,
    until: Callable[[Supervisor], bool] | None = None,
) -> int:
    """Start everything, poll until SIGINT/SIGTERM (or `until` says so), stop everything.
    Exit 0 on a requested stop, 1 when every server or the router died."""

    def request_stop(signum: int, frame: object) -> None:
        sup.stopping = True

    old = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        for r, env in zip(sup.servers, environ, strict=True):
            r.start(env)
        if sup.router is not None:
            sup.router.start()
        while not sup.stopping and not (until and until(sup)):
            if not sup.poll():
                code = 1
                break
            deadline = time.monotonic() + interval
            while time.monotonic() < deadline and not sup.stopping:
                time.sleep(0.05)
    finally:
        sup.stop()
        for s, handler in old.items():
            signal.signal(s, handler)
    return code


# --- planning a serve: the doctor's GPUs, the layout, the checks, the commands ---------------------


@dataclass
class ServePlan:
    layout: fleet.Fleet
    commands: list[tuple[Server, list[str], dict[str, str]]]  # server, argv, its full environment
    router: Router | None
    nginx: str | None
    packages: dict[str, list[BuiltPackage]]
    model: str


def prepare(
    ws: Workspace,
    env_name: str | None,
    gpus_text: str,
    layout: str,
    user_args: Sequence[str],
    environ: Mapping[str, str],
) -> ServePlan:
    """Everything `stackforge serve` checks and decides before it starts a process."""
    if env_name:
        load_env(ws, env_name)  # a typo in -e is a usage error before any probing
    fleet.refuse_layout_flags(user_args)
    doctor = ask_doctor(ws)
    gpus = fleet.select(require_gpus(doctor, environ), fleet.parse_gpu_list(gpus_text))
    if env_name:  # an explicit environment must cover every chosen GPU, as for one GPU
        env = load_env(ws, env_name)
        check_coverage(ws, env, gpus)
        gpus = [replace(g, env=env.name) for g in gpus]
    rest, host, port = fleet.take_address(user_args)
    model = user_model(user_args) or DEFAULT_MODEL
    layout_plan = fleet.plan(
        gpus, layout, host=host, port=port, model_bytes=fleet.model_bytes(model, hf_cache_dir(environ))
    )
    envs = {s.env: load_env(ws, s.env) for s in layout_plan.servers}
    packages = {name: check_built(ws, env) for name, env in envs.items()}
    where = check_model(model, environ)
    commands = []
    for s in layout_plan.servers:
        env = envs[s.env]
        child = {**environ, **runtime_environment(env), **s.environment()}
        # one server: the user's vLLM arguments as given (their --host/--port included)
        args = [*user_args, *s.parallel_args()] if not layout_plan.router else [*rest, *s.vllm_args()]
        commands.append((s, [*launcher(ws, env, child), *serve_argv(env, args, child)], child))
    router, nginx = None, None
    if layout_plan.router:
        nginx = find_nginx(
            [ws.root / "runtime" / ".pixi" / "envs" / e / "bin" / "nginx" for e in envs], environ
        )
        router = Router(nginx or "nginx", ws.state / "router", layout_plan.backends, host, port)
    return ServePlan(layout_plan, commands, router, nginx, packages, where)


def shown(argv: Sequence[str], environ: Mapping[str, str]) -> str:
    """A command as printed: HF tokens and --api-key values hidden (vllm_args.redact_args)."""
    return shlex.join(redact_args(argv, environ))
