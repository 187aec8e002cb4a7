"""The small-object fast path for S3 PUTs and GETs: one SigV4-signed request over a urllib3 pool, no botocore per
request.

botocore spends most of a small request's time in its own request machinery; signing the request with botocore's
signer and sending it over a shared urllib3 pool gives more objects/s for dataset-sized objects (bench/store.py,
bench/sources.py). It only ever takes the simple case: any non-200 answer or transport error returns False (None
for a GET) and the caller repeats the request through boto3, which retries and explains the error (a missing key
included). It turns itself off after 3 consecutive failures, and MLLIB_FAST_PUT=0 (or S3Store(fast_put=False))
turns it off from the start.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from dataclasses import dataclass
from urllib.parse import quote

from mllib.perprocess import PerProcess

_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass
class _Conn:
    """What one process needs to send signed PUTs: its pool, credentials and where the bucket is."""

    pool: object  # urllib3.PoolManager
    credentials: object  # botocore Credentials (refreshable)
    region: str
    base_url: str
    virtual_hosted: bool


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
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.exceptions import BotoCoreError

        if not self.active:
            return None
        data = None
        try:
            c = self._conn.get()
            url = self._url(c, full_key)
            req = AWSRequest(method="GET", url=url, headers={"x-amz-content-sha256": _EMPTY_SHA256})
            S3SigV4Auth(c.credentials.get_frozen_credentials(), "s3", c.region).add_auth(req)
            r = c.pool.request("GET", url, headers=dict(req.headers.items()), retries=False, redirect=False,
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

    def _url(self, c: _Conn, full_key: str) -> str:
        path = quote(full_key, safe="/~")
        return f"{c.base_url}/{path}" if c.virtual_hosted else f"{c.base_url}/{self.store.bucket}/{path}"

    def _send(self, c: _Conn, full_key: str, body: bytes) -> bool:
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest

        url = self._url(c, full_key)
        headers = {
            "Content-MD5": base64.b64encode(hashlib.md5(body).digest()).decode(),
            "x-amz-content-sha256": hashlib.sha256(body).hexdigest(),
            "Content-Type": "application/octet-stream",
        }
        req = AWSRequest(method="PUT", url=url, data=body, headers=headers)
        S3SigV4Auth(c.credentials.get_frozen_credentials(), "s3", c.region).add_auth(req)
        r = c.pool.request("PUT", url, body=body, headers=dict(req.headers.items()), retries=False, redirect=False,
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
