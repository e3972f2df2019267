"""Commands on stacks: `stack new` starts a stack for another vLLM release from an existing one."""

from __future__ import annotations

import argparse

from stackforge.cli.options import add_json
from stackforge.core.console import EXIT_FAILED, err, escape, out, print_json

EPILOG = (
    "Reads the release's pins from PyPI (the vLLM sdist, the torch wheel's METADATA and "
    "torch/version.py, read by HTTP range requests; cached in $STACKFORGE_CACHE or "
    "~/.cache/stackforge/upstream), writes stacks/NAME/ (stack.yaml, git-repos.txt, the source "
    "stack's patches/) and tries each patch with `git am --3way` on the new releases. "
    "Exit codes: 0 written, every patch applies (or cannot be checked from PyPI's files); "
    "1 failed (nothing written), or written with patches that conflict; 2 bad usage, or "
    "stacks/NAME exists (it is never replaced)."
)
_COLOURS = {"clean": "green", "3way": "yellow", "conflict": "red", "unchecked": "dim"}
_ACTIONS = {"kept": "green", "updated": "cyan", "new": "cyan", "commented": "yellow", "dropped": "yellow"}


def _cmd_new(args: argparse.Namespace) -> int:
    from stackforge.core.workspace import find_workspace
    from stackforge.verify.upstream.newstack import new_stack

    ws = find_workspace(args.root)
    quiet = args.json

    def progress(message: str) -> None:
        if not quiet:
            err.print(f"[dim]{escape(message)}[/dim]")

    report = new_stack(ws, args.name, args.vllm, args.source, progress=progress)
    if args.json:
        print_json(report.as_json())
    else:
        _print(report)
    return EXIT_FAILED if report.conflicts else 0


def _table(*columns: str, title: str):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name in columns:
        table.add_column(name, overflow="fold")  # SHAs and paths whole, never cut with an ellipsis
    return table


def _print(report) -> None:
    versions = ", ".join(f"{k} {v}" for k, v in report.versions.items())
    out.print(escape(f"stacks/{report.name}: {versions} (from the stack {report.source})"))
    reads = _table("read", "value", "where", title="what PyPI's files say")
    for row in report.reads:
        reads.add_row(escape(row["what"]), escape(row["value"]), escape(row["where"]))
    out.print(reads)
    lines = _table("source", "line", "pin", "why", title=f"stacks/{report.name}/git-repos.txt")
    for row in report.lines:
        colour = _ACTIONS.get(row.action, "white")
        lines.add_row(
            escape(row.name), f"[{colour}]{row.action}[/{colour}]", escape(row.commit[:12]), escape(row.note)
        )
    out.print(lines)
    out.print("[bold]patches[/bold] (each tried with `git am --3way`, as `stackforge clone` applies them):")
    for trial in report.series:
        out.print(escape(f"{trial.name}: tried on {trial.base}; 3-way fallback: {trial.three_way}"))
        for v in trial.verdicts:
            colour = _COLOURS.get(v.verdict, "white")
            said = (
                f" ({', '.join(v.files)}) skipped"
                if v.verdict == "conflict"
                else f"  {v.detail}" * bool(v.detail)
            )
            out.print(f"  [{colour}]{v.verdict:>9}[/{colour}]  {escape(v.patch + said)}")
    for note in report.notes:
        out.print(escape(f"  note: {note}"))
    t = report.timings
    summary = f"wrote {report.path} in {t['total_s']:.1f}s (reading pins {t['read_s']:.1f}s, patches {t['check_s']:.1f}s)"
    if report.conflicts:
        summary += f"; {len(report.conflicts)} patch(es) conflict: rebase them in the new stack"
    err.print(escape(summary))


def register(groups) -> None:
    sub = groups["stack"]
    help_text = "start stacks/NAME for another vLLM release from an existing stack"
    p = sub.add_parser(
        "new", help=help_text, description=help_text[0].upper() + help_text[1:] + ".", epilog=EPILOG
    )
    p.add_argument("name", metavar="NAME", help="the new stack's folder name under stacks/, e.g. vllm-0.34")
    p.add_argument("--vllm", required=True, metavar="X.Y.Z", help="the vLLM release on PyPI")
    p.add_argument(
        "--from",
        dest="source",
        metavar="STACK",
        help="the stack to start from: a stacks/ name or 'default' (default: the chosen stack, "
        "--stack/$STACKFORGE_STACK, else the one at the root)",
    )
    add_json(p, "the report")
    p.set_defaults(func=_cmd_new)
