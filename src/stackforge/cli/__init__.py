"""The `stackforge` command line: one entry point, thin command modules on top of the stages.

Each module in COMMAND_MODULES has `register(groups)`, where `groups` maps "" (top level),
"patches", "audit", "verify", "stack" and "pins" to argparse sub-parser collections; a command sets
`func(args) -> int`. Command modules import only the console and `cli.options` at load time and
the stage that does the work inside `func`, so `stackforge --help` loads no build engine.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from stackforge import __version__
from stackforge.cli.options import VLLM_ARGS, add_root, add_stack
from stackforge.core.console import (
    EXIT_FAILED,
    EXIT_USAGE,
    StackforgeError,
    err,
    escape,
    forget_json,
    json_printed,
    print_json,
)

COMMAND_MODULES = (
    "stackforge.cli.sources",  # clone-all, clone, status, patches export / check
    "stackforge.cli.build",  # build, verify reproducible, lock, demo
    "stackforge.cli.audit",  # audit kernels, audit binaries
    "stackforge.cli.run",  # doctor, preflight, run-args, serve, generate
    "stackforge.cli.stacks",  # stack new
    "stackforge.cli.pins",  # pins resolve
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
    add_root(parser, top=True)
    add_stack(parser, top=True)
    top = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    groups = {"": top}
    for group, help_text in (
        ("patches", "export and check patch series"),
        ("audit", "check kernels and binaries for the environment's GPUs"),
        ("verify", "verify properties of the built packages"),
        ("stack", "make stacks for other releases"),
        ("pins", "resolve the commits git-repos.txt marks '-' (to be resolved)"),
    ):
        sub = top.add_parser(group, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        groups[group] = sub.add_subparsers(dest=f"{group}_command", metavar="COMMAND", parser_class=_Parser)
        sub.set_defaults(func=lambda _args, p=sub: (p.print_help(), EXIT_USAGE)[1])
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(groups)
    for parser_ in _commands(top):
        add_root(parser_)
        add_stack(parser_)
    return parser


def _commands(action: argparse._SubParsersAction) -> list[argparse.ArgumentParser]:
    """Every leaf command parser below `action`."""
    leaves = []
    for sub in dict.fromkeys(action.choices.values()):  # aliases share a parser
        nested = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
        leaves.extend(_commands(nested[0]) if nested else [sub])
    return leaves


def main(argv: list[str] | None = None) -> int:
    forget_json()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if getattr(args, "vllm_args", None) is not VLLM_ARGS:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.vllm_args = [a for a in extra if a != "--"]
    elif getattr(args, "vllm_args", None) is VLLM_ARGS:
        args.vllm_args = []
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    before = os.environ.get("STACKFORGE_STACK")
    if getattr(args, "stack", None):
        os.environ["STACKFORGE_STACK"] = args.stack  # every command, and what it starts, sees the stack
    try:
        return int(args.func(args) or 0)
    except StackforgeError as exc:
        return _failed(args, exc.render(), exc.message, exc.hint, exc.exit_code, exc.results)
    except OSError as exc:  # a fault of the environment (disk full, read-only, missing tool): no traceback
        message = f"{exc.filename}: " * bool(exc.filename) + (exc.strerror or str(exc))
        hint = "fix the path or the machine (space, permissions, PATH) and run the same command again"
        return _failed(args, f"{message}\n  what to do: {hint}", message, hint, EXIT_FAILED)
    except KeyboardInterrupt:
        err.print("[red]interrupted[/red]: run the same command again to resume")
        return 130
    finally:  # main may run many commands in one process (tests): leave the environment as it was
        if before is None:
            os.environ.pop("STACKFORGE_STACK", None)
        else:
            os.environ["STACKFORGE_STACK"] = before


def _failed(
    args: argparse.Namespace, text: str, message: str, hint: str | None, code: int, results: object = None
) -> int:
    err.print(f"[red]error:[/red] {escape(text)}")
    if getattr(args, "json", False) and not json_printed():  # a script reads stdout: JSON, always
        answer = {"ok": False, "error": message, "hint": hint, "exit_code": code}
        print_json(answer if results is None else {**answer, "results": results})
    return code


if __name__ == "__main__":
    sys.exit(main())
