"""Commands of the sources stage: clone-all, clone, status, patches export, patches check."""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import asdict

from stackforge.cli.options import add_dry_run, add_json, stream_actions
from stackforge.core.console import EXIT_FAILED, StackforgeError, UsageError, err, escape, out, print_json

EXIT_CODES = (
    "Exit codes: 0 every source is at pin + series; 1 failed, or a source was kept (left alone "
    "because it has commits above the series: see its line), or clone-all met a line whose commit "
    "is not resolved yet ('-': `stackforge pins resolve` writes it); 2 bad usage, a named source "
    "unresolved included."
)

CHECK_VERDICTS = (
    "Each patch is clean (applies as it is), 3way (applies only by git's 3-way merge, as clone "
    "does too), conflict (clone stops here: the files and hunks are named) or not-tried (after a "
    "conflict, clone applies no further patch, so neither does the check)."
)
CHECK_EXIT_CODES = (
    "Exit codes: 0 clone would apply every series checked; 1 it would stop at a conflict; 2 bad usage."
)


def _mirror_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mirror",
        metavar="DIR",
        default=os.environ.get("STACKFORGE_MIRROR") or None,
        help="resolve each source <name> to DIR/<name>.git (default: $STACKFORGE_MIRROR)",
    )


_SYNC_COLOURS = {"up-to-date": "green", "kept": "yellow", "skipped": "dim", "unresolved": "red"}


def _sync_line(r) -> str:
    return f"{r.name:<16} {r.head[:12]:<12} {r.detail}"


def _cmd_sync(args: argparse.Namespace) -> int:
    from stackforge.core.workspace import find_workspace
    from stackforge.sources.checkouts import sync_each
    from stackforge.spec.manifest import load_manifest

    started = time.perf_counter()

    def rows():  # the workspace is read inside, so its faults reach --json like a clone's
        ws = find_workspace(args.root)
        manifest = load_manifest(ws.manifest)
        names = getattr(args, "names", None) or None
        yield from sync_each(
            ws, manifest, names, mirror=args.mirror, force=args.force, dry_run=args.dry_run, quiet=args.json
        )

    results = stream_actions(
        rows(), as_json=args.json, colours=_SYNC_COLOURS, default="cyan", line=_sync_line
    )
    if not args.json:
        err.print(f"[dim]{len(results)} source(s) in {time.perf_counter() - started:.2f}s[/dim]")
        unresolved = [r.name for r in results if r.action == "unresolved"]
        if unresolved:
            err.print(
                escape(
                    f"not cloned, no commit yet: {', '.join(unresolved)}; `stackforge pins resolve` (with the "
                    "same --stack) writes them where the remotes are reachable: commit the file, run again"
                )
            )
    return EXIT_FAILED if any(r.action in ("kept", "unresolved") for r in results) else 0


def _cmd_status(args: argparse.Namespace) -> int:
    from stackforge.core.workspace import find_workspace
    from stackforge.sources.checkouts import Checkouts
    from stackforge.spec.manifest import load_manifest

    ws = find_workspace(args.root)
    manifest = load_manifest(ws.manifest)
    checkouts = Checkouts(ws, quiet=True)
    rows = [checkouts.status(src) for src in manifest.sources]
    if not args.json:
        from stackforge.spec.stack import describe

        err.print(escape(f"stack {describe(ws) or '(no stack.yaml)'}; pins from {ws.manifest}"))
    if args.json:
        print_json([{**asdict(r), "up_to_date": r.up_to_date} for r in rows])
        return 0
    from rich.table import Table

    table = Table("source", "pin", "HEAD", "patches", "dirty", "state")
    for r in rows:
        style = "green" if r.up_to_date and not r.dirty else "red" if r.state == "unresolved" else "yellow"
        table.add_row(
            escape(r.name),
            r.pin[:12],
            (r.head or "-")[:12],
            f"{r.applied}/{r.patches}",
            "yes" if r.dirty else "no",
            f"[{style}]{r.state}[/{style}]",
        )
    out.print(table)
    unresolved = [s for s in manifest.sources if not s.resolved]
    if unresolved:
        from stackforge.spec.manifest import resolve_command

        err.print(
            escape(
                f"{len(unresolved)} line(s) of {manifest.path.name} have no commit yet "
                f"({', '.join(f'{s.name}: line {s.line}' for s in unresolved)}): "
                f"`{resolve_command(*unresolved)}` writes them"
            )
        )
    return 0


