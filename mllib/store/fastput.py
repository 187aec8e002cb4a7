"""The small-object fast path for S3 PUTs and GETs: one SigV4-signed request over a urllib3 pool, no botocore per
request.

botocore spends most of a small request's time in its own request machinery; signing the request here (SigV4 with
the day's signing key kept, `Signer`) and sending it over the bucket's urllib3 connection pool gives more objects/s
for dataset-sized objects, and less CPU per GET for the readers of a dataset (bench/store.py, bench/sources.py). It
only ever takes the simple case: any non-200 answer or transport error returns False (None for a GET) and the caller repeats the request through boto3, which retries and explains the error (a missing key
included). It turns itself off after 3 consecutive failures, and MLLIB_FAST_PUT=0 (or S3Store(fast_put=False))
turns it off from the start.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import os
import threading
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

from mllib.perprocess import PerProcess

_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class Signer:
    """AWS Signature Version 4 for S3 requests without a query string, the day's signing key kept (botocore derives
    it, four HMACs, and builds an AWSRequest for every request: a tenth of a millisecond each)."""

    def __init__(self, region: str):
        self.region = region
        self._key: tuple[tuple, bytes] | None = None  # ((secret, day), signing key)

    def _signing_key(self, secret: str, day: str) -> bytes:
        if self._key is None or self._key[0] != (secret, day):
            k = ("AWS4" + secret).encode()
            for part in (day, self.region, "s3", "aws4_request"):
                k = hmac.new(k, part.encode(), hashlib.sha256).digest()
            self._key = ((secret, day), k)
        return self._key[1]

    def headers(self, creds, method: str, host: str, path: str, payload_sha256: str, extra: dict | None = None,
                now: datetime.datetime | None = None) -> dict:
        """The headers that sign `method path` on `host` (the Host header as sent: no default port) with frozen
        credentials `creds`; `extra` headers are sent and signed too. `path` is already URI-encoded, as S3 wants it
        (once, '/' kept)."""
        amz = (now or datetime.datetime.now(datetime.UTC)).strftime("%Y%m%dT%H%M%SZ")
        h = {"host": host, "x-amz-content-sha256": payload_sha256, "x-amz-date": amz}
        if creds.token:
            h["x-amz-security-token"] = creds.token
        h.update({k.lower(): str(v).strip() for k, v in (extra or {}).items()})
        names = sorted(h)
        canonical = "\n".join([method, path, "", *(f"{n}:{h[n]}" for n in names), "", ";".join(names),
                               payload_sha256])
        scope = f"{amz[:8]}/{self.region}/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{amz}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        sig = hmac.new(self._signing_key(creds.secret_key, amz[:8]), to_sign.encode(), hashlib.sha256).hexdigest()
        h["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
                              f"SignedHeaders={';'.join(names)}, Signature={sig}")
        del h["host"]  # urllib3 sends it, the same
        return h


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
        self._lock = threading.Lock()
        self._failures = 0  # consecutive, across threads

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
        with self._lock:
            self._failures = 0 if ok else self._failures + 1
        return ok

    def get(self, full_key: str) -> bytes | None:
        """GET the bucket's full key: its bytes on HTTP 200 (the whole body, Content-Length checked), None on
        anything else (nothing raised; a 404 too, so that boto3 says which of key or bucket is missing)."""
        import urllib3
        from botocore.exceptions import BotoCoreError

        if not self.active:
            return None
        data = None
        try:
            c = self._conn.get()
            path = self._path(c, full_key)
            headers = c.signer.headers(c.credentials.get_frozen_credentials(), "GET", c.host, path, _EMPTY_SHA256)
            r = c.bucket_pool.urlopen("GET", path, headers=headers, retries=False, redirect=False,
                                      preload_content=True)
            if r.status == 200 and str(len(r.data)) == r.headers.get("Content-Length", str(len(r.data))):
                data = r.data
            elif r.status == 404:
                return None  # not a failure of the fast path: boto3 names what is missing
        except (urllib3.exceptions.HTTPError, OSError, BotoCoreError, ValueError):
            data = None
        with self._lock:
            self._failures = 0 if data is not None else self._failures + 1
        return data

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
        if base.startswith("https"):
            if store.verify is False:
                kw["cert_reqs"] = "CERT_NONE"
            else:
                import certifi

                kw.update(cert_reqs="CERT_REQUIRED", ca_certs=store.ca_bundle() or certifi.where())
        return _Conn(urllib3.PoolManager(**kw), creds, region, base, virtual)
