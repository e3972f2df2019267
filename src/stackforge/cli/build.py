"""Commands of the build stage: build, lock, verify reproducible, demo."""

from __future__ import annotations

import argparse
from pathlib import Path

from stackforge.cli.options import add_dry_run, add_env, add_json
from stackforge.core.console import Failure, err, out, print_json


def _cmd_build(args: argparse.Namespace) -> int:
    from stackforge.build import channel
    from stackforge.build.builder import run_plan
    from stackforge.build.plan import make_plan, print_plan
    from stackforge.core.workspace import find_workspace
    from stackforge.spec.envs import load_env

    ws = find_workspace(args.root)
    env = load_env(ws, args.env)
    plan = make_plan(ws, env, args.packages or None, from_source=tuple(args.from_source))
    if args.json:
        print_json({"env": env.name, "dry_run": args.dry_run, "plan": [i.summary() for i in plan.items]})
    else:
        print_plan(plan)
    blocked = [i.name for i in plan.items if i.status == "blocked"]
    if args.dry_run:
        if blocked:  # a plan that cannot run says so in its exit code, dry run or not
            err.print(f"[yellow]{len(blocked)} package(s) blocked[/yellow]: {', '.join(blocked)} (exit 1)")
        return 1 if blocked else 0
    outcomes = run_plan(ws, plan, presolve=not args.no_presolve, check_inputs=_audit_inputs(ws, env))
    built = [o for o in outcomes if o.status == "built"]
    err.print(
        f"{len(built)} built, {len(outcomes) - len(built)} up to date; channel: {ws.output} "
        f"(use it: -c {channel.channel_url(ws.output)})"
    )
    return 0


def _audit_inputs(ws, env):
    """`audit binaries` on a derived package's inputs, as the build's gate."""

    def check(item, inputs) -> None:
        from stackforge.verify.binaries import require_inputs_cover

        count = require_inputs_cover(ws, env, item.name, inputs)
        what = f"{count} libraries with GPU code cover {env.name}" if count else "no GPU code in them"
        err.print(f"[green]audited[/green] {item.name}'s inputs: {what}")

    return check


def _from_source(text: str) -> list[str]:
    return [p for p in (s.strip() for s in text.split(",")) if p]


def _register_build(groups: dict[str, argparse._SubParsersAction]) -> None:
    p = groups[""].add_parser(
        "build",
        help="build the stack's conda packages for a GPU environment into output/",
        description="Build the packages of recipes/ for one GPU environment in dependency order, "
        "skipping each whose cache key is already in output/. Exit 1 when a package is blocked "
        "(its sources are not cloned or not current, or its binary input is not pinned), with --dry-run "
        "too. Packages named in stack.yaml `derive:` are conda-forge's artifact (pinned in "
        "stackforge.lock, audited for the environment's GPUs) plus our patch series; the rest compile.",
    )
    add_env(p)
    p.add_argument("packages", nargs="*", metavar="PKG", help="build only these (and what their keys need)")
    add_dry_run(p, "print the plan (package, key, built/cached, why); build nothing")
    p.add_argument(
        "--from-source",
        type=_from_source,
        action="extend",
        default=[],
        metavar="PKG[,PKG]",
        help="compile these packages (or `all`) from their recipes instead of deriving them from the "
        "conda-forge artifact stackforge.lock pins (stack.yaml `derive:`)",
    )
    p.add_argument(
        "--no-presolve",
        action="store_true",
        help="skip solving every requirement against the channels before the first compile",
    )
    add_json(p, "the plan")
    p.set_defaults(func=_cmd_build)


