"""Terminal output, errors and exit codes shared by every command.

Exit codes: 0 done, 1 failed, 2 bad usage. Commands raise `Failure` or `UsageError`;
the CLI turns them into a message on stderr and the exit code.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

__all__ = ["escape"]  # re-exported: every message that is not our own markup goes through it

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class StackforgeError(Exception):
    """An error with a message meant for the user and an exit code."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.results: object = None  # what a --json command had done before it failed

    def render(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  what to do: {self.hint}"


class Failure(StackforgeError):
    """The command ran and failed (exit 1)."""


class UsageError(StackforgeError):
    """Bad input: arguments, a malformed file (exit 2)."""

    exit_code = EXIT_USAGE


def info(message: str) -> None:
    """Plain text on stderr: paths and captured output in it are never read as markup."""
    err.print(escape(message))


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {escape(message)}")


def echo_command(argv: list[str], cwd: Path | None = None) -> None:
    """Print a command before it runs, so every git/rattler step is visible and repeatable."""
    where = f"(cd {cwd}) " if cwd else ""
    err.print(f"[dim]$ {escape(where + ' '.join(_quote(a) for a in argv))}[/dim]")


def _quote(arg: str) -> str:
    return arg if arg and all(c.isalnum() or c in "-_./=:@+,%" for c in arg) else repr(arg)


_json_printed = False


def print_json(data: Any) -> None:
    global _json_printed
    _json_printed = True
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def forget_json() -> None:
    """A new command starts: it has printed no JSON yet (main may run several in one process)."""
    global _json_printed
    _json_printed = False


def json_printed() -> bool:
    """Whether this process has printed its JSON answer (the CLI prints one on failure otherwise)."""
    return _json_printed


def file_logger(name: str, path: Path) -> logging.Logger:
    """A logger that appends to `path` (creating its folder): long steps keep a log on disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(f"stackforge.{name}.{path}")
    if not logger.handlers:
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger
