"""Running git: every command echoed before it runs, logged, and retried when it uses the network.

This is the one git runner: one committer identity and hermetic mode (`HERMETIC`), one retry
policy (`STACKFORGE_NET_RETRIES`, `STACKFORGE_RETRY_DELAY`), one place that repairs stale lock
files and redacts credentials from what is echoed or logged (git itself gets the real URL).
Patch application runs with a fixed committer and no user/system git config, so the patched
HEAD is the same commit on every machine.

Test hook (for the fault-injection tests only): `STACKFORGE_TEST_KILL_AT=N:before|after` makes
the process SIGKILL itself right before or after its Nth git command.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from stackforge.core.console import Failure, UsageError, echo_command, err, escape

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
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
_LOCKED = re.compile(r"Unable to create '([^']+\.lock)': File exists")
# A lock older than this is stale even where /proc cannot tell us who holds it.
STALE_LOCK_S = 600.0
_calls = 0


def redact_url(text: str) -> str:
    """`text` with the user:password@ of every URL in it removed: the form that is printed or stored."""
    return _USERINFO.sub(r"\g<scheme>", text)


def env_number(name: str, default: float, *, minimum: float = 0, integer: bool = False) -> float:
    """A numeric setting from the environment; a bad value is a usage error, not a traceback."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = None
    if value is None or value < minimum or value != value:
        kind = "a whole number" if integer else "a number"
        raise UsageError(f"{name}={raw!r}: expected {kind} of at least {minimum:g}", hint=f"unset {name}")
    return value


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
            text = redact_url(text)
            with self.log.open("a", encoding="utf-8") as fh:
                fh.write(text if text.endswith("\n") else text + "\n")

    def _announce(self, argv: list[str], cwd: Path | None, echo: bool, note: str = "") -> None:
        if echo and not self.quiet:
            echo_command([redact_url(a) for a in argv], cwd)
        self._record(f"$ {' '.join(argv)}  (in {cwd or Path.cwd()}){note}")

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
        self._announce(argv, cwd, echo)
        for _ in range(2):  # a second go only after removing a stale lock file
            _test_kill("before")
            proc = subprocess.run(
                argv, cwd=cwd, env=_environ(env), capture_output=True, text=True, check=False
            )
            _test_kill("after")
            self._record(proc.stdout + proc.stderr)
            if proc.returncode == 0 or not _clear_stale_lock(proc.stderr):
                break
        result = GitResult(proc.returncode, proc.stdout, proc.stderr)
        if check and not result.ok:
            raise Failure(redact_url(f"`{' '.join(argv)}` failed in {cwd}: {_last_line(proc.stderr)}"))
        return result

    def out(self, args: list[str], cwd: Path, **kw: object) -> str:
        return self.run(args, cwd, echo=False, **kw).stdout.strip()  # type: ignore[arg-type]

    def network(
        self, args: list[str], cwd: Path | None = None, *, what: str, cleanup: Path | None = None
    ) -> str:
        """Run a command that talks to a remote: stream its progress, retry with backoff; return
        what it printed on stdout (`git ls-remote`'s answer).

        `cleanup` is removed before each retry, so a half-fetched clone never survives.
        """
        attempts = int(env_number("STACKFORGE_NET_RETRIES", 3, minimum=1, integer=True))
        delay = env_number("STACKFORGE_RETRY_DELAY", 2)
        # Progress meters only where someone watches; logs and CI output get the lines that matter.
        tty = sys.stderr.isatty()
        argv = ["git", *(a for a in args if tty or a != "--progress")]
        tail: deque[str] = deque(maxlen=12)
        for attempt in range(1, attempts + 1):
            self._announce(argv, cwd, True, f" attempt {attempt}/{attempts}")
            _test_kill("before")
            with tempfile.TemporaryFile() as stdout:  # a file, not a pipe: no deadlock with stderr's
                code = _stream(argv, cwd, tail, self._record, show=tty and not self.quiet, stdout=stdout)
                stdout.seek(0)
                answer = stdout.read().decode("utf-8", errors="replace")
            _test_kill("after")
            if code == 0:
                return answer
            if cleanup is not None:
                _rmtree(cleanup)
            if _clear_stale_lock("\n".join(tail)):
                continue
            if any(_FINAL.search(line) for line in tail):
                raise Failure(redact_url(f"{what} failed: {_reason(tail)}"))
            if attempt < attempts:
                wait = delay * 2 ** (attempt - 1)
                err.print(f"  {escape(what)} failed (attempt {attempt}/{attempts}); retrying in {wait:g}s")
                time.sleep(wait)
        raise Failure(
            redact_url(f"{what} failed after {attempts} attempt(s): {_reason(tail)}"),
            hint="check the network and the URL in git-repos.txt, or use --mirror DIR for a local mirror; "
            "nothing half-fetched was kept, so running the same command again is safe",
        )


