"""`stackforge serve` on boxes with several GPUs, run for real as a subprocess: --dry-run prints
every server and the router; a real run starts stand-in vLLM servers (tests/fake_vllm.py, through
STACKFORGE_RUNTIME_EXEC) behind a real nginx on 127.0.0.1, and SIGTERM leaves nothing running."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from boxhelpers import SECRET, Box
from routerhelpers import FAKE, NGINX, chat, free_port, free_port_run, needs_nginx

from stackforge.run import router

REPLAY = Path(__file__).parent / "data" / "nvidia-smi" / "replay"


def replay(case: str) -> dict[str, str]:
    return {"STACKFORGE_NVIDIA_SMI": str(REPLAY), "NVIDIA_SMI_CASE": case}


def test_dry_run_prints_each_server_and_the_router(tmp_path: Path):
    box = Box(tmp_path)
    box.env.pop("STACKFORGE_RUNTIME_EXEC")
    env = {**replay("p40+v100"), "PIXI_EXE": "/opt/pixi/bin/pixi", "STACKFORGE_NGINX": "/opt/nginx"}
    proc = box.stackforge("serve", "--dry-run", "--model", "m", "--api-key", "sk-do-not-print", extra_env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=0 /opt/pixi/bin/pixi run")
    assert (
        "--environment pascal vllm serve --model m --api-key '***' --host 127.0.0.1 --port 8001" in lines[0]
    )
    assert lines[1].startswith("CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=1 ")
    assert "--environment volta vllm serve" in lines[1] and "--port 8002" in lines[1]
    assert f"# router: /opt/nginx -p {box.ws.state / 'router'}" in lines[2]
    assert "listen 127.0.0.1:8000;" in proc.stdout and "server 127.0.0.1:8002" in proc.stdout
    assert "mixed box: pascal, volta" in proc.stderr
    assert "sk-do-not-print" not in proc.stdout + proc.stderr and SECRET not in proc.stdout + proc.stderr
    # --host exposes the router, never a vLLM server; tp over the two P40s is one server, no router
    proc = box.stackforge("serve", "--dry-run", "--host", "0.0.0.0", extra_env={**env, **replay("p40x2")})
    assert "listen 0.0.0.0:8000;" in proc.stdout and proc.stdout.count("--host 127.0.0.1") == 2
    proc = box.stackforge("serve", "--dry-run", "--layout", "tp", extra_env={**env, **replay("p40x2")})
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 1
    assert "--tensor-parallel-size 2" in proc.stdout and "--port" not in proc.stdout.split("--host")[0]
    proc = box.stackforge("serve", "--dry-run", "--gpus", "7", extra_env={**env, **replay("p40x2")})
    assert proc.returncode == 2 and "no GPU 7" in proc.stderr
    proc = box.stackforge("serve", "--dry-run", "-tp", "2", extra_env={**env, **replay("p40x2")})
    assert proc.returncode == 2 and "set by the layout" in proc.stderr


def post_json(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/v1/chat/completions", body="{}", headers={"Content-Type": "application/json"})
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def _wait(what: str, check, timeout: float = 60.0):  # a loaded 2-core machine starts servers slowly
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@needs_nginx
def test_serve_two_gpus_behind_nginx_and_stop(tmp_path: Path):
    box = Box(tmp_path)
    port = free_port_run(3)  # the router's port and its two servers'
    env = {
        **box.env,
        **replay("p40x2"),
        "STACKFORGE_RUNTIME_EXEC": f"{sys.executable} {FAKE}",
        "STACKFORGE_NGINX": str(NGINX),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "stackforge", "--root", str(box.ws.root), "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait("the router", lambda: router.get("127.0.0.1", port, router.HEALTH_PATH, timeout=1))
        for backend_port in (port + 1, port + 2):  # affinity is asked of servers that are up
            _wait("a server", lambda p=backend_port: router.get("127.0.0.1", p, "/health", timeout=1))
        seen: dict[str, dict] = {}
        for i in range(20):  # 20 sessions x 3 requests
            for _ in range(3):
                status, backend, _ = chat(port, f"s{i}")
                assert status == 200
                assert seen.setdefault(f"s{i}", {"backend": backend})["backend"] == backend
        assert {v["backend"] for v in seen.values()} == {f"127.0.0.1:{port + 1}", f"127.0.0.1:{port + 2}"}
        for i, backend_port in enumerate((port + 1, port + 2)):
            answer = post_json(backend_port)
            assert answer["cuda_visible_devices"] == str(i) and answer["stackforge_env"] == "pascal"
            assert answer["argv"][:2] == ["vllm", "serve"] and "--port" in answer["argv"]
        nginx_pid = int((box.ws.state / "router" / "nginx.pid").read_text())
        pids = [nginx_pid, *router.session_pids(nginx_pid)]
        pids += [post_json(p)["pid"] for p in (port + 1, port + 2)]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped: router and every vLLM server" in err
    assert not [p for p in pids if Path(f"/proc/{p}").exists()]
    logs = sorted((box.ws.state / "serve").glob("*.log"))
    assert [p.name for p in logs] == [f"{port + 1}.log", f"{port + 2}.log"]
    assert SECRET not in out + err
    assert router.get("127.0.0.1", port + 1, "/health", timeout=1) is None  # the stand-ins are gone too
    assert router.get("127.0.0.1", port + 2, "/health", timeout=1) is None


def test_without_nginx_several_servers_fail_clearly(tmp_path: Path):
    box = Box(tmp_path)
    if shutil.which("nginx", path=box.env["PATH"]):
        pytest.skip("an nginx is on the test PATH; the not-found path needs one without it")
    proc = box.stackforge("serve", extra_env=replay("p40x2"))
    assert proc.returncode == 1 and "nginx not found" in proc.stderr
    assert "apt-get install nginx-light" in proc.stderr


@needs_nginx
def test_supervisor_marks_sick_and_dead_servers_down(tmp_path: Path):
    """The /health poll: a server answering 503 and a server that died are marked down in nginx;
    requests go on to the healthy one; the stop leaves nothing."""
    from stackforge.run import supervise
    from stackforge.run.fleet import Server

    port = free_port()
    ports = [free_port() for _ in range(3)]
    running = [
        supervise.Running(
            Server("pascal", (i,), p), [sys.executable, str(FAKE), "--port", str(p)], tmp_path / f"{p}.log"
        )
        for i, p in enumerate(ports)
    ]
    nginx = router.Router(
        str(NGINX), tmp_path / "router", [("127.0.0.1", p) for p in ports], "127.0.0.1", port
    )
    sup = supervise.Supervisor(running, nginx)
    steps = iter(["up", "harm", "check"])
    seen: dict[str, object] = {}

    def until(s: supervise.Supervisor) -> bool:
        if any(r.state != "up" for r in s.servers) and not seen:
            return False  # still starting
        step = next(steps)
        if step == "harm":
            conn = http.client.HTTPConnection("127.0.0.1", ports[0], timeout=5)
            conn.request("POST", "/stand-in/sick", body="{}")
            conn.getresponse().read()
            conn.close()
            running[1].proc.kill()  # type: ignore[union-attr]
            running[1].proc.wait()  # type: ignore[union-attr]
        elif step == "check":
            seen["down"] = set(nginx.down)
            seen["answers"] = {chat(port, f"s{i}")[1] for i in range(12)}
            seen["pids"] = [*nginx.pids(), *(r.proc.pid for r in running if r.proc)]
            return True
        seen[step] = True
        return False

    assert supervise.run(sup, [dict(os.environ)] * 3, interval=0.2, until=until) == 0
    assert seen["down"] == {ports[0], ports[1]}
    assert seen["answers"] == {f"127.0.0.1:{ports[2]}"}
    assert [r.state for r in running] == ["sick", "dead", "up"]
    assert not [p for p in seen["pids"] if Path(f"/proc/{p}").exists()]
