"""Loopback stand-ins for vLLM behind a real nginx, shared by the router and fleet tests."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from stackforge.run import router

FAKE = Path(__file__).parent / "fake_vllm.py"
NGINX = router.find_nginx()
needs_nginx = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (Debian: apt-get install -y nginx-light)"
)
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def free_port_run(count: int) -> int:
    """A port p with p .. p+count-1 all free now (serve puts its servers right above the router's
    port): on a machine where other suites run servers too, one free port says nothing of p+1."""
    for _ in range(50):
        port = free_port()
        socks = []
        try:
            for offset in range(count):
                s = socket.socket()
                socks.append(s)
                s.bind((LOOPBACK, port + offset))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError(f"no run of {count} free ports on {LOOPBACK}")


def start_fake(port: int = 0) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, str(FAKE), "--host", LOOPBACK, "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    line = proc.stdout.readline() if proc.stdout else ""
    assert line.startswith("READY "), f"stand-in did not start: {line!r}"
    return proc, int(line.split()[1])


def chat(port: int, session: str | None = None) -> tuple[int, str, str]:
    """POST a chat completion through the router: (status, backend that answered, upstream header)."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    headers = {"Content-Type": "application/json", **({"X-Session-ID": session} if session else {})}
    body = json.dumps({"model": "stand-in", "messages": [{"role": "user", "content": "hi"}]})
    try:
        conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        backend = json.loads(data).get("backend", "") if resp.status == 200 else ""
        return resp.status, backend, resp.getheader("X-Stackforge-Upstream") or ""
    finally:
        conn.close()
