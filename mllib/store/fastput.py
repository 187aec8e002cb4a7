"""The small-object fast path for S3 PUTs and GETs: one SigV4-signed request, no botocore per request.

botocore spends most of a small request's time in its own request machinery; signing the request here (SigV4 with
the day's signing key kept, `Signer`) gives more objects/s for dataset-sized objects, and less CPU per GET for the
readers of a dataset (bench/store.py, bench/sources.py). A PUT goes over the bucket's urllib3 connection pool. A GET
goes over a keep-alive HTTP/1.1 connection of this module's own (`_Http`): the request written as bytes, the
response's head split once and its body read into one buffer of its Content-Length: 0.13 ms of client CPU for a 5 KB
label against boto3's 1.0-1.1 ms and 0.35-0.55 ms through urllib3 and http.client (bench/store.py), which a folder
source's loader pays twice a sample. Listing pages (ListObjectsV2) go the same way and are read by pattern. It only
ever takes the simple case: any answer but 200 (206 for a range), a body without a Content-Length, or a transport
error returns False (None for a GET) and the caller repeats the request through boto3, which retries and explains
the error (a missing key included). It turns itself off after 3 consecutive failures, and MLLIB_FAST_PUT=0 (or
S3Store(fast_put=False)) turns it off from the start.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

from mllib.perprocess import PerProcess

_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def canonical_query(params: dict[str, str]) -> str:
    """SigV4's canonical query string: names and values URI-encoded (only A-Z a-z 0-9 - _ . ~ kept), sorted."""
    pairs = sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in params.items())
    return "&".join(f"{k}={v}" for k, v in pairs)


_CONTENTS = re.compile(rb"<Contents>(.*?)</Contents>", re.S)
_KEY, _SIZE, _ETAG = (re.compile(rb"<%s>(.*?)</%s>" % (t, t), re.S) for t in (b"Key", b"Size", b"ETag"))
_TRUNCATED = re.compile(rb"<IsTruncated>\s*true\s*</IsTruncated>")
_NEXT = re.compile(rb"<NextContinuationToken>(.*?)</NextContinuationToken>", re.S)


_ENTITY = re.compile(r"&(#x[0-9a-fA-F]+|#[0-9]+|lt|gt|amp|quot|apos);")
_NAMED = {"lt": "<", "gt": ">", "amp": "&", "quot": '"', "apos": "'"}


def _entity(m: re.Match) -> str:
    e = m.group(1)
    if e[0] == "#":
        return chr(int(e[2:], 16) if e[1] == "x" else int(e[1:]))
    return _NAMED[e]


def _text(raw: bytes) -> str:
    """An XML element's text: UTF-8, its five entities and character references resolved (as XML does, not
    HTML: a reference to a control character is that character)."""
    t = raw.decode("utf-8")
    if "&" not in t:
        return t
    if "&" in _ENTITY.sub("", t):
        raise ValueError("an unknown XML entity")
    return _ENTITY.sub(_entity, t)


def parse_list_page(body: bytes) -> tuple[list[tuple[str, int, str]], str | None]:
    """(key, size, ETag without quotes) of each object of a ListObjectsV2 answer, and the continuation token when
    it is truncated (None when it is the last page). The elements are read by pattern, not by a general XML parser:
    botocore's parsing of a 1,000-key page is ~30 ms of CPU, this ~2 ms. ValueError for an answer that is not what
    S3 sends (then boto3 lists instead)."""
    if b"<ListBucketResult" not in body:
        raise ValueError("not a ListBucketResult")
    out = []
    for m in _CONTENTS.finditer(body):
        block = m.group(1)
        key, size, etag = _KEY.search(block), _SIZE.search(block), _ETAG.search(block)
        if key is None or size is None:
            raise ValueError("a Contents entry without Key or Size")
        out.append((_text(key.group(1)), int(size.group(1)), _text(etag.group(1)).strip('"') if etag else ""))
    token = None
    if _TRUNCATED.search(body):
        nxt = _NEXT.search(body)
        if nxt is None or not nxt.group(1).strip():
            raise ValueError("truncated without a continuation token")
        token = _text(nxt.group(1))
    return out, token


