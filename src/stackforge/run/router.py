"""The router in front of several vLLM servers: a real nginx, started and stopped by stackforge.

Affinity: `hash $sf_affinity consistent` on the X-Session-ID header, so a conversation returns to
the server holding its KV cache (prefix cache); requests without the header hash on nginx's random
$request_id and spread over all servers. Consistent (ketama) hashing moves only the sessions of a
server that drops out.

Health: open-source nginx has no active health checks (that is nginx plus), so it checks passively
(max_fails=1 fail_timeout=10s, proxy_next_upstream error/timeout/502/503/504: a refused connection
is retried on the next server at once), and stackforge polls each vLLM's /health and rewrites the
configuration with `down` for a dead or failing server, then reloads nginx (SIGHUP).

nginx runs in the foreground (daemon off) in a session of its own with its own prefix (config, pid
file, logs, temp dirs) under the workspace's .stackforge/router; stop ends that session's processes
and checks that none is left.
"""

from __future__ import annotations

import contextlib
import grp
import http.client
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from stackforge.core.console import Failure

HEALTH_PATH = "/stackforge/router-health"  # answered by nginx itself; every other path goes to vLLM
TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")

CONF = """\
# written by stackforge serve: nginx in front of {count} vLLM servers (src/stackforge/run/router.py)
daemon off;
master_process on;
{user}worker_processes 1;  # a loopback proxy for a few GPUs: one worker holds thousands of connections
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log notice;

events {{
    worker_connections 1024;
}}

http {{
    log_format stackforge '$remote_addr [$time_local] "$request" $status $body_bytes_sent '
                          'upstream=$upstream_addr session=$http_x_session_id time=$request_time';
    access_log {prefix}/logs/access.log stackforge;
{temp_paths}
    # no X-Session-ID: hash a random per-request id, so such requests spread over all servers
    map $http_x_session_id $sf_affinity {{
        "" $request_id;
        default $http_x_session_id;
    }}

    upstream vllm {{
        hash $sf_affinity consistent;
{servers}
        keepalive 32;
    }}

    server {{
        listen {listen};
        location = {health} {{
            access_log off;
            default_type text/plain;
            return 200 "ok\\n";
        }}
        location / {{
            proxy_pass http://vllm;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_buffering off;             # streamed completions reach the client token by token
            client_max_body_size 64m;        # long prompts and images
            client_body_buffer_size 1m;
            proxy_connect_timeout 2s;        # loopback: a server that does not accept is down
            proxy_read_timeout 1h;           # a long generation is not a failure
            proxy_send_timeout 1h;
            proxy_next_upstream error timeout http_502 http_503 http_504;
            proxy_next_upstream_tries {count};
            add_header X-Stackforge-Upstream $upstream_addr always;
        }}
    }}
}}
"""


def find_nginx(candidates: Iterable[Path] = (), environ: Mapping[str, str] | None = None) -> str | None:
    """$STACKFORGE_NGINX, else the first candidate (the runtime environments' nginx), else PATH."""
    environ = os.environ if environ is None else environ
    if environ.get("STACKFORGE_NGINX"):
        return environ["STACKFORGE_NGINX"]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return shutil.which("nginx")


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _worker_user() -> tuple[str, int, int] | None:
    """As root, workers run as nobody (nginx's default, named so the group exists on Debian too)."""
    if os.geteuid() != 0:
        return None
    nobody = pwd.getpwnam("nobody")
    return nobody.pw_name, nobody.pw_uid, nobody.pw_gid


def render_config(
    backends: Sequence[tuple[str, int]], host: str, port: int, prefix: Path, down: Iterable[int] = ()
) -> str:
    """nginx.conf for these backends (host, port); ports in `down` are marked down."""
    down = set(down)
    servers = "\n".join(
        f"        server {_address(h, p)} max_fails=1 fail_timeout=10s{' down' if p in down else ''};"
        for h, p in backends
    )
    temp = "\n".join(f"    {name}_temp_path {prefix}/tmp/{name};" for name in TEMP_DIRS)
    user = _worker_user()
    user_line = f"user {user[0]} {grp.getgrgid(user[2]).gr_name};\n" if user else ""
    return CONF.format(
        count=len(backends),
        user=user_line,
        prefix=prefix,
        temp_paths=temp,
        servers=servers,
        listen=_address(host, port),
        health=HEALTH_PATH,
    )


