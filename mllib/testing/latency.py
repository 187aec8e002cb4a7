"""A loopback TCP proxy that adds a fixed delay to every HTTP request, to put a real S3 server "far away", and
injects the faults of a loaded endpoint: 503 SlowDown, 429, and connection resets.

    with LatencyProxy(("127.0.0.1", 8333), delay_s=0.030) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = proxy.url      # every request now waits 30 ms before it is forwarded

It listens on 127.0.0.1 only and forwards to one target address. A request is the first bytes a client sends
after the connection opens or after the server last answered (HTTP/1.1 keep-alive, no pipelining): those bytes
wait `delay_s` before they are forwarded; the rest of the request and every response pass straight through.
`peak` counts the most requests in flight at once (sent, not yet answered), so a test can see that a client
overlaps its requests without timing anything. Bounded: it refuses connections past `max_connections` and
stops by itself after `max_seconds`.

Faults (`faults={"503": 0.03, "429": 0.01, "reset": 0.01}`: each request's chance of each, drawn from `seed`): the
request is not forwarded; the client gets an S3 error (`503 SlowDown` / `429 Too Many Requests`, with
`Retry-After: retry_after` seconds) or a TCP reset, and the connection closes. Bounded: at most `max_faults` in
all. `injected` counts them by kind.

    python3 -m mllib.testing.latency --target 127.0.0.1:8333 --delay_ms 30 --seconds 600
    python3 -m mllib.testing.latency --target 127.0.0.1:8333 --delay_ms 0 --fault 503=0.05 --fault reset=0.01
"""

from __future__ import annotations

import argparse
import random
import socket
import struct
import sys
import threading
import time

from mllib import VERSION
from mllib.checks import Range

FAULTS = ("503", "429", "reset")
_BODY = {"503": b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>",
         "429": b"<Error><Code>TooManyRequests</Code><Message>Too many requests.</Message></Error>"}
_REASON = {"503": "Slow Down", "429": "Too Many Requests"}


class LatencyProxy:
    def __init__(self, target: tuple[str, int], delay_s: float, port: int = 0, max_seconds: float = 3600.0,
                 max_connections: int = 1024, faults: dict | None = None, seed: int = 0, max_faults: int = 10_000,
                 retry_after: float | None = None):
        self.target = target
        self.delay_s = float(delay_s)
        self.faults = {k: float(v) for k, v in (faults or {}).items()}
        unknown = set(self.faults) - set(FAULTS)
        if unknown or any(not 0 <= v <= 1 for v in self.faults.values()) or sum(self.faults.values()) > 1:
            raise ValueError(f"faults: kinds {', '.join(FAULTS)}, chances 0..1 summing to at most 1 (got {faults})")
        self.rng = random.Random(seed)
        self.max_faults, self.retry_after = max_faults, retry_after
        self.injected = dict.fromkeys(FAULTS, 0)
        self.deadline = time.monotonic() + max_seconds
        self.max_connections = max_connections
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self._sock.listen(256)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.requests = 0
        self.connections = 0
        self.in_flight = 0
        self.peak = 0
        self._thread = threading.Thread(target=self._accept, name="latency-proxy", daemon=True)

    def start(self) -> LatencyProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()

    def __enter__(self) -> LatencyProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _running(self) -> bool:
        return not self._stop.is_set() and time.monotonic() < self.deadline

    def _accept(self) -> None:
        while self._running():
            try:
                client, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                refuse = self.connections > self.max_connections
            if refuse:
                client.close()
                continue
            try:
                server = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            for s in (client, server):
                s.settimeout(0.5)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            state = {"request": True, "open": 0}  # the next client bytes start a request
            threading.Thread(target=self._pipe, args=(client, server, state, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, state, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, state: dict, upstream: bool) -> None:
        try:
            while self._running():
                try:
                    data = src.recv(1 << 16)
                except TimeoutError:
                    continue
                if not data:
                    break
                fault = None
                with self._lock:
                    if upstream and state["request"]:
                        fault = self._draw()
                    if fault is not None:
                        self.injected[fault] += 1
                        self.requests += 1
                    elif upstream and state["request"]:
                        state["request"] = False
                        state["open"] += 1
                        self.requests += 1
                        self.in_flight += 1
                        self.peak = max(self.peak, self.in_flight)
                        delay = True
                    else:
                        delay = False
                    if not upstream and state["open"]:
                        state["open"] -= 1
                        self.in_flight -= 1
                    if not upstream:
                        state["request"] = True
                if fault is not None:
                    self._answer(src, fault)
                    break
                if delay and self.delay_s > 0:
                    time.sleep(self.delay_s)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                if state["open"]:
                    self.in_flight -= state["open"]
                    state["open"] = 0
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


    def _draw(self) -> str | None:
        """This request's fault, or None (called under the lock)."""
        if not self.faults or sum(self.injected.values()) >= self.max_faults:
            return None
        x = self.rng.random()
        for kind, p in self.faults.items():
            if x < p:
                return kind
            x -= p
        return None

    def _answer(self, client: socket.socket, fault: str) -> None:
        """The fault, to the client: an S3 error answer, or a reset (RST: SO_LINGER 0, then close)."""
        try:
            if fault == "reset":
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()  # before any shutdown(), which would send a FIN instead
                return
            body = _BODY[fault]
            after = f"Retry-After: {self.retry_after:g}\r\n" if self.retry_after is not None else ""
            client.sendall(f"HTTP/1.1 {fault} {_REASON[fault]}\r\nContent-Type: application/xml\r\n{after}"
                           f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        except OSError:
            pass


def _fault(text: str) -> tuple[str, float]:
    """--fault KIND=P."""
    kind, _, p = text.partition("=")
    if kind not in FAULTS:
        raise argparse.ArgumentTypeError(f"must be KIND=P with KIND one of {', '.join(FAULTS)} (got {text!r})")
    return kind, Range(0, 1, real=True)(p)


def _host_port(text: str) -> tuple[str, int]:
    """--target: HOST:PORT (HOST defaults to 127.0.0.1)."""
    host, _, port = text.rpartition(":")
    try:
        return host or "127.0.0.1", Range(1, 65535)(port)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be HOST:PORT with a port from 1 to 65535 (got {text!r})") from None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=VERSION)
    p.add_argument("--target", required=True, type=_host_port, help="HOST:PORT to forward to (an S3 endpoint on this machine)")
    p.add_argument("--delay_ms", type=Range(0, 600_000, real=True), default=30.0, help="delay added to each request")
    p.add_argument("--port", type=Range(0, 65535), default=0, help="port to listen on, on 127.0.0.1 (0: a free one)")
    p.add_argument("--seconds", type=Range(0, lo_open=True, real=True), default=600.0, help="stop after this long")
    p.add_argument("--fault", type=_fault, action="append", default=[],
                   help="inject a fault into this share of requests: 503=P, 429=P, reset=P (repeatable)")
    p.add_argument("--retry_after", type=Range(0, 3600, real=True), default=None,
                   help="Retry-After seconds on the injected 503 / 429 answers")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault draws")
    args = p.parse_args(argv)
    proxy = LatencyProxy(args.target, args.delay_ms / 1000, args.port, args.seconds, faults=dict(args.fault),
                         seed=args.seed, retry_after=args.retry_after).start()
    print(f"AWS_ENDPOINT_URL={proxy.url}  (+{args.delay_ms:g} ms per request to {args.target[0]}:{args.target[1]}, "
          f"for {args.seconds:g} s)", flush=True)
    try:
        while proxy._running():
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    proxy.stop()
    print(f"{proxy.requests} requests, at most {proxy.peak} at once; faults injected: {proxy.injected}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