def _cmd_reproducible(args: argparse.Namespace) -> int:
    from stackforge.core.workspace import find_workspace
    from stackforge.spec.envs import load_env
    from stackforge.verify.reproducible import rebuild_and_compare

    ws = find_workspace(args.root)
    env = load_env(ws, args.env)
    results = rebuild_and_compare(ws, env, args.packages or None, keep=args.keep)
    if args.json:
        print_json(
            [
                {
                    "package": r.name,
                    "file": r.file_name,
                    "sha256": r.sha256,
                    "rebuilt_sha256": r.rebuilt_sha256,
                    "identical": r.identical,
                    "differences": [{"member": d.member, "detail": d.detail} for d in r.differences],
                }
                for r in results
            ]
        )
    for r in [] if args.json else results:
        if r.identical:
            out.print(f"[green]identical[/green]  {r.file_name}  sha256 {r.sha256}")
        else:
            out.print(f"[red]differs[/red]    {r.file_name}")
            out.print(f"    in output/:  {r.sha256}\n    rebuilt:     {r.rebuilt_sha256}")
            for d in r.differences:
                out.print(f"    {d.member}: {d.detail}")
    bad = [r for r in results if not r.identical]
    if bad:
        raise Failure(
            f"{len(bad)} of {len(results)} package(s) are not reproducible: {', '.join(r.name for r in bad)}",
            hint="the list above names each differing file; rebuild with `--keep` to inspect the rebuilt package",
        )
    if not args.json:
        err.print(f"[green]{len(results)} package(s) rebuilt byte-identical[/green]")
    return 0


def _register_reproducible(groups: dict[str, argparse._SubParsersAction]) -> None:
    p = groups["verify"].add_parser(
        "reproducible",
        help="rebuild packages into a scratch directory and compare sha256 with output/",
        description="Rebuild the environment's packages (or the named ones) into a scratch directory, "
        "from the same inputs, and check that each is byte-identical to the one in output/.",
    )
    add_env(p)
    p.add_argument("packages", nargs="*", metavar="PKG", help="packages to check (default: all)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory with the rebuilt packages")
    add_json(p, "the results")
    p.set_defaults(func=_cmd_reproducible)


def _cmd_lock(args: argparse.Namespace) -> int:
    from stackforge.build.lock import check_lock, lock_path, write_lock
    from stackforge.core.workspace import find_workspace

    ws = find_workspace(args.root)
    if args.check:
        diffs = check_lock(ws)
        if diffs:
            for line in diffs:
                out.print(f"[red]differs[/red] {line}")
            raise Failure(
                f"{lock_path(ws)} does not match the workspace ({len(diffs)} difference(s))",
                hint="restore the inputs it pins, or accept the new state with `stackforge lock` and commit it",
            )
        err.print(f"[green]{lock_path(ws)} matches the workspace[/green]")
        return 0
    path, state = write_lock(ws, update_binaries=args.update_binaries)
    n_pkgs = sum(len(p) for p in state["packages"].values())
    n_bin = sum(len(p) for p in state.get("binaries", {}).values())
    err.print(
        f"wrote {path}: {len(state['sources'])} source(s), {n_bin} binary input(s), {n_pkgs} package(s)"
    )
    return 0


def _register_lock(groups: dict[str, argparse._SubParsersAction]) -> None:
    p = groups[""].add_parser(
        "lock",
        help="write stackforge.lock: sources, patches, patched trees and built packages with hashes",
        description="Write stackforge.lock (flake.lock spirit): per source url, pin, sha256 of each patch and "
        "the patched git tree; per environment the binary inputs of derived packages (URL, sha256: resolved "
        "once against the channels, so the first `stackforge lock` needs conda-forge reachable) and each "
        "built package's file, key and sha256.",
    )
    p.add_argument("--check", action="store_true", help="fail, naming each difference, if the lock is stale")
    p.add_argument(
        "--update-binaries",
        action="store_true",
        help="resolve every binary input again (default: keep each pin while stack.yaml still asks for it)",
    )
    p.set_defaults(func=_cmd_lock)


def _cmd_demo(args: argparse.Namespace) -> int:
    from stackforge.demo.run import run_demo

    return run_demo(Path(args.dir), args.env or "pascal")


def _register_demo(groups: dict[str, argparse._SubParsersAction]) -> None:
    p = groups[""].add_parser(
        "demo",
        help="run the whole pipeline on a miniature stack (clone, patch, build, lock), offline",
        description="Create a miniature triton/pytorch/vllm-shaped stack in DIR and run the real pipeline on it: "
        "clone + patch from a local mirror, rattler-build into DIR/output, lock, install and run. "
        "Re-running it rebuilds nothing.",
    )
    p.add_argument(
        "dir", nargs="?", default="stackforge-demo", metavar="DIR", help="where (default: ./stackforge-demo)"
    )
    add_env(p, fallback="pascal")
    p.set_defaults(func=_cmd_demo)


def register(groups) -> None:
    _register_build(groups)
    _register_reproducible(groups)
    _register_lock(groups)
    _register_demo(groups)
