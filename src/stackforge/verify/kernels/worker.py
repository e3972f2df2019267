"""The one protocol of the processes that import the patched Triton: the kernel audit's compile
workers and the numerics suite's build.

A worker is `python -m MODULE --worker` with the overlay first on PYTHONPATH (`overlay_env`). It
reads requests, one JSON object per line, from stdin and answers each with messages, one JSON
object per line, on its original stdout, ending with `{"event": "done"}`; everything else it
prints (Triton's dumps, tracebacks) goes to stderr, which the parent keeps as a log. The parent
side is `Worker`: it sends a request and reads its messages, with a timeout; a worker that dies or
hangs raises `WorkerLost`, so the caller can charge the one request it was doing.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

DONE = "done"


def overlay_env(triton_path: Path | None, cache: Path) -> dict[str, str]:
    """The environment of a process that must import the patched Triton: the overlay first on
    PYTHONPATH, Triton's cache in `cache`."""
    env = dict(os.environ)
    env["TRITON_CACHE_DIR"] = str(cache)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(triton_path)] * (triton_path is not None) + [p for p in [env.get("PYTHONPATH")] if p]
    )
    return env


def serve(handle: Callable[[dict], Iterable[dict]]) -> int:
    """The worker side: answer every request on stdin with `handle`'s messages, then "done"."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in sys.stdin:
        if not line.strip():
            continue
        for message in handle(json.loads(line)):
            proto.write(json.dumps(message) + "\n")
        proto.write(json.dumps({"event": DONE}) + "\n")
    return 0


class WorkerLost(Exception):
    """The worker died or did not answer in time; `why` says which."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class Worker:
    """The parent side: one worker process, its stderr appended to `log`."""

    def __init__(self, module: str, env: dict[str, str], log: Path) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log: TextIO = log.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, "--worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, env=env,
        )  # fmt: skip
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def request(self, req: dict[str, Any], timeout: float | None = None) -> Iterator[dict]:
        """Send `req` and yield its messages; WorkerLost if the worker dies or stays silent for
        `timeout` seconds (it is killed then)."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            self.kill()
            raise WorkerLost(f"worker died ({exc})") from exc
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                self.kill()
                raise WorkerLost(f"no answer in {timeout:g} s (killed)") from None
            if line is None:
                code = self.proc.wait()
                raise WorkerLost(f"worker died (exit {code})")
            message = json.loads(line)
            if message.get("event") == DONE:
                return
            yield message

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._log.close()

    def close(self) -> None:
        if self.proc.stdin:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