def _register_clone(groups: dict[str, argparse._SubParsersAction]) -> None:
    top = groups[""]
    for name, help_text in (
        ("clone-all", "clone or update every source in git-repos.txt and apply its patches"),
        ("clone", "clone or update the named sources"),
    ):
        p = top.add_parser(
            name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".", epilog=EXIT_CODES
        )
        if name == "clone":
            p.add_argument("names", nargs="+", metavar="NAME", help="source names from git-repos.txt")
        _mirror_arg(p)
        p.add_argument(
            "--force",
            action="store_true",
            help="update even over local changes (saved under a backup ref first)",
        )
        add_dry_run(p)
        add_json(p, "the results")
        p.set_defaults(func=_cmd_sync)
    help_text = "pin, HEAD, patches applied and dirty state of each checkout"
    p = top.add_parser("status", help=help_text, description=f"Show the {help_text}; changes nothing.")
    add_json(p, "the table")
    p.set_defaults(func=_cmd_status)


def _cmd_export(args: argparse.Namespace) -> int:
    from stackforge.core.workspace import find_workspace
    from stackforge.sources.patches import export_series

    ws = find_workspace(args.root)
    written = export_series(ws, args.name, dry_run=args.dry_run, force=args.force)
    if args.json:
        print_json([str(p.relative_to(ws.root)) for p in written])
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    report: dict = {}
    try:
        return _check(args, report)
    except StackforgeError as exc:
        exc.results = report  # main prints it with --json
        raise


def _check(args: argparse.Namespace, report: dict) -> int:
    from stackforge.core.git import Git
    from stackforge.core.workspace import find_workspace
    from stackforge.sources.checkouts import has_commit, series_files
    from stackforge.sources.patches import check_series
    from stackforge.spec.manifest import load_manifest, require_resolved

    ws = find_workspace(args.root)
    manifest = load_manifest(ws.manifest)
    failed = False
    for name in args.names or [s.name for s in manifest.sources if series_files(ws, s.name)]:
        src = manifest.get(name)
        if not args.rev:
            require_resolved(src)
        dest = ws.checkout(name)
        if not (dest / ".git").exists():
            raise UsageError(f"sources/{name} is not cloned", hint=f"run `stackforge clone {name}` first")
        git = Git(ws.state / "logs" / f"sources-{name}.log", quiet=args.json)
        rev = args.rev or src.commit
        if not has_commit(dest, git, rev):
            git.network(["fetch", "--filter=blob:none", "origin", rev], dest, what=f"fetching {rev}")
        base = git.out(["rev-parse", "--verify", f"{rev}^{{commit}}"], dest)
        results = check_series(dest, base, series_files(ws, name), git)
        report[name] = {"base": base, "patches": [asdict(r) for r in results]}
        failed |= not all(r.ok for r in results)
        if not args.json:
            rev_note = f" ({args.rev})" if args.rev else ""
            err.print(f"[bold]{escape(name)}[/bold] {escape(f'at {base[:12]}{rev_note}:')}")
            for r in results:
                colour = {"clean": "green", "3way": "yellow", "not-tried": "dim"}.get(r.verdict, "red")
                files = f"  ({', '.join(r.files)})" if r.verdict == "conflict" else ""
                err.print(f"  [{colour}]{r.verdict:>9}[/{colour}]  {escape(f'{r.patch}{files}')}")
                for line in r.detail.splitlines():
                    err.print(f"  {'':>9}    {escape(line)}")
    if args.json:
        print_json(report)
    return 1 if failed else 0


def _register_patches(groups: dict[str, argparse._SubParsersAction]) -> None:
    sub = groups["patches"]
    help_text = "turn the commits above the pin in sources/NAME into patches/NAME/"
    p = sub.add_parser("export", help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
    p.add_argument("name", metavar="NAME", help="a source name from git-repos.txt, e.g. vllm")
    add_dry_run(p, "say what would be written, change nothing")
    p.add_argument(
        "--force",
        action="store_true",
        help="export even when the series on disk is not the one the checkout carries "
        "(edited since, or left at the pin by a conflict); the old series is backed up",
    )
    add_json(p, "the written files")
    p.set_defaults(func=_cmd_export)
    help_text = "apply a series as clone does (git am --3way) in a scratch worktree and report each patch"
    p = sub.add_parser(
        "check",
        help=help_text,
        description=help_text[0].upper() + help_text[1:] + "; the checkout is not touched. " + CHECK_VERDICTS,
        epilog=CHECK_EXIT_CODES,
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="default: every source that has patches")
    p.add_argument("--rev", help="check against this commit instead of the pin (e.g. a new upstream release)")
    add_json(p, "the report")
    p.set_defaults(func=_cmd_check)


def register(groups) -> None:
    _register_clone(groups)
    _register_patches(groups)
