"""A small local HTTP stand-in for one `vllm serve` (loopback only): /health, /v1/models and POST
/v1/chat/completions, each answer naming this server. Run as `python fake_vllm.py [vllm serve ARGS]`:
it takes --host and --port from vLLM's arguments and ignores the rest, so it can also stand in
behind STACKFORGE_RUNTIME_EXEC. It prints `READY <port>` once it listens."""

from __future__ import annotations

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def flag(argv: list[str], name: str, default: str) -> str:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return default


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as nginx's upstream keepalive expects
    # headers and body leave in two writes: without TCP_NODELAY, Nagle and nginx's delayed ACK
    # add 40 ms to every proxied answer (uvicorn, which vLLM uses, sets TCP_NODELAY too)
    disable_nagle_algorithm = True

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Backend", self.server.name)  # type: ignore[attr-defined]
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._answer(self.server.health, {})  # type: ignore[attr-defined]
        elif self.path == "/v1/models":
            self._answer(200, {"object": "list", "data": [{"id": "stand-in", "object": "model"}]})
        else:
            self._answer(404, {"error": self.path})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        request = json.loads(self.rfile.read(length) or b"{}")
        if self.path == "/stand-in/sick":  # the test's switch: /health answers 503 from now on
            self.server.health = 503  # type: ignore[attr-defined]
            self._answer(200, {})
            return
        self._answer(
            200,
            {
                "object": "chat.completion",
                "model": request.get("model"),
                "backend": self.server.name,  # type: ignore[attr-defined]
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "stackforge_env": os.environ.get("STACKFORGE_ENV"),
                "pid": os.getpid(),
                "argv": sys.argv[1:],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
            },
        )

    def log_message(self, *args: object) -> None:  # quiet: the tests read answers, not logs
        pass


def main() -> None:
    argv = sys.argv[1:]
    host = flag(argv, "--host", "127.0.0.1")
    if host != "127.0.0.1":
        raise SystemExit(f"fake_vllm: refusing to listen on {host}: loopback only")
    server = ThreadingHTTPServer((host, int(flag(argv, "--port", "0"))), Handler)
    server.name = f"{host}:{server.server_address[1]}"  # type: ignore[attr-defined]
    server.health = 200  # type: ignore[attr-defined]
    print(f"READY {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
