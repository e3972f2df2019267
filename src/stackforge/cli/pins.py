"""`stackforge pins resolve`: write the commits git-repos.txt marks `-` (to be resolved), once."""

from __future__ import annotations

import argparse

from stackforge.cli.options import add_dry_run, add_json, stream_actions
from stackforge.core.console import err, escape

DESCRIPTION = (
    "Read the commit of each git-repos.txt line whose commit is '-' and write its full SHA into the "
    "line (comments and keys kept). ref=TAG: the tag's commit (git ls-remote, annotated tags "
    "peeled); pin=SOURCE:PATH: the SHA in that file of SOURCE at SOURCE's pin (its checkout, else "
    "just that commit fetched blobless into .stackforge/pins/). Chains resolve in order. Run it "
    "once where the remotes are reachable and commit the file; clone-all then needs no ref. "
    "A named line that is pinned already is checked, never rewritten without --update."
)
EPILOG = (
    "Exit codes: 0 every line asked for is pinned; 1 a ref or file could not be read, or a "
    "pinned line no longer matches its ref= or pin= (--update takes the new commit); 2 bad usage."
)
_COLOURS = {"resolved": "cyan", "updated": "cyan", "up-to-date": "green", "pinned": "dim"}


def _line(r) -> str:
    old = f"{r.old[:12]} -> " if r.old and r.old != r.commit else ""
    return f"{r.name:<16} {old}{r.commit[:12]:<12} {r.how}"


def _cmd_resolve(args: argparse.Namespace) -> int:
    from stackforge.core.workspace import find_workspace
    from stackforge.sources.pins import resolve_pins
    from stackforge.spec.manifest import load_manifest

    ws = find_workspace(args.root)
    manifest = load_manifest(ws.manifest)
    rows = resolve_pins(
        ws, manifest, args.names or None, update=args.update, dry_run=args.dry_run, quiet=args.json
    )
    results = stream_actions(
        rows, as_json=args.json, colours=_COLOURS, default="yellow", line=_line, width=13
    )
    if not args.json and any(r.action in ("resolved", "updated") for r in results):
        err.print(escape(f"wrote {manifest.path}: review and commit it (git diff {manifest.path.name})"))
    return 0


def register(groups) -> None:
    help_text = "write the full SHA of each git-repos.txt line marked '-' (from its ref= or pin=)"
    p = groups["pins"].add_parser("resolve", help=help_text, description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("names", nargs="*", metavar="NAME", help="default: every line marked '-'")
    p.add_argument(
        "--update",
        action="store_true",
        help="re-resolve the named pinned lines and write the commit their ref=/pin= gives now",
    )
    add_dry_run(p, "read the commits and say what would be written, change nothing")
    add_json(p, "the results")
    p.set_defaults(func=_cmd_resolve)