def _stream(
    argv: list[str],
    cwd: Path | None,
    tail: deque[str],
    record: Callable[[str], None],
    *,
    show: bool,
    stdout: IO[bytes],
) -> int:
    """Run argv, copying its stderr (git's progress) to ours in whole reads while keeping the last lines."""
    proc = subprocess.Popen(argv, cwd=cwd, env=_environ(None), stdout=stdout, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    pending = ""
    try:
        # read1 returns what the pipe holds (up to 64 KiB), so progress (\r) still shows as it comes.
        while chunk := proc.stderr.read1(65536):
            text = chunk.decode("utf-8", errors="replace")
            if show:
                sys.stderr.write(redact_url(text))
                sys.stderr.flush()
            *done, pending = re.split(r"[\r\n]", pending + text)
            for line in done:
                if line.strip():
                    tail.append(redact_url(line.strip()))
                    record(line)  # progress lines (\r) go to the log too, once each
    finally:
        code = proc.wait()
    if pending.strip():
        tail.append(redact_url(pending.strip()))
        record(pending)
    return code


def _environ(extra: dict[str, str] | None) -> dict[str, str]:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", **(extra or {})}
    if extra and extra.get("GIT_CONFIG_NOSYSTEM"):  # hermetic runs: the patch alone decides
        for key in _SCRUBBED:
            env.pop(key, None)
    return env


def _clear_stale_lock(stderr: str) -> bool:
    """Remove the lock file git complained about when no live process holds it; say which."""
    match = _LOCKED.search(stderr)
    if not match:
        return False
    lock = Path(match.group(1))
    holder = _lock_holder(lock)
    if holder is not None:
        raise Failure(
            f"{lock} is held by a running process ({holder})",
            hint="wait for it to finish, then run the same command again",
        )
    with contextlib.suppress(FileNotFoundError):
        lock.unlink()
    err.print(f"[yellow]removed[/yellow] stale git lock {escape(str(lock))} (left by an interrupted git)")
    return True


def _lock_holder(lock: Path) -> str | None:
    """A running git whose working folder is in the lock's repository, if any ('pid N')."""
    gitdir = lock.parent
    while gitdir.name != ".git" and gitdir.parent != gitdir and not (gitdir / "HEAD").is_file():
        gitdir = gitdir.parent
    repo = gitdir.parent if gitdir.name == ".git" else gitdir
    proc = Path("/proc")
    if not proc.is_dir():  # no way to ask: trust the lock's age alone
        try:
            young = time.time() - lock.stat().st_mtime < STALE_LOCK_S
        except OSError:
            return None
        return "unknown, the lock is recent" if young else None
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (entry / "comm").read_text().strip() not in ("git", "git-remote-http", "git-am"):
                continue
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        if cwd in (repo, gitdir) or repo in cwd.parents:
            return f"pid {entry.name}"
    return None


def _test_kill(when: str) -> None:
    """The fault-injection hook (see the module docstring): never set outside tests."""
    global _calls
    spec = os.environ.get("STACKFORGE_TEST_KILL_AT")
    if not spec:
        return
    if when == "before":
        _calls += 1
    number, _, moment = spec.partition(":")
    if number.isdigit() and int(number) == _calls and (moment or "before") == when:
        os.kill(os.getpid(), signal.SIGKILL)


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
