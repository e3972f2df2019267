"""Running git: every command echoed before it runs, logged, and retried when it uses the network.

Patch application runs with a fixed committer and no user/system git config, so the patched
HEAD is the same commit on every machine.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from stackforge.core.console import Failure, echo_command

# Identity for commits stackforge makes with `git am`; dates come from the patches themselves.
COMMITTER = {"GIT_COMMITTER_NAME": "stackforge", "GIT_COMMITTER_EMAIL": "stackforge@localhost"}
# Nothing in ~/.gitconfig or /etc/gitconfig (am.threeWay, mailinfo.scissors, commit.gpgSign,
# diff.noprefix, format.signature...) may change what a patch becomes or how it is written.
HERMETIC = {"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1", **COMMITTER}
# Answers from a remote that retrying cannot change.
_FINAL = re.compile(
    r"not our ref|couldn't find remote ref|no such remote ref|Repository not found|does not appear to be a git repository"
)
# Variables that would override the dates and identities the patches carry.
_SCRUBBED = ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_AUTHOR_DATE", "GIT_COMMITTER_DATE")


@dataclass
class GitResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class Git:
    """A git runner bound to a log file; `quiet` hides the echo (used by `status`)."""

    def __init__(self, log: Path | None = None, *, quiet: bool = False) -> None:
        self.log = log
        self.quiet = quiet
        if log:
            log.parent.mkdir(parents=True, exist_ok=True)

    def _record(self, text: str) -> None:
        if self.log:
            with self.log.open("a", encoding="utf-8") as fh:
                fh.write(text if text.endswith("\n") else text + "\n")

    def run(
        self,
        args: list[str],
        cwd: Path | None = None,
        *,
        env: dict[str, str] | None = None,
        check: bool = True,
        echo: bool = True,
    ) -> GitResult:
        argv = ["git", *args]
        if echo and not self.quiet:
            echo_command(argv, cwd)
        self._record(f"$ {' '.join(argv)}  (in {cwd or Path.cwd()})")
        proc = subprocess.run(
            argv,
            cwd=cwd,
            env=_environ(env),
            capture_output=True,
            text=True,
            check=False,
        )
        self._record(proc.stdout + proc.stderr)
        result = GitResult(proc.returncode, proc.stdout, proc.stderr)
        if check and not result.ok:
            raise Failure(f"`{' '.join(argv)}` failed in {cwd}: {_last_line(proc.stderr)}")
        return result

    def out(self, args: list[str], cwd: Path, **kw: object) -> str:
        return self.run(args, cwd, echo=False, **kw).stdout.strip()  # type: ignore[arg-type]

    def network(
        self, args: list[str], cwd: Path | None = None, *, what: str, cleanup: Path | None = None
    ) -> None:
        """Run a command that talks to a remote: stream its progress, retry with backoff.

        `cleanup` is removed before each retry, so a half-fetched clone never survives.
        """
        attempts = max(1, int(os.environ.get("STACKFORGE_NET_RETRIES", "3")))
        delay = float(os.environ.get("STACKFORGE_RETRY_DELAY", "2"))
        # Progress meters only where someone watches; logs and CI output get the lines that matter.
        tty = sys.stderr.isatty()
        argv = ["git", *(a for a in args if tty or a != "--progress")]
        tail: deque[str] = deque(maxlen=12)
        for attempt in range(1, attempts + 1):
            if not self.quiet:
                echo_command(argv, cwd)
            self._record(f"$ {' '.join(argv)}  (in {cwd or Path.cwd()}) attempt {attempt}/{attempts}")
            code = _stream(argv, cwd, tail, self._record, show=tty and not self.quiet)
            if code == 0:
                return
            if cleanup is not None:
                _rmtree(cleanup)
            if any(_FINAL.search(line) for line in tail):
                raise Failure(f"{what} failed: {_reason(tail)}")
            if attempt < attempts:
                wait = delay * 2 ** (attempt - 1)
                print(
                    f"  {what} failed (attempt {attempt}/{attempts}); retrying in {wait:g}s", file=sys.stderr
                )
                time.sleep(wait)
        raise Failure(
            f"{what} failed after {attempts} attempt(s): {_reason(tail)}",
            hint="check the network and the URL in git-repos.txt, or use --mirror DIR for a local mirror; "
            "nothing half-fetched was kept, so running the same command again is safe",
        )


def _stream(argv: list[str], cwd: Path | None, tail: deque[str], record, *, show: bool) -> int:
    """Run argv, copying its stderr (git's progress) to ours while keeping the last lines."""
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
    )
    assert proc.stderr is not None
    line = ""
    try:
        for chunk in iter(lambda: proc.stderr.read(1), ""):
            if show:
                sys.stderr.write(chunk)
            if chunk in "\r\n":
                if line.strip():
                    tail.append(line.strip())
                    if chunk == "\n":
                        record(line)
                line = ""
            else:
                line += chunk
    finally:
        code = proc.wait()
    if line.strip():
        tail.append(line.strip())
    return code


def _environ(extra: dict[str, str] | None) -> dict[str, str]:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", **(extra or {})}
    if extra and extra.get("GIT_CONFIG_NOSYSTEM"):  # hermetic runs: the patch alone decides
        for key in _SCRUBBED:
            env.pop(key, None)
    return env


def _reason(tail: deque[str]) -> str:
    """git's own verdict ('fatal: ...') rather than the advice lines it prints after it."""
    fatal = [ln for ln in tail if ln.startswith(("fatal:", "error:"))]
    return fatal[0] if fatal else (tail[-1] if tail else "no output")


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
