"""The `stackforge` command line: one entry point, subcommands registered by their modules.

Each command module has `register(groups)`, where `groups` maps "" (top level), "patches",
"audit" and "verify" to argparse sub-parser collections; a command sets `func(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from stackforge import __version__
from stackforge.console import EXIT_USAGE, StackforgeError, err

COMMAND_MODULES = (
    "stackforge.sources",  # clone-all, clone, status
    "stackforge.patches",  # patches export / check
    "stackforge.build",  # build
    "stackforge.reproducible",  # verify reproducible
    "stackforge.lockfile",  # lock
    "stackforge.demo",  # demo
    "stackforge.kernel_audit",  # audit kernels
    "stackforge.binary_audit",  # audit binaries
    "stackforge.doctor",  # doctor
    "stackforge.runtime",  # run-args (used by run_simple.sh and serve)
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 already; keep its text, add a hint
        self.print_usage(sys.stderr)
        err.print(f"{self.prog}: error: {message}\n  see: {self.prog} --help")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="stackforge",
        description="Reproducible vLLM, PyTorch and Triton for Pascal (sm_60/61) and Volta (sm_70) GPUs: "
        "clone pinned sources, patch, audit, build conda packages, run.",
        epilog="Exit codes: 0 done, 1 failed, 2 bad usage. `stackforge COMMAND --help` for each command.",
    )
    parser.add_argument("--version", action="version", version=f"stackforge {__version__}")
    parser.add_argument(
        "--root", help="workspace root (default: $STACKFORGE_ROOT or the nearest git-repos.txt)"
    )
    top = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    groups = {"": top}
    for group, help_text in (
        ("patches", "export and check patch series"),
        ("audit", "check kernels and binaries for the environment's GPUs"),
        ("verify", "verify properties of the built packages"),
    ):
        sub = top.add_parser(group, help=help_text, description=help_text)
        groups[group] = sub.add_subparsers(dest=f"{group}_command", metavar="COMMAND", parser_class=_Parser)
        sub.set_defaults(func=lambda _args, p=sub: (p.print_help(), EXIT_USAGE)[1])
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(groups)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except StackforgeError as exc:
        err.print(f"[red]error:[/red] {exc.render()}")
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("[red]interrupted[/red]: run the same command again to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