class Signer:
    """AWS Signature Version 4 for S3 requests, the day's signing key kept (botocore derives it, four HMACs, and builds
    an AWSRequest for every request: a tenth of a millisecond each)."""

    def __init__(self, region: str):
        self.region = region
        self._key: tuple[tuple, bytes] | None = None  # ((secret, day), signing key)
        self._stamp: tuple[int, str] = (-1, "")  # (second, its x-amz-date): strftime once a second

    def _signing_key(self, secret: str, day: str) -> bytes:
        if self._key is None or self._key[0] != (secret, day):
            k = ("AWS4" + secret).encode()
            for part in (day, self.region, "s3", "aws4_request"):
                k = hmac.new(k, part.encode(), hashlib.sha256).digest()
            self._key = ((secret, day), k)
        return self._key[1]

    def headers(self, creds, method: str, host: str, path: str, payload_sha256: str, extra: dict | None = None,
                now: datetime.datetime | None = None, query: str = "") -> dict:
        """The headers that sign `method path` on `host` (the Host header as sent: no default port) with frozen
        credentials `creds`; `extra` headers are sent and signed too. `path` is already URI-encoded, as S3 wants it
        (once, '/' kept); `query` is the canonical query string (canonical_query()), sent as it is signed."""
        if now is not None:
            amz = now.strftime("%Y%m%dT%H%M%SZ")
        else:
            sec = int(time.time())
            if self._stamp[0] != sec:
                self._stamp = (sec, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(sec)))
            amz = self._stamp[1]
        h = {"host": host, "x-amz-content-sha256": payload_sha256, "x-amz-date": amz}
        if creds.token:
            h["x-amz-security-token"] = creds.token
        h.update({k.lower(): str(v).strip() for k, v in (extra or {}).items()})
        names = sorted(h)
        canonical = "\n".join([method, path, query, *(f"{n}:{h[n]}" for n in names), "", ";".join(names),
                               payload_sha256])
        scope = f"{amz[:8]}/{self.region}/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{amz}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        sig = hmac.new(self._signing_key(creds.secret_key, amz[:8]), to_sign.encode(), hashlib.sha256).hexdigest()
        h["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
                              f"SignedHeaders={';'.join(names)}, Signature={sig}")
        del h["host"]  # urllib3 sends it, the same
        return h


class _Unusable(Exception):
    """An answer this module does not read itself (no Content-Length, chunked): boto3 repeats the request."""


class _Http:
    """Keep-alive HTTP/1.1 connections to one endpoint (http or https) for GETs: idle sockets kept for the next
    request of any thread, at most `keep` of them."""

    HEAD_LIMIT = 64 * 1024  # an answer's status line and headers

    def __init__(self, base_url: str, keep: int, ssl_context=None, connect_timeout: float = 10,
                 read_timeout: float = 120):
        u = urlsplit(base_url)
        self.hostname, self.port = u.hostname, u.port or (443 if u.scheme == "https" else 80)
        self.ssl_context = ssl_context if u.scheme == "https" else None
        self.keep, self.connect_timeout, self.read_timeout = keep, connect_timeout, read_timeout
        self._idle: list[socket.socket] = []
        self._lock = threading.Lock()

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.hostname, self.port), timeout=self.connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ssl_context is not None:
                sock = self.ssl_context.wrap_socket(sock, server_hostname=self.hostname)
            sock.settimeout(self.read_timeout)
        except BaseException:
            sock.close()
            raise
        return sock

    def request(self, head: bytes) -> tuple[int, bytearray]:
        """(status, body) of a request without a body. A kept connection the server has closed meanwhile (nothing
        answered on it) is replaced once by a new one."""
        with self._lock:
            sock = self._idle.pop() if self._idle else None
        if sock is not None:
            try:
                return self._exchange(sock, head)
            except ConnectionError:  # a kept connection the server closed (or reset): once more on a new one
                pass
        return self._exchange(self._connect(), head)

    def _exchange(self, sock: socket.socket, head: bytes) -> tuple[int, bytearray]:
        keep = False
        try:
            sock.sendall(head)
            status, body, keep = self._response(sock)
            return status, body
        finally:
            if keep:
                with self._lock:
                    if len(self._idle) < self.keep:
                        self._idle.append(sock)
                        sock = None
            if sock is not None:
                sock.close()

    def _response(self, sock: socket.socket) -> tuple[int, bytearray, bool]:
        buf = bytearray()
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(buf) > self.HEAD_LIMIT:
                raise _Unusable("response head too long")
            chunk = sock.recv(65536)
            if not chunk:
                raise _Closed() if not buf else ConnectionResetError("connection closed in the response head")
            buf += chunk
        lines = bytes(buf[:end]).split(b"\r\n")
        version, status = lines[0].split(b" ", 2)[:2]
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip()
        if b"transfer-encoding" in fields or b"content-length" not in fields:
            raise _Unusable("no Content-Length")
        n = int(fields[b"content-length"])
        if n < 0:
            raise _Unusable("negative Content-Length")
        body = bytearray(n)
        got = min(n, len(buf) - end - 4)
        body[:got] = buf[end + 4:end + 4 + got]
        if len(buf) - end - 4 > n:
            raise _Unusable("more bytes than the Content-Length")  # nothing else was asked for: not reusable
        view = memoryview(body)
        while got < n:
            k = sock.recv_into(view[got:], n - got)
            if not k:
                raise ConnectionResetError("connection closed in the response body")
            got += k
        keep = version == b"HTTP/1.1" and fields.get(b"connection", b"").lower() != b"close"
        return int(status), body, keep

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()


