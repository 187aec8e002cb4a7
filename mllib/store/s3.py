"""The S3 backend (boto3): MinIO, SeaweedFS, Ceph or AWS, following boto3's conventions.

Credentials from the default chain (environment, ~/.aws/credentials, AWS_PROFILE), the endpoint from
AWS_ENDPOINT_URL (or endpoint_url=), TLS verified with botocore's own CA bundle resolution (AWS_CA_BUNDLE, the
profile's ca_bundle) unless ca_bundle= or verify=False says otherwise. Writes are one PUT or a multipart upload
completed only when every part is in (aborted on failure). Every botocore error goes through one translation
(`_call` / `_error`): one line naming the store and the fix, never a secret. Each process makes its own client,
so a store may travel to DataLoader workers. The only module besides fastput.py that imports boto3.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO

from mllib.perprocess import PerProcess
from mllib.store.base import PART_SIZE, NotFound, ObjectInfo, Store, StoreError, StoreUnavailable, clean_key
from mllib.store.fastput import FastPut

log = logging.getLogger(__name__)


def _bx():
    from botocore import exceptions

    return exceptions


def outage_budget() -> float:
    """Seconds a store call keeps trying while the endpoint is away (MLLIB_STORE_OUTAGE_S, default 60)."""
    try:
        return max(0.0, float(os.environ.get("MLLIB_STORE_OUTAGE_S", "60")))
    except ValueError:
        return 60.0


def _outage(e: Exception) -> bool:
    """An error that means the endpoint is away (not that the request was wrong)."""
    bx = _bx()
    if isinstance(e, bx.EndpointConnectionError | bx.ConnectTimeoutError | bx.ConnectionClosedError |
                  bx.ReadTimeoutError):
        return True
    if isinstance(e, bx.ClientError):
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        code = str(e.response.get("Error", {}).get("Code", ""))
        return status >= 500 or code in ("SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout")
    return False


WRITES = ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload")
DEFAULT_RETRIES = {"mode": "standard", "total_max_attempts": 9}  # the first try and 8 retries


def retry_settings(session) -> dict:
    """botocore's retries: what the user set (AWS_RETRY_MODE / AWS_MAX_ATTEMPTS or the profile's retry_mode /
    max_attempts, both counting every try) wins; what is unset gets mllib's default, standard mode with 9 tries
    (jittered exponential backoff on throttling such as 503 SlowDown, on 5xx, connection resets and timeouts; adaptive mode adds
    client-side rate limiting)."""
    out = dict(DEFAULT_RETRIES)
    core = session._session
    try:
        profile = core.get_scoped_config() or {}
    except Exception:  # noqa: BLE001 - a missing profile: botocore says so when the client is made
        profile = {}
    mode = os.environ.get("AWS_RETRY_MODE") or profile.get("retry_mode")  # botocore's own default is not the user's
    if mode:
        out["mode"] = mode
    attempts = core.get_config_variable("max_attempts")  # None unless the environment or the profile sets it
    if attempts is not None:
        out["total_max_attempts"] = int(attempts)
    return out


class S3Store(Store):
    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        ca_bundle: str | None = None,
        verify: bool = True,
        max_pool_connections: int = 64,
        fast_put: bool = True,
    ):
        rest = url[len("s3://") :].strip("/")
        if not rest:
            raise StoreError(f"store URL {url!r} names no bucket: use s3://bucket[/prefix]")
        self.bucket, _, prefix = rest.partition("/")
        self.prefix = prefix.strip("/")
        if self.prefix and any(p in ("", ".", "..") for p in self.prefix.split("/")):
            raise StoreError(f"store URL {url!r}: the prefix after the bucket may not hold '.', '..' or '//'")
        self.url = f"s3://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self.endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        self.verify = ca_bundle if ca_bundle else verify
        self.max_pool_connections = max_pool_connections
        self._client = PerProcess(self._make_client)  # a store travels to worker processes; each makes its own
        self.fast_put = FastPut(self, enabled=fast_put)
        self.reached = False  # whether the endpoint has answered this store (travels with it to worker processes)

    def with_bucket(self, bucket: str) -> Store:
        if bucket == self.bucket:
            return self
        return S3Store(f"s3://{bucket}" + (f"/{self.prefix}" if self.prefix else ""), endpoint_url=self.endpoint_url,
                       verify=self.verify, max_pool_connections=self.max_pool_connections,
                       fast_put=self.fast_put.enabled)

    @property
    def client(self):
        return self._client.get()

    def _make_client(self):
        import boto3
        from botocore.config import Config

        session = boto3.session.Session()
        # timestamps (a listing's LastModified, for every key) kept as the strings sent: nothing here reads them, and
        # dateutil's parsing of them is two thirds of a listing's CPU (1.5 s for 20,000 keys)
        session._session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=str)
        cfg = dict(
            retries=retry_settings(session),
            max_pool_connections=self.max_pool_connections,
            connect_timeout=10,
            read_timeout=120,
            tcp_keepalive=True,
        )
        try:  # botocore >= 1.36: do not compute CRC checksums of every body unless the server requires one
            cfg_obj = Config(
                **cfg, request_checksum_calculation="when_required", response_checksum_validation="when_required"
            )
        except TypeError:
            cfg_obj = Config(**cfg)
        if self.endpoint_url:
            cfg_obj = cfg_obj.merge(Config(s3={"addressing_style": "path"}))
        # verify=None lets botocore find the CA bundle itself (AWS_CA_BUNDLE, the profile's ca_bundle); passing
        # True would pin its default bundle and ignore both
        verify = None if self.verify is True else self.verify
        return session.client("s3", endpoint_url=self.endpoint_url or None, verify=verify, config=cfg_obj)

    def ca_bundle(self) -> str | None:
        """The CA bundle TLS is verified with: --ca_bundle, else AWS_CA_BUNDLE / the profile's ca_bundle (what
        botocore uses), else None (the default bundle)."""
        if isinstance(self.verify, str):
            return self.verify
        import boto3

        return boto3.session.Session()._session.get_config_variable("ca_bundle") or None

    def _k(self, key: str) -> str:
        key = clean_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _unk(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    # -- error translation: one clear line, no secrets ---------------------------------------------------------
    def _error(self, e: Exception, what: str, key: str | None = None) -> StoreError:
        bx = _bx()
        where = self.url_for(key) if key else self.url
        endpoint = self.endpoint_url or "AWS"
        if isinstance(e, bx.NoCredentialsError):
            return StoreError(f"{where}: no S3 credentials found. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                              "or AWS_PROFILE / ~/.aws/credentials")
        if isinstance(e, bx.EndpointConnectionError | bx.ConnectTimeoutError):  # after botocore's retries
            return StoreUnavailable(f"{where}: cannot reach the S3 endpoint {endpoint}. Check that the server runs and "
                              "that AWS_ENDPOINT_URL (or --endpoint_url) points at it")
        if isinstance(e, bx.SSLError):
            return StoreError(f"{where}: TLS certificate of {endpoint} not trusted. Pass --ca_bundle FILE (or set "
                              "AWS_CA_BUNDLE)")
        if isinstance(e, bx.ClientError):
            return self._client_error(e, what, where, endpoint)
        if isinstance(e, bx.BotoCoreError):
            return StoreError(f"{where}: S3 {what} failed: {type(e).__name__}")
        return StoreError(f"{where}: S3 {what} failed: {type(e).__name__}")

    def _client_error(self, e, what: str, where: str, endpoint: str) -> StoreError:
        code = str(e.response.get("Error", {}).get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"):
            return StoreError(f"{where}: the S3 server at {endpoint} rejected the credentials ({code}). Check "
                              "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE")
        if code in ("AccessDenied", "403") or status == 403:
            return StoreError(f"{where}: access denied by {endpoint} ({code or status}). Check the credentials "
                              f"(AWS_ACCESS_KEY_ID / AWS_PROFILE) and that they may {what} in bucket {self.bucket}")
        if code == "NoSuchBucket" or (what == "HeadBucket" and status == 404):
            return StoreError(f"{where}: bucket {self.bucket!r} does not exist on {endpoint}. Create it "
                              f"(aws s3 mb s3://{self.bucket}) or fix the store URL")
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            return NotFound(f"{where} does not exist")
        return StoreError(f"{where}: S3 {what} failed: {code or status}")

    def _call(self, what: str, key: str | None, fn: Callable, **kw):
        """fn(**kw), with every botocore error translated into one StoreError line (NotFound for a 404). When the
        endpoint is away (refused or dropped connections, timeouts, 5xx after botocore's own retries: a restarting
        server, a load balancer failing over) the call is tried again with jittered backoff until the outage budget
        (MLLIB_STORE_OUTAGE_S, 60 s) has passed since its first failure; then one line says so. An endpoint this
        store has never reached is an error at once (a wrong URL is not an outage)."""
        bx = _bx()
        first = None
        delay = 0.5
        while True:
            try:
                out = fn(**kw)
                self.reached = True
                return out
            except (bx.ClientError, bx.BotoCoreError) as e:
                if not _outage(e) or not self.reached:  # never answered: a wrong endpoint, said at once
                    raise self._error(e, what, key) from None
                now = time.monotonic()
                first = first or now
                budget = outage_budget()
                if now - first >= budget:
                    raise self._gone(e, what, key, now - first, budget, kw.get("Body")) from None
                wait = min(delay * random.uniform(0.5, 1.0), max(0.0, first + budget - now))
                log.warning("%s %s: the S3 endpoint is away (%s); trying again in %.1f s (%.0f of %g s)", what,
                            key or "", type(e).__name__, wait, now - first, budget)
                time.sleep(wait)
                delay = min(delay * 2, 8.0)

    def _gone(self, e: Exception, what: str, key: str | None, waited: float, budget: float, body) -> StoreError:
        """The line for a call that failed for the whole outage budget. A write the server answered with a 5xx
        every time is most often a full server (SeaweedFS says 500 InternalError when its volumes are full; MinIO
        507): the line says so, with the bytes to write."""
        where, endpoint = self.url_for(key) if key else self.url, self.endpoint_url or "AWS"
        if isinstance(e, _bx().ClientError) and what in WRITES:
            code = e.response.get("Error", {}).get("Code") or ""
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            need = f"{len(body):,} bytes to write; " if isinstance(body, bytes | bytearray) else ""
            return StoreUnavailable(
                f"{where}: the S3 server at {endpoint} refused {what} for {waited:.0f} s ({status} {code}; outage "
                f"budget MLLIB_STORE_OUTAGE_S={budget:g}): it may be out of space ({need}on SeaweedFS: no writable "
                "volumes); free space or add volumes on the server, then re-run the same command (nothing was "
                "written under a final name, finished work is kept)")
        return StoreUnavailable(
            f"{where}: the S3 endpoint {endpoint} has not answered {what} for {waited:.0f} s ({type(e).__name__}; "
            f"outage budget MLLIB_STORE_OUTAGE_S={budget:g}); re-run the same command when it is back (finished "
            "work is kept)")

    def check(self) -> None:
        """Probe the bucket once: clear errors for credentials, a missing bucket, an unreachable endpoint."""
        try:
            self._call("HeadBucket", None, self.client.head_bucket, Bucket=self.bucket)
        except StoreError as e:
            if "access denied" in str(e):  # HEAD has no body: ask again with a GET to learn why
                self._call("list", None, self.client.list_objects_v2, Bucket=self.bucket, MaxKeys=1)
            raise

    # -- primitives -------------------------------------------------------------------------------------------
    def _head(self, key: str) -> dict | None:
        try:
            return self._call("HeadObject", key, self.client.head_object, Bucket=self.bucket, Key=self._k(key))
        except NotFound:
            return None

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def size(self, key: str) -> int:
        h = self._head(key)
        if h is None:
            raise NotFound(f"{self.url_for(key)} does not exist")
        return int(h["ContentLength"])

    def get_bytes(self, key: str) -> bytes:
        data = self.fast_put.get(self._k(key))  # one signed request, no botocore machinery; None: boto3 below
        if data is not None:
            return data
        return self._read(key)

    def get_head(self, key: str, n: int) -> bytes:
        """One ranged GET (bytes=0-(n-1)); the body is read whole, so the connection goes back to the pool."""
        data = self.fast_put.get(self._k(key), first=n)
        if data is not None:
            return data
        return self._read(key, Range=f"bytes=0-{max(1, int(n)) - 1}")

    def _read(self, key: str, **extra) -> bytes:
        """A GetObject's whole body through boto3; a connection reset while reading the body is retried."""
        bx = _bx()
        for attempt in range(4):
            body = self.open(key, **extra)
            try:
                return body.read()
            except (bx.BotoCoreError, OSError) as e:  # connection reset while reading the body
                if attempt == 3:
                    raise self._error(e, "GetObject", key) from None
                time.sleep(0.2 * 2**attempt)
            finally:
                body.close()
        raise AssertionError("unreachable")

    def open(self, key: str, **extra) -> BinaryIO:
        r = self._call("GetObject", key, self.client.get_object, Bucket=self.bucket, Key=self._k(key), **extra)
        if extra:
            return r["Body"]
        return _Resuming(self, key, r)

    def put_stream(self, key: str, stream: BinaryIO, size: int | None = None) -> None:
        full = self._k(key)
        first = _read_full(stream, PART_SIZE)
        if len(first) < PART_SIZE:  # small object: one PUT, atomic by itself
            if not self.fast_put.put(full, first):
                self._call("PutObject", key, self.client.put_object, Bucket=self.bucket, Key=full, Body=first)
            return
        up = self._call("CreateMultipartUpload", key, self.client.create_multipart_upload, Bucket=self.bucket, Key=full)
        upload_id = up["UploadId"]
        parts = []
        try:
            data, n = first, 1
            while data:
                r = self._call("UploadPart", key, self.client.upload_part, Bucket=self.bucket, Key=full,
                               UploadId=upload_id, PartNumber=n, Body=data)
                parts.append({"PartNumber": n, "ETag": r["ETag"]})
                n += 1
                data = _read_full(stream, PART_SIZE)
            self._call("CompleteMultipartUpload", key, self.client.complete_multipart_upload, Bucket=self.bucket,
                       Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts})
        except BaseException:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
            except Exception:  # noqa: BLE001 - best effort; the original error matters
                log.warning("could not abort multipart upload of %s", self.url_for(key))
            raise

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        full = self._k(prefix) if prefix.strip("/") else (self.prefix + "/" if self.prefix else "")
        if prefix.endswith("/") and full and not full.endswith("/"):  # list("/") is every key, as on a local store
            full += "/"
        token: dict = {}
        while True:  # pages through the fast path's own signed LIST (a third of boto3's CPU); boto3 from where it fails
            fast = self.fast_put.list_page(full, token.get("ContinuationToken"))
            if fast is None:
                break
            for key, size, etag in fast[0]:
                yield ObjectInfo(self._unk(key), size, etag or None)
            if fast[1] is None:
                return
            token = {"ContinuationToken": fast[1]}
        while True:
            page = self._call("ListObjects", prefix or None, self.client.list_objects_v2, Bucket=self.bucket,
                              Prefix=full, **token)
            for o in page.get("Contents", ()):
                yield ObjectInfo(self._unk(o["Key"]), int(o["Size"]), o.get("ETag", "").strip('"') or None)
            if not page.get("IsTruncated"):
                return
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def delete(self, key: str) -> None:
        self._call("DeleteObject", key, self.client.delete_object, Bucket=self.bucket, Key=self._k(key))

    def url_for(self, key: str = "") -> str:
        return f"{self.url}/{key.strip('/')}" if key else self.url

    def checksum(self, info: ObjectInfo) -> str:
        return info.etag or ""




