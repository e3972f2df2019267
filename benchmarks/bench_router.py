"""Measure the router on loopback: a real nginx (stackforge's config) in front of small local HTTP
stand-ins for vLLM (tests/fake_vllm.py). Affinity, spread, the proxy's added latency, what a dead
server costs, the /health-driven reload, and the stop. Prints figures as JSON; asserts nothing.
127.0.0.1 only; bounded request counts.

    python benchmarks/bench_router.py [--servers 3] [--sessions 50] [--rounds 4]
"""

from __future__ import annotations

import argparse
import http.client
import json
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stackforge.run import router

FAKE = Path(__file__).resolve().parent.parent / "tests" / "fake_vllm.py"
HOST = "127.0.0.1"
BODY = json.dumps({"model": "stand-in", "messages": [{"role": "user", "content": "hi"}]})


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_fake() -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, str(FAKE)], stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline().split()[1])  # type: ignore[union-attr]


def chat(port: int, session: str | None) -> tuple[int, str, float]:
    start = time.perf_counter()
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    headers = {"Content-Type": "application/json", **({"X-Session-ID": session} if session else {})}
    conn.request("POST", "/v1/chat/completions", body=BODY, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    backend = json.loads(data).get("backend", "") if resp.status == 200 else ""
    return resp.status, backend, (time.perf_counter() - start) * 1000


def ms(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {
        "p50_ms": round(statistics.median(values), 2),
        "p95_ms": round(values[int(0.95 * len(values))], 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--servers", type=int, default=3)
    ap.add_argument("--sessions", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    nginx = router.find_nginx()
    if nginx is None:
        raise SystemExit("nginx not found (Debian: apt-get install nginx-light)")
    fakes = [start_fake() for _ in range(args.servers)]
    port = free_port()
    result: dict = {
        "machine": f"{platform.node()} {platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores"
    }
    with tempfile.TemporaryDirectory() as tmp:
        r = router.Router(nginx, Path(tmp) / "router", [(HOST, p) for _, p in fakes], HOST, port)
        result["nginx"] = r.version()
        t0 = time.perf_counter()
        r.start()
        result["start_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        pids = r.pids()
        try:
            sessions = [f"s{i}" for i in range(args.sessions)]
            home: dict[str, str] = {}
            hits = sent = 0
            lat: list[float] = []
            for _ in range(args.rounds):
                for s in sessions:
                    status, backend, t = chat(port, s)
                    sent += 1
                    lat.append(t)
                    hits += status == 200 and home.setdefault(s, backend) == backend
            spread = {b: sum(v == b for v in home.values()) for b in sorted(set(home.values()))}
            direct = [chat(fakes[0][1], None)[2] for _ in range(200)]
            anon = [chat(port, None)[1] for _ in range(200)]
            result["affinity"] = {"requests": sent, "same_server": hits, "sessions_per_server": spread}
            result["no_header"] = {
                "requests": 200,
                "per_server": {b: anon.count(b) for b in sorted(set(anon))},
            }
            result["latency_via_router"] = ms(lat)
            result["latency_direct"] = ms(direct)
            # kill the server with the most sessions, then the same rounds again
            victim = max(spread, key=spread.get)
            proc = next(p for p, q in fakes if f"{HOST}:{q}" == victim)
            proc.kill()
            proc.wait()
            errors = stayed = moved = 0
            after: dict[str, str] = {}
            first_after: list[float] = []
            for round_ in range(args.rounds):
                for s in sessions:
                    status, backend, t = chat(port, s)
                    if round_ == 0 and home[s] == victim:
                        first_after.append(t)
                    errors += status != 200
                    if home[s] != victim:
                        stayed += backend == home[s]
                    else:
                        moved += after.setdefault(s, backend) == backend
            on_victim = sum(v == victim for v in home.values())
            result["dead_server"] = {
                "requests": args.rounds * len(sessions),
                "errors": errors,
                "sessions_moved": on_victim,
                "moved_sessions_sticking": f"{moved}/{on_victim * args.rounds}",
                "other_sessions_unmoved": f"{stayed}/{(len(sessions) - on_victim) * args.rounds}",
                "first_request_after_death": ms(first_after),
            }
            t0 = time.perf_counter()
            r.mark_down([int(victim.rsplit(":", 1)[1])])
            result["reload_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        finally:
            t0 = time.perf_counter()
            r.stop()
            result["stop_ms"] = round((time.perf_counter() - t0) * 1000, 1)
            result["left_running"] = [p for p in pids if Path(f"/proc/{p}").exists()]
            for proc, _ in fakes:
                proc.kill()
                proc.wait()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