def _set_parent_death_signal() -> None:
    """In the child: if stackforge dies without stopping us, the kernel sends SIGTERM."""
    import ctypes

    with contextlib.suppress(OSError):  # not glibc: the stop in `finally` still ends us
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def session_pids(sid: int) -> list[int]:
    """Processes of a session (stackforge starts each child as a session leader)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # fields: state ppid pgrp session ...
            pids.append(int(entry.name))
    return pids


def _signal_session(sid: int, sig: int) -> None:
    for pid in {sid, *session_pids(sid)}:  # the leader, and members that left its process group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig) if pid == sid else os.kill(pid, sig)


def stop_session(proc: subprocess.Popen, first: int = signal.SIGTERM, grace: float = 10.0) -> None:
    """Signal the child's whole session, SIGKILL what is left after `grace`, reap the child, and
    return only when no process of the session is left."""
    sid = proc.pid
    for sig, wait in ((first, grace), (signal.SIGKILL, 5.0)):
        _signal_session(sid, sig)
        deadline = time.monotonic() + wait
        while (proc.poll() is None or session_pids(sid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is not None and not session_pids(sid):
            return
    raise Failure(f"processes of session {sid} are still running after SIGKILL: {session_pids(sid)}")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def get(host: str, port: int, path: str, timeout: float = 2.0, headers: Mapping[str, str] | None = None):
    """One HTTP GET: (status, headers, body), or None when nothing answers."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=dict(headers or {}))
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


class Router:
    """One nginx process tree in front of `backends`, listening on host:port."""

    def __init__(
        self, nginx: str, prefix: Path, backends: Sequence[tuple[str, int]], host: str, port: int
    ) -> None:
        self.nginx, self.prefix, self.backends = nginx, prefix, list(backends)
        self.host, self.port = host, port
        self.down: set[int] = set()
        self.proc: subprocess.Popen | None = None

    @property
    def conf(self) -> Path:
        return self.prefix / "nginx.conf"

    def _nginx(self, *extra: str) -> list[str]:
        return [self.nginx, "-p", str(self.prefix), "-c", str(self.conf), "-e", str(self.error_log), *extra]

    @property
    def error_log(self) -> Path:
        return self.prefix / "logs" / "error.log"

    def write(self) -> None:
        user = _worker_user()
        for name in TEMP_DIRS:
            (self.prefix / "tmp" / name).mkdir(parents=True, exist_ok=True)
            if user:
                os.chown(self.prefix / "tmp" / name, user[1], user[2])
        (self.prefix / "logs").mkdir(parents=True, exist_ok=True)
        text = render_config(self.backends, self.host, self.port, self.prefix, self.down)
        self.conf.write_text(text)
        test = subprocess.run(self._nginx("-t", "-q"), capture_output=True, text=True, timeout=30)
        if test.returncode != 0:
            raise Failure(f"nginx refused {self.conf}: {test.stderr.strip()}")

    def version(self) -> str:
        proc = subprocess.run([self.nginx, "-v"], capture_output=True, text=True, timeout=30)
        return (proc.stderr or proc.stdout).strip().removeprefix("nginx version: ")

    def _stale(self) -> None:
        """A router left by a stackforge that was killed: stop it before taking its port."""
        try:
            pid = int((self.prefix / "nginx.pid").read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            return
        if str(self.conf).encode() in cmdline:  # nginx retitles itself "nginx: master process ..."
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)

    def start(self, timeout: float = 15.0) -> None:
        self._stale()
        if _listening(self.host, self.port):
            raise Failure(
                f"{_address(self.host, self.port)} is taken by another program",
                hint="pass --port with a free port, or stop what listens there",
            )
        self.write()
        log = (self.prefix / "logs" / "nginx.out").open("ab")
        self.proc = subprocess.Popen(
            self._nginx(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_set_parent_death_signal,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.error_log.read_text().strip().splitlines()[-3:] if self.error_log.exists() else []
                self.proc = None
                raise Failure(f"nginx exited at start: {' | '.join(tail) or 'no error log'}")
            answer = get(self.host, self.port, HEALTH_PATH, timeout=1.0)
            if answer and answer[0] == 200:
                return
            time.sleep(0.05)
        self.stop()
        raise Failure(f"nginx did not answer on {_address(self.host, self.port)} within {timeout:.0f} s")

    def mark_down(self, ports: Iterable[int]) -> bool:
        """Rewrite the configuration with these backends down and reload; False if nothing changed."""
        ports = set(ports)
        if ports == self.down or self.proc is None:
            return False
        self.down = ports
        self.write()
        old = set(self.pids()) - {self.proc.pid}
        self.proc.send_signal(signal.SIGHUP)  # nginx re-reads its configuration, no request is lost
        # the reload is done when the old workers are gone: until then they serve the old servers
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            workers = set(self.pids()) - {self.proc.pid}
            if workers and not workers & old:
                return True
            time.sleep(0.05)
        raise Failure(f"nginx did not reload {self.conf} within 30 s (see {self.error_log})")

    def pids(self) -> list[int]:
        return session_pids(self.proc.pid) if self.proc else []

    def stop(self) -> None:
        """Graceful (SIGQUIT: finish open requests) for 5 s, then SIGKILL; nothing is left."""
        if self.proc is not None:
            stop_session(self.proc, first=signal.SIGQUIT, grace=5.0)
            self.proc = None

    def __enter__(self) -> Router:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
