"""A local HTTP mirror of dataset download sites, with Range support and optional fault injection.

    python3 -m mllib.testing.mirror /data/coco-zips --port 8000
    python3 datasets/getcoco.py --base_url http://127.0.0.1:8000   # files at /zips/... and /annotations/...

Serves the files below a directory at their relative paths, answers Range requests with 206 and a
Content-Range, and can emulate the Cityscapes site (login form, package list, md5 sums, file handling).
Tests and benchmarks use it on 127.0.0.1 with `Faults` to drop connections, ignore Range, corrupt bytes
or answer 503.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from mllib import VERSION
from mllib.checks import Range


@dataclass
class Faults:
    drop_after: dict[str, int] = field(default_factory=dict)  # name -> bytes sent before the connection drops (once)
    fail_503: dict[str, int] = field(default_factory=dict)  # name -> how many requests answer 503 first
    corrupt: dict[str, int] = field(default_factory=dict)  # name -> how many responses have a flipped byte
    ignore_range: bool = False  # always answer 200 with the whole file
    rate: int | None = None  # bytes/s per response (slow server, for kill tests)
    trickle: dict[str, int] = field(default_factory=dict)  # name -> how many responses send a byte every 50 ms

    def take(self, table: dict[str, int], name: str) -> int | bool:
        with _lock:
            n = table.get(name, 0)
            if n:
                if table is self.drop_after:
                    del table[name]
                    return n
                table[name] = n - 1
                return True
        return False


_lock = threading.Lock()


@dataclass
class CityscapesSite:
    username: str
    password: str
    packages: dict[int, Path]  # packageID -> file
    sessions: set = field(default_factory=set)
    logins: int = 0


class Mirror:
    def __init__(self, root: str | os.PathLike, port: int = 0, faults: Faults | None = None,
                 cityscapes: CityscapesSite | None = None):
        self.root = Path(root).resolve()
        self.faults = faults or Faults()
        self.cityscapes = cityscapes
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                mirror._get(self)

            def do_HEAD(self):
                mirror._get(self, head=True)

            def do_POST(self):
                mirror._post(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> Mirror:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *a):
        self.stop()

    # -- handlers ---------------------------------------------------------------------------------------------
    def _send(self, h, status: int, body: bytes = b"", ctype: str = "text/plain", headers: dict | None = None):
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    def _logged_in(self, h) -> bool:
        cookie = h.headers.get("Cookie", "")
        return any(part.strip().startswith("csid=") and part.strip()[5:] in self.cityscapes.sessions
                   for part in cookie.split(";"))

    def _get(self, h, head: bool = False):
        u = urlsplit(h.path)
        self.requests.append(("GET", u.path, h.headers.get("Range")))
        cs = self.cityscapes
        if cs is not None:
            q = parse_qs(u.query, keep_blank_values=True)
            if u.path == "/login/" or u.path == "/login":
                return self._send(h, 200, b"<form method=post>login</form>", "text/html")
            if u.path.startswith(("/downloads", "/md5-sum", "/file-handling")):
                if not self._logged_in(h):
                    return self._send(h, 302, b"", headers={"Location": "/login/"})
                if u.path.startswith("/downloads") and "list" in q:
                    rows = [{"name": p.name, "packageID": i, "size": f"{p.stat().st_size / 1e6:.0f}MB"}
                            for i, p in sorted(cs.packages.items())]
                    return self._send(h, 200, json.dumps(rows).encode(), "application/json")
                pid = int(q.get("packageID", ["0"])[0] or 0)
                if pid not in cs.packages:
                    return self._send(h, 404, b"no such package")
                path = cs.packages[pid]
                if u.path.startswith("/md5-sum"):
                    md5 = hashlib.md5(path.read_bytes()).hexdigest()
                    return self._send(h, 200, f"{md5}  {path.name}\n".encode())
                return self._file(h, path, path.name, head)
        path = (self.root / u.path.lstrip("/")).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            return self._send(h, 404, b"not found")
        return self._file(h, path, path.name, head)

    def _post(self, h):
        u = urlsplit(h.path)
        self.requests.append(("POST", u.path, None))
        n = int(h.headers.get("Content-Length") or 0)
        form = parse_qs(h.rfile.read(n).decode())
        cs = self.cityscapes
        if cs is None or u.path not in ("/login", "/login/"):
            return self._send(h, 404, b"not found")
        cs.logins += 1
        if (form.get("username", [""])[0] == cs.username and form.get("password", [""])[0] == cs.password
                and form.get("submit", [""])[0] == "Login"):
            sid = secrets.token_hex(8)
            cs.sessions.add(sid)
            return self._send(h, 302, b"", headers={"Location": "/", "Set-Cookie": f"csid={sid}; Path=/"})
        return self._send(h, 200, b"<p>Invalid username or password</p>", "text/html")

    @staticmethod
    def _trickle(h, path: Path, start: int, seconds: float = 30.0) -> None:
        """The body a byte every 50 ms (20 bytes/s), never long enough without one for a read timeout; for at most
        `seconds`, or until the client goes away."""
        deadline = time.monotonic() + seconds
        with open(path, "rb") as src:
            src.seek(start)
            while time.monotonic() < deadline and (b := src.read(1)):
                try:
                    h.wfile.write(b)
                    h.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return
                time.sleep(0.05)
        h.close_connection = True

    def _file(self, h, path: Path, name: str, head: bool):
        f = self.faults
        if f.take(f.fail_503, name):
            return self._send(h, 503, b"slow down", headers={"Retry-After": "0"})
        size = path.stat().st_size
        start, status = 0, 200
        rng = h.headers.get("Range")
        if rng and not f.ignore_range and rng.startswith("bytes="):
            start = int(rng[6:].split("-", 1)[0] or 0)
            if start >= size:
                return self._send(h, 416, b"", headers={"Content-Range": f"bytes */{size}"})
            status = 206
        h.send_response(status)
        h.send_header("Content-Type", "application/zip")
        h.send_header("Content-Length", str(size - start))
        h.send_header("Accept-Ranges", "bytes")
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        h.end_headers()
        if head:
            return
        drop = f.take(f.drop_after, name)
        corrupt = f.take(f.corrupt, name)
        if f.take(f.trickle, name):
            return self._trickle(h, path, start)
        sent = 0
        with open(path, "rb") as src:
            src.seek(start)
            t0 = time.perf_counter()
            while True:
                chunk = src.read(64 * 1024)
                if not chunk:
                    break
                if corrupt and start + sent <= size // 2 < start + sent + len(chunk):
                    i = size // 2 - start - sent
                    chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1 :]
                if drop and sent + len(chunk) >= drop:
                    h.wfile.write(chunk[: max(0, drop - sent)])
                    h.wfile.flush()
                    h.close_connection = True
                    h.connection.shutdown(2)
                    return
                try:
                    h.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    return
                sent += len(chunk)
                if f.rate:
                    ahead = sent / f.rate - (time.perf_counter() - t0)
                    if ahead > 0:
                        time.sleep(ahead)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=VERSION)
    p.add_argument("root", help="directory to serve")
    p.add_argument("--port", type=Range(0, 65535), default=8000)
    p.add_argument("--rate", type=Range(1), default=None, help="throttle each response to this many bytes/s")
    a = p.parse_args(argv)
    m = Mirror(a.root, a.port, faults=Faults(rate=a.rate))
    print(f"serving {m.root} at {m.url} (Ctrl-C stops)")
    try:
        m.server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