class _Closed(ConnectionError):
    """A kept connection closed before any byte of the answer (the server's keep-alive timeout)."""


@dataclass
class _Conn:
    """What one process needs to send signed requests: its pool, credentials and where the bucket is."""

    pool: object  # urllib3.PoolManager
    credentials: object  # botocore Credentials (refreshable)
    region: str
    base_url: str
    virtual_hosted: bool
    signer: Signer = field(init=False)
    host: str = field(init=False)  # the Host header urllib3 sends: no default port
    bucket_pool: object = field(init=False)  # the endpoint's urllib3 connection pool
    http: _Http | None = None  # the GETs' own keep-alive connections

    def __post_init__(self):
        self.signer = Signer(self.region)
        u = urlsplit(self.base_url)
        self.host = f"[{u.hostname}]" if ":" in u.hostname else u.hostname  # an IPv6 literal in brackets
        if u.port and u.port != {"http": 80, "https": 443}.get(u.scheme):
            self.host += f":{u.port}"
        self.bucket_pool = self.pool.connection_from_url(self.base_url)


class FastPut:
    MAX_FAILURES = 3

    def __init__(self, store, enabled: bool = True):
        self.store = store
        self.enabled = enabled and os.environ.get("MLLIB_FAST_PUT", "1") != "0"
        self._conn = PerProcess(self._connect)  # one pool per process
        self._failures = 0  # consecutive, across threads (no lock: one a forked child could inherit held)

    def __getstate__(self):
        return {"store": self.store, "enabled": self.enabled}

    def __setstate__(self, state):
        self.__init__(state["store"], state["enabled"])

    @property
    def active(self) -> bool:
        return self.enabled and self._failures < self.MAX_FAILURES

    def put(self, full_key: str, body: bytes) -> bool:
        """PUT body at the bucket's full key; True on HTTP 200, False on anything else (nothing raised)."""
        import urllib3
        from botocore.exceptions import BotoCoreError

        if not self.active:
            return False
        try:
            ok = self._send(self._conn.get(), full_key, body)
        except (urllib3.exceptions.HTTPError, OSError, BotoCoreError, ValueError):
            ok = False
        self._count(ok)
        return ok

    def _count(self, ok: bool) -> None:
        """A request's outcome: consecutive failures (MAX_FAILURES turn the fast path off) or none. Without a lock:
        a DataLoader forks its workers from a process whose threads may be counting, and a lock held at that moment
        would stay held in the child for ever; a count two threads race on is off by one at worst."""
        self._failures = 0 if ok else self._failures + 1

    def _signed_get(self, c: _Conn, path: str, query: str = "", extra: dict | None = None) -> tuple[int, bytearray]:
        """(status, body) of a signed GET of `path` (and its canonical `query`) over the kept connections."""
        headers = c.signer.headers(c.credentials.get_frozen_credentials(), "GET", c.host, path, _EMPTY_SHA256, extra,
                                   query=query)
        target = f"{path}?{query}" if query else path
        return c.http.request("".join([f"GET {target} HTTP/1.1\r\nHost: {c.host}\r\n",
                                       *(f"{k}: {v}\r\n" for k, v in headers.items()), "\r\n"]).encode())

    def get(self, full_key: str, first: int | None = None) -> bytes | None:
        """GET the bucket's full key (with `first`: its first bytes only, a ranged GET): its bytes on HTTP 200 (206
        for a range; the whole body, as long as its Content-Length), None on anything else (nothing raised; a 404
        too, so that boto3 says which of key or bucket is missing)."""
        from botocore.exceptions import BotoCoreError

        if not self.active:
            return None
        data = None
        try:
            c = self._conn.get()
            extra = None if first is None else {"Range": f"bytes=0-{max(1, int(first)) - 1}"}
            status, body = self._signed_get(c, self._path(c, full_key), extra=extra)
            if status == 200:  # the whole object (a server that ignores Range sends it all)
                data = bytes(body) if first is None else bytes(body[:first])
            elif status == 206 and first is not None:
                data = bytes(body)
            elif status == 404:
                return None  # not a failure of the fast path: boto3 names what is missing
        except (OSError, _Unusable, BotoCoreError, ValueError, IndexError):
            data = None
        self._count(data is not None)
        return data

    def list_page(self, prefix: str, token: str | None = None, max_keys: int | None = None
                  ) -> tuple[list[tuple[str, int, str]], str | None] | None:
        """One ListObjectsV2 page of the bucket's keys under `prefix` (from continuation `token`): ([(key, size,
        ETag)], the next token or None); None on anything but a 200 that reads as a listing (boto3 then lists from
        the same token, and explains any error)."""
        from botocore.exceptions import BotoCoreError

        if not self.active:
            return None
        page = None
        try:
            c = self._conn.get()
            path = "/" if c.virtual_hosted else f"/{quote(self.store.bucket, safe='')}"
            params = {"list-type": "2", "prefix": prefix}
            if token:
                params["continuation-token"] = token
            if max_keys:
                params["max-keys"] = str(int(max_keys))
            status, body = self._signed_get(c, path, canonical_query(params))
            if status == 200:
                page = parse_list_page(bytes(body))
        except (OSError, _Unusable, BotoCoreError, ValueError, IndexError, UnicodeDecodeError):
            page = None
        self._count(page is not None)
        return page

    def _path(self, c: _Conn, full_key: str) -> str:
        """The request's path, URI-encoded once as S3 signs it ('/' kept): /KEY on a virtual-hosted endpoint (AWS),
        /BUCKET/KEY on a path-style one."""
        path = "/" + quote(full_key, safe="/~")
        return path if c.virtual_hosted else f"/{self.store.bucket}{path}"

    def _send(self, c: _Conn, full_key: str, body: bytes) -> bool:
        path = self._path(c, full_key)
        extra = {"Content-MD5": base64.b64encode(hashlib.md5(body).digest()).decode(),
                 "Content-Type": "application/octet-stream"}
        headers = c.signer.headers(c.credentials.get_frozen_credentials(), "PUT", c.host, path,
                                   hashlib.sha256(body).hexdigest(), extra)
        r = c.bucket_pool.urlopen("PUT", path, body=body, headers=headers, retries=False, redirect=False,
                                  preload_content=True)
        return r.status == 200

    def _connect(self) -> _Conn:
        import boto3
        import urllib3

        session = boto3.session.Session()
        creds = session.get_credentials()
        if creds is None:
            raise ValueError("no credentials")  # put() returns False; boto3 then reports it properly
        store = self.store
        region = session.region_name or store.client.meta.region_name or "us-east-1"
        if store.endpoint_url:  # MinIO, SeaweedFS, Ceph: path-style, as the boto3 client here
            base, virtual = store.endpoint_url.rstrip("/"), False
        else:  # AWS: virtual-hosted style
            base, virtual = f"https://{store.bucket}.s3.{region}.amazonaws.com", True
        kw: dict = {"maxsize": store.max_pool_connections, "timeout": urllib3.Timeout(connect=10, read=120)}
        context = None
        if base.startswith("https"):  # one TLS context for the PUTs' urllib3 pool and the GETs' own connections
            import ssl

            if store.verify is False:
                context = ssl.create_default_context()
                context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
                kw.update(ssl_context=context, cert_reqs="CERT_NONE", assert_hostname=False)
            else:
                import certifi

                context = ssl.create_default_context(cafile=store.ca_bundle() or certifi.where())
                kw["ssl_context"] = context
        conn = _Conn(urllib3.PoolManager(**kw), creds, region, base, virtual)
        conn.http = _Http(base, store.max_pool_connections, context)
        return conn
