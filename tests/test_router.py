"""The router: its nginx configuration, and a real nginx on 127.0.0.1 in front of small local HTTP
stand-ins for vLLM (tests/fake_vllm.py, real processes): affinity holds, a dead or sick backend is
taken out and requests go on, and nothing is left running after stop. Loopback only, bounded
request counts."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from routerhelpers import LOOPBACK, NGINX, chat, free_port, needs_nginx, start_fake

from stackforge.core.console import Failure
from stackforge.run import router
from stackforge.run.router import Router, render_config, session_pids


@pytest.fixture
def backends() -> Iterator[list[tuple[subprocess.Popen, int]]]:
    procs = [start_fake() for _ in range(3)]
    yield procs
    for proc, _ in procs:
        proc.kill()
        proc.wait(timeout=10)


def test_config_routes_by_session_with_passive_checks(tmp_path: Path):
    text = render_config([(LOOPBACK, 8001), (LOOPBACK, 8002)], LOOPBACK, 8000, tmp_path, down=[8002])
    assert "hash $sf_affinity consistent;" in text
    assert '"" $request_id;' in text and "default $http_x_session_id;" in text
    assert "server 127.0.0.1:8001 max_fails=1 fail_timeout=10s;" in text
    assert "server 127.0.0.1:8002 max_fails=1 fail_timeout=10s down;" in text
    assert "listen 127.0.0.1:8000;" in text and "proxy_buffering off;" in text
    assert "proxy_next_upstream error timeout http_502 http_503 http_504;" in text
    assert "non_idempotent" not in text  # a POST that reached vLLM is never sent twice
    assert "daemon off;" in text and f"pid {tmp_path}/nginx.pid;" in text
    assert "listen [::1]:9000;" in render_config([(LOOPBACK, 8001)], "::1", 9000, tmp_path)


@needs_nginx
def test_nginx_accepts_the_config(tmp_path: Path):
    r = Router(NGINX, tmp_path / "router", [(LOOPBACK, 8001), (LOOPBACK, 8002)], LOOPBACK, free_port())
    r.write()  # runs `nginx -t` on it; raises if refused
    assert r.version().startswith("nginx/")


@needs_nginx
def test_affinity_failover_and_clean_stop(backends, tmp_path: Path):
    port = free_port()
    names = {f"{LOOPBACK}:{p}" for _, p in backends}
    r = Router(NGINX, tmp_path / "router", [(LOOPBACK, p) for _, p in backends], LOOPBACK, port)
    r.start()
    try:
        pids = r.pids()
        assert len(pids) >= 2  # master and worker
        sessions = [f"conversation-{i}" for i in range(24)]
        first: dict[str, str] = {}
        for _ in range(4):  # 96 requests: every session returns to its server
            for s in sessions:
                status, backend, upstream = chat(port, s)
                assert status == 200 and backend in names and upstream == backend
                assert first.setdefault(s, backend) == backend
        assert len(set(first.values())) == 3  # 24 sessions spread over all three servers
        anonymous = {chat(port)[1] for _ in range(30)}
        assert len(anonymous) >= 2  # no header: random spread, not all on one server

        # kill the server holding the most sessions: its sessions move, the others stay put
        victim = max(names, key=lambda n: sum(b == n for b in first.values()))
        proc = next(p for p, port_ in backends if f"{LOOPBACK}:{port_}" == victim)
        proc.kill()
        proc.wait(timeout=10)
        moved: dict[str, str] = {}
        for _ in range(3):
            for s in sessions:
                status, backend, _ = chat(port, s)
                assert status == 200 and backend != victim
                if first[s] == victim:
                    assert moved.setdefault(s, backend) == backend  # a moved session sticks again
                else:
                    assert backend == first[s]
        assert moved

        # a server that answers /health with 503: stackforge marks it down and reloads nginx
        sick = next(n for n in names - {victim})
        sick_port = int(sick.rsplit(":", 1)[1])
        router.get(LOOPBACK, sick_port, "/health")
        conn = http.client.HTTPConnection(LOOPBACK, sick_port, timeout=5)
        conn.request("POST", "/stand-in/sick", body="{}")
        conn.getresponse().read()
        conn.close()
        assert router.get(LOOPBACK, sick_port, "/health")[0] == 503
        assert r.mark_down([sick_port, int(victim.rsplit(":", 1)[1])])
        healthy = (names - {victim, sick}).pop()
        assert {chat(port, s)[1] for s in sessions} == {healthy}
    finally:
        r.stop()
    assert not [p for p in pids if Path(f"/proc/{p}").exists()], "nginx processes left after stop"
    assert router.get(LOOPBACK, port, router.HEALTH_PATH, timeout=1) is None
    assert "exiting" in (tmp_path / "router" / "logs" / "error.log").read_text()


@needs_nginx
def test_port_taken_is_a_clear_failure(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        r = Router(NGINX, tmp_path / "router", [(LOOPBACK, 8001)], LOOPBACK, taken.getsockname()[1])
        with pytest.raises(Failure, match="is taken by another program"):
            r.start()
    assert r.proc is None


@needs_nginx
def test_stale_router_is_stopped_first(tmp_path: Path):
    port = free_port()
    first = Router(NGINX, tmp_path / "router", [(LOOPBACK, 8001)], LOOPBACK, port)
    first.start()
    orphan = first.proc
    first.proc = None  # as if the stackforge that started it had been killed
    second = Router(NGINX, tmp_path / "router", [(LOOPBACK, 8001)], LOOPBACK, port)
    second.start()
    try:
        assert orphan is not None and orphan.wait(timeout=10) is not None
        assert session_pids(orphan.pid) == []
        assert second.pids() and router.get(LOOPBACK, port, router.HEALTH_PATH)[0] == 200
    finally:
        second.stop()


def test_find_nginx_prefers_the_variable(tmp_path: Path):
    exe = tmp_path / "nginx"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    assert router.find_nginx([exe], {"STACKFORGE_NGINX": "/opt/x/nginx"}) == "/opt/x/nginx"
    assert router.find_nginx([tmp_path / "absent", exe], {}) == str(exe)
    assert router.find_nginx([], {}) == shutil.which("nginx")
    assert os.access(exe, os.X_OK)
