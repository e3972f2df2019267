"""A loopback PyPI for tests: a real HTTP server that answers range requests and PEP 691 JSON
index pages, and the zip and index writers that fill it."""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from stackforge.verify.upstream import pypi as upstream


class RangeHandler(SimpleHTTPRequestHandler):
    """Serves files from the server's folder and answers `Range: bytes=a-b` / `bytes=-n`
    with 206, as files.pythonhosted.org does; counts bytes sent so tests can see that a
    member was read without the whole archive. The index page is served as PEP 691 JSON."""

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        path = Path(self.translate_path(self.path))
        if path.is_dir():
            path = path / "index.json"
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if match and self.server.ranges:  # type: ignore[attr-defined]
            first, last = match.groups()
            if first == "":
                start, end = max(0, len(data) - int(last)), len(data) - 1
            else:
                start, end = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
            body = data[start : end + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        ctype = upstream.SIMPLE_JSON if path.name == "index.json" else "application/octet-stream"
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.server.sent += len(body)  # type: ignore[attr-defined]


class Server:
    def __init__(self, root: Path, *, ranges: bool = True) -> None:
        handler = lambda *a, **k: RangeHandler(*a, directory=str(root), **k)  # noqa: E731
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.ranges = ranges  # type: ignore[attr-defined]
        self.httpd.sent = 0  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def sent(self) -> int:
        return self.httpd.sent  # type: ignore[attr-defined]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def zip_bytes(members: dict[str, bytes], *, comment: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, (name, data) in enumerate(members.items()):
            zf.writestr(name, data, compress_type=zipfile.ZIP_STORED if i % 2 else zipfile.ZIP_DEFLATED)
        zf.comment = comment
    return buf.getvalue()


def publish(root: Path, project: str, files: dict[str, bytes]) -> None:
    """A PEP 691 JSON page for `project` listing `files` (relative URLs, as PEP 691 allows)."""
    page = root / "simple" / project
    page.mkdir(parents=True)
    listing = []
    for name, data in files.items():
        (root / "files").mkdir(exist_ok=True)
        (root / "files" / name).write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        listing.append({"filename": name, "url": f"../../files/{name}", "hashes": {"sha256": sha}})
    (page / "index.json").write_text(json.dumps({"meta": {"api-version": "1.0"}, "files": listing}))
