"""Options that mean the same in every command: --root, -e/--env, --json, --dry-run."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any

# A command whose `vllm_args` default is this takes every option it does not know as a vLLM
# argument (`serve --model X --port 8001`); `main` fills the list.
VLLM_ARGS: list[str] = []

ROOT_HELP = "workspace root (default: $STACKFORGE_ROOT or the nearest git-repos.txt)"


def add_root(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """--root on the top parser and on every command: `stackforge --root D build` and
    `stackforge build --root D` mean the same (a command's own value wins)."""
    parser.add_argument("--root", default=None if top else argparse.SUPPRESS, help=ROOT_HELP)


STACK_HELP = "the stack: stacks/NAME/ of the workspace (default: $STACKFORGE_STACK, else the one at the root)"


def add_stack(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """--stack on the top parser and on every command, like --root."""
    parser.add_argument(
        "--stack", metavar="NAME", default=None if top else argparse.SUPPRESS, help=STACK_HELP
    )


def add_env(parser: argparse.ArgumentParser, *, required: bool = True, fallback: str | None = None) -> None:
    """-e/--env: the GPU environment, recipes/variants/<env>.yaml; default $STACKFORGE_ENV (the pixi
    environments pascal and volta set it). `fallback` says what a command uses when neither is given;
    without one the option is required."""
    default = os.environ.get("STACKFORGE_ENV") or None
    tail = f", else {fallback}" if fallback else ""
    parser.add_argument(
        "-e",
        "--env",
        default=default,
        required=required and default is None and fallback is None,
        metavar="ENV",
        help=f"GPU environment: recipes/variants/<ENV>.yaml, e.g. pascal or volta (default: $STACKFORGE_ENV{tail})",
    )


def add_json(parser: argparse.ArgumentParser, what: str = "the result") -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON on stdout, nothing else")


def add_dry_run(
    parser: argparse.ArgumentParser, what: str = "say what would be done, change nothing"
) -> None:
    parser.add_argument("--dry-run", action="store_true", help=what)


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a usage error otherwise, never a traceback)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def stream_actions(
    rows: Iterable[Any],
    *,
    as_json: bool,
    colours: dict[str, str],
    default: str,
    line: Callable[[Any], str],
    width: int = 12,
) -> list[Any]:
    """Print each result of a long step as it arrives (its `action`, coloured, then `line(r)`), or
    with --json collect them and print one JSON list at the end. A failure part-way carries the
    results so far on the error, so `main` prints them with --json too."""
    from stackforge.core.console import StackforgeError, err, escape, print_json

    results: list[Any] = []
    try:
        for r in rows:
            results.append(r)
            if not as_json:
                colour = colours.get(r.action, default)
                err.print(f"[{colour}]{r.action:>{width}}[/{colour}]  {escape(line(r))}")
    except StackforgeError as exc:
        exc.results = [asdict(r) for r in results]
        raise
    if as_json:
        print_json([asdict(r) for r in results])
    return results