class _Resuming:
    """A whole object's body that survives the connection dropping mid-read: the rest is asked for again from the
    byte reached (Range, If-Match the ETag: the same object, or an error), through _call's outage budget."""

    def __init__(self, store: S3Store, key: str, response: dict):
        self.store, self.key = store, key
        self.body, self.etag = response["Body"], response.get("ETag")
        self.length = int(response.get("ContentLength") or 0)
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        import urllib3

        bx = _bx()
        first = None
        while True:
            try:
                b = self.body.read() if n is None or n < 0 else self.body.read(n)
            except (bx.BotoCoreError, urllib3.exceptions.HTTPError, OSError) as e:
                now = time.monotonic()
                first = first or now
                if now - first >= outage_budget():
                    raise self.store._error(e, "GetObject", self.key) from None
                log.warning("%s: the connection dropped at byte %d (%s); reading on from there", self.key,
                            self.pos, type(e).__name__)
                self._reopen()
                continue
            if not b and self.pos < self.length and (n is None or n != 0):
                self._reopen()  # a body that ended early without an error
                continue
            self.pos += len(b)
            return b

    def _reopen(self) -> None:
        try:
            self.body.close()
        except Exception:  # noqa: BLE001 - the broken body is dropped anyway
            pass
        extra = {"IfMatch": self.etag} if self.etag else {}
        r = self.store._call("GetObject", self.key, self.store.client.get_object, Bucket=self.store.bucket,
                             Key=self.store._k(self.key), Range=f"bytes={self.pos}-", **extra)
        self.body = r["Body"]

    def close(self) -> None:
        self.body.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_full(stream: BinaryIO, n: int) -> bytes:
    """Read exactly n bytes unless the stream ends first (raw streams may return short reads)."""
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)
