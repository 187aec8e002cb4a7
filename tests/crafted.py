"""A crafted HTTP server on 127.0.0.1 for hostile-server tests: a function decides each raw response."""

from __future__ import annotations

import http.server
import threading


class Crafted:
    """with Crafted(respond) as url: ...; respond(handler, n) -> (status, headers dict, body bytes[, cut])
    where n counts requests from 0; `cut` (optional) sends only that many body bytes and closes. `requests`
    records (method, path, Range header) of each request."""

    def __init__(self, respond):
        self.respond = respond
        self.requests: list[tuple[str, str, str | None]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self):
                n = len(outer.requests)
                outer.requests.append((self.command, self.path, self.headers.get("Range")))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                status, headers, body, *cut = outer.respond(self, n)
                self.send_response(status)
                headers = dict(headers)
                headers.setdefault("Content-Length", str(len(body)))
                for k, v in headers.items():
                    if v is not None:
                        self.send_header(k, v)
                if cut:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body[: cut[0]] if cut else body)
                if cut:
                    self.close_connection = True

            do_GET = do_POST = do_HEAD = do_PUT = _any

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Crafted:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def tls(respond, folder) -> tuple[Crafted, str, str]:
    """(server, its https URL, the PEM of its self-signed certificate for 127.0.0.1) of a Crafted server behind TLS;
    pytest.skip where openssl is not installed."""
    import shutil
    import ssl
    import subprocess

    import pytest

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    key, cert = f"{folder}/k.pem", f"{folder}/c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    srv = Crafted(respond)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.server.socket = ctx.wrap_socket(srv.server.socket, server_side=True)
    return srv, srv.url.replace("http://", "https://"), cert
