"""One object-store API over S3 (boto3) and local directories.

    >>> from mllib import store
    >>> s = store.connect("s3://coco")          # or "/data/store", or None for $MLLIB_STORE / ./store
    >>> s.put_bytes("datasets/coco/hello.txt", b"hi")
    >>> s.get_bytes("datasets/coco/hello.txt")
    b'hi'

Keys are '/'-separated paths below the store's root (the bucket plus an optional prefix, or a directory).
Writes are atomic on both backends: local writes go to a hidden temporary file that is renamed into place;
S3 writes are one PUT or a multipart upload that is completed only when every part is in (and aborted
on failure), so a reader never sees a partial object under its final name.

S3 follows boto3's conventions: credentials from the default chain (environment, ~/.aws/credentials,
AWS_PROFILE), the endpoint from AWS_ENDPOINT_URL (or endpoint_url=) for MinIO / SeaweedFS / Ceph, TLS
verification on unless turned off, a CA bundle by ca_bundle= (or AWS_CA_BUNDLE). Each process gets its own
client, so a store may be handed to DataLoader workers (fork or spawn). This is the only module that imports
boto3.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from mllib import MllibError
from mllib.fsutil import TMP_MARK, atomic_write

log = logging.getLogger(__name__)

DEFAULT_STORE = "./store"
PART_SIZE = 16 * 1024 * 1024  # multipart part size; objects up to this size are one PUT
CHUNK = 1024 * 1024


class StoreError(MllibError):
    """A store operation failed in a way the user must fix (credentials, bucket, endpoint, missing key)."""


class NotFound(StoreError, KeyError):
    def __str__(self) -> str:  # KeyError would add quotes
        return str(self.args[0]) if self.args else "not found"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str | None = None  # S3 ETag without quotes; None on the local backend


@dataclass
class TransferReport:
    """What put_dir / get_dir did."""

    transferred: int = 0
    skipped: int = 0
    bytes: int = 0
    seconds: float = 0.0
    keys: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        rate = self.transferred / self.seconds if self.seconds > 0 else 0.0
        mb = self.bytes / 1e6
        return (
            f"{self.transferred} transferred ({mb:,.1f} MB), {self.skipped} skipped (unchanged), "
            f"{self.seconds:.1f} s, {rate:,.0f} objects/s"
        )


def default_url() -> str:
    return os.environ.get("MLLIB_STORE") or DEFAULT_STORE


def connect(
    url: str | os.PathLike | None = None,
    *,
    endpoint_url: str | None = None,
    ca_bundle: str | None = None,
    verify: bool = True,
    check: bool = True,
) -> Store:
    """Open a store: 's3://bucket[/prefix]' or a local directory (created if missing).

    With check=True an S3 store is probed once (HeadBucket) so that wrong credentials, a missing bucket or
    an unreachable endpoint fail here with one clear message instead of at the first read.
    """
    url = str(url) if url is not None else default_url()
    if url.startswith("s3://"):
        s = S3Store(url, endpoint_url=endpoint_url, ca_bundle=ca_bundle, verify=verify)
        if check:
            s.check()
        return s
    if "://" in url and not url.startswith("file://"):
        raise StoreError(f"unsupported store URL {url!r}: use s3://bucket[/prefix] or a local directory")
    if url.startswith("file://"):
        url = url[len("file://") :]
    return LocalStore(url)


def _clean_key(key: str) -> str:
    key = str(key).replace("\\", "/").strip("/")
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"invalid key {key!r}: keys are relative '/'-separated paths without '.' or '..'")
    return key


def _etag(parts: Iterable[bytes], multipart: bool) -> str:
    """The ETag S3 gives an object uploaded by this module: md5, or md5-of-part-md5s '-N' for multipart."""
    if not multipart:
        h = hashlib.md5()
        for p in parts:
            h.update(p)
        return h.hexdigest()
    digests = [hashlib.md5(p).digest() for p in parts]
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"


def etag_of_bytes(data: bytes, part_size: int = PART_SIZE) -> str:
    """md5_file() of data in memory."""
    return _etag((data[i : i + part_size] for i in range(0, max(len(data), 1), part_size)), len(data) > part_size)


def md5_file(path: str | os.PathLike, part_size: int = PART_SIZE) -> str:
    """The ETag this module's upload of the file gets (see _etag)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        return _etag(iter(lambda: f.read(part_size), b""), size > part_size)


class Store:
    """Common interface. Subclasses implement the primitives; transfers and helpers are shared."""

    url: str

    # -- primitives -------------------------------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def size(self, key: str) -> int:
        raise NotImplementedError

    def get_bytes(self, key: str) -> bytes:
        raise NotImplementedError

    def open(self, key: str) -> BinaryIO:
        """A streamed binary reader (read(n), close); use as a context manager."""
        raise NotImplementedError

    def put_stream(self, key: str, stream: BinaryIO, size: int | None = None) -> None:
        raise NotImplementedError

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with prefix (a plain string prefix), sorted by key."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def url_for(self, key: str = "") -> str:
        raise NotImplementedError

    def checksum(self, info: ObjectInfo) -> str:
        """The object's content checksum, comparable with md5_file() of a local copy."""
        raise NotImplementedError

    def with_bucket(self, bucket: str) -> Store:
        """The same store in another bucket (S3: same endpoint and settings; local: a folder below the root)."""
        raise NotImplementedError

    def local_path(self, key: str = "") -> Path | None:
        """The file behind key when the store is a local directory, else None."""
        return None

    # -- shared helpers ---------------------------------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes) -> None:
        self.put_stream(key, io.BytesIO(data), size=len(data))

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        with open(path, "rb") as f:
            self.put_stream(key, f, size=os.fstat(f.fileno()).st_size)

    def get_file(self, key: str, path: str | os.PathLike) -> int:
        """Download key to path atomically (temporary file, then rename). Returns the byte count."""
        n = 0
        with self.open(key) as src, atomic_write(path) as dst:
            for chunk in iter(lambda: src.read(CHUNK), b""):
                dst.write(chunk)
                n += len(chunk)
        return n

    def delete_prefix(self, prefix: str) -> int:
        n = 0
        for info in list(self.list(prefix)):
            self.delete(info.key)
            n += 1
        return n

    def put_dir(
        self,
        local_dir: str | os.PathLike,
        prefix: str = "",
        jobs: int = 32,
        progress: Callable[[int], None] | None = None,
    ) -> TransferReport:
        """Upload every file below local_dir to prefix/<relative path>, concurrently.

        Objects already present with the same size and checksum are skipped, so a re-run transfers nothing.
        """
        t0 = time.perf_counter()
        root = Path(local_dir)
        if not root.is_dir():
            raise StoreError(f"put_dir: {root} is not a directory")
        prefix = prefix.strip("/")
        pre = f"{prefix}/" if prefix else ""
        remote = {i.key: i for i in self.list(pre)}
        report = TransferReport()
        lock = threading.Lock()

        def one(path: Path) -> None:
            key = pre + path.relative_to(root).as_posix()
            size = path.stat().st_size
            have = remote.get(key)
            if have is not None and have.size == size and self.checksum(have) == md5_file(path):
                with lock:
                    report.skipped += 1
            else:
                self.put_file(key, path)
                with lock:
                    report.transferred += 1
                    report.bytes += size
                    report.keys.append(key)
            if progress:
                progress(1)

        files = sorted(p for p in root.rglob("*") if p.is_file() and TMP_MARK not in p.name)
        run_all(one, files, jobs)
        report.seconds = time.perf_counter() - t0
        return report

    def get_dir(
        self,
        prefix: str,
        local_dir: str | os.PathLike,
        jobs: int = 32,
        progress: Callable[[int], None] | None = None,
    ) -> TransferReport:
        """Download every object below prefix into local_dir, skipping files already there and identical."""
        t0 = time.perf_counter()
        prefix = prefix.strip("/")
        pre = f"{prefix}/" if prefix else ""
        root = Path(local_dir).resolve()
        report = TransferReport()
        lock = threading.Lock()
        infos = list(self.list(pre))
        paths = {info.key: _local_target(root, info.key[len(pre) :], self.url_for(info.key)) for info in infos}

        def one(info: ObjectInfo) -> None:
            path = paths[info.key]
            if path.is_file() and path.stat().st_size == info.size and md5_file(path) == self.checksum(info):
                with lock:
                    report.skipped += 1
            else:
                n = self.get_file(info.key, path)
                with lock:
                    report.transferred += 1
                    report.bytes += n
                    report.keys.append(info.key)
            if progress:
                progress(1)

        run_all(one, infos, jobs)
        report.seconds = time.perf_counter() - t0
        return report

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


def _local_target(root: Path, rel: str, url: str) -> Path:
    """Where an object lands below root; StoreError for a key that would land anywhere else ('..', a leading
    '/', '//', '.', a backslash): all keys are checked before anything is written."""
    parts = rel.split("/")
    if not rel or "\\" in rel or any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"refusing to download {url}: its key is not a plain relative path below the prefix "
                         f"({rel!r}); nothing was written")
    path = root.joinpath(*parts)
    if root not in path.parents:
        raise StoreError(f"refusing to download {url}: it would be written outside {root}")
    return path


class Cancelled(StoreError):
    """Work stopped because its cancel event was set (Ctrl-C): what had not started was cancelled."""


def run_all(fn: Callable, items: Iterable, jobs: int, cancel: threading.Event | None = None) -> None:
    """Run fn over items on a thread pool; the first failure, or `cancel` being set, cancels what has not
    started and is raised (Cancelled for the event). What is running finishes (each write is atomic)."""
    items = list(items)
    if not items:
        return
    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(items)))) as pool:
        futures = [pool.submit(fn, it) for it in items]
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                for f in done:
                    f.result()
                if cancel is not None and cancel.is_set():
                    raise Cancelled("interrupted: pending transfers cancelled")
        except BaseException:
            for f in futures:
                f.cancel()
            raise


# ---------------------------------------------------------------------------------------------------------------
# Local directory
# ---------------------------------------------------------------------------------------------------------------
class LocalStore(Store):
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create local store directory {self.root}: {e.strerror}") from None
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / _clean_key(key)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"{self.url_for(key)} does not exist") from None

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound(f"{self.url_for(key)} does not exist") from None

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound(f"{self.url_for(key)} does not exist") from None

    def put_stream(self, key: str, stream: BinaryIO, size: int | None = None) -> None:
        with atomic_write(self._path(key)) as f:  # fsync file, rename, fsync folder
            for chunk in iter(lambda: stream.read(CHUNK), b""):
                f.write(chunk)

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        with open(path, "rb") as f:
            self.put_stream(key, f)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        prefix = str(prefix).lstrip("/")
        # walk only the deepest directory the prefix names completely
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root / base if base else self.root
        if not start.is_dir():
            return iter(())
        out = []
        for dirpath, _dirs, files in os.walk(start):
            rel = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            rel = "" if rel == "." else rel + "/"
            for name in files:
                key = rel + name
                if TMP_MARK in name or not key.startswith(prefix):
                    continue
                try:
                    out.append(ObjectInfo(key, os.path.getsize(os.path.join(dirpath, name))))
                except FileNotFoundError:  # removed while listing
                    pass
        out.sort(key=lambda i: i.key)
        return iter(out)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        # remove directories left empty, up to the root
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def url_for(self, key: str = "") -> str:
        return str(self.root / key) if key else str(self.root)

    def with_bucket(self, bucket: str) -> Store:
        return LocalStore(self.root / _clean_key(bucket))

    def local_path(self, key: str = "") -> Path | None:
        return self._path(key) if key else self.root

    def checksum(self, info: ObjectInfo) -> str:
        return md5_file(self._path(info.key))


# ---------------------------------------------------------------------------------------------------------------
# S3
# ---------------------------------------------------------------------------------------------------------------
class S3Store(Store):
    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        ca_bundle: str | None = None,
        verify: bool = True,
        max_pool_connections: int = 64,
    ):
        rest = url[len("s3://") :].strip("/")
        if not rest:
            raise StoreError(f"store URL {url!r} names no bucket: use s3://bucket[/prefix]")
        self.bucket, _, prefix = rest.partition("/")
        self.prefix = prefix.strip("/")
        self.url = f"s3://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self.endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        self.verify = ca_bundle if ca_bundle else verify
        self.max_pool_connections = max_pool_connections
        self._client = None
        self._pid = None
        self._lock = threading.Lock()
        self._fast = None  # (pid, urllib3 pool, credentials, region, base URL, virtual-hosted) for small PUTs
        self._fast_failures = 0  # consecutive; the fast path turns itself off after a few

    def with_bucket(self, bucket: str) -> Store:
        if bucket == self.bucket:
            return self
        return S3Store(f"s3://{bucket}" + (f"/{self.prefix}" if self.prefix else ""), endpoint_url=self.endpoint_url,
                       verify=self.verify, max_pool_connections=self.max_pool_connections)

    # a store travels to worker processes without its client; each process makes its own
    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(_client=None, _pid=None, _lock=None, _fast=None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def client(self):
        if self._client is None or self._pid != os.getpid():
            if self._pid != os.getpid():
                self._lock = threading.Lock()  # a lock inherited through fork may be held by a dead thread
            with self._lock:
                if self._client is None or self._pid != os.getpid():
                    self._client = self._make_client()
                    self._pid = os.getpid()
        return self._client

    def _make_client(self):
        import boto3
        from botocore.config import Config

        cfg = dict(
            retries={"max_attempts": int(os.environ.get("AWS_MAX_ATTEMPTS") or 8), "mode": "standard"},  # throttling (503 SlowDown), 5xx, resets, timeouts
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
        session = boto3.session.Session()
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
        key = _clean_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _unk(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    # -- error translation: one clear line, no secrets ---------------------------------------------------------
    def _error(self, e: Exception, what: str, key: str | None = None) -> StoreError:
        from botocore import exceptions as bx

        where = self.url_for(key) if key else self.url
        endpoint = self.endpoint_url or "AWS"
        if isinstance(e, bx.NoCredentialsError):
            return StoreError(
                f"{where}: no S3 credentials found. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "or AWS_PROFILE / ~/.aws/credentials"
            )
        if isinstance(e, bx.EndpointConnectionError | bx.ConnectTimeoutError):
            return StoreError(
                f"{where}: cannot reach the S3 endpoint {endpoint}. Check that the server runs and that "
                "AWS_ENDPOINT_URL (or --endpoint_url) points at it"
            )
        if isinstance(e, bx.SSLError):
            return StoreError(
                f"{where}: TLS certificate of {endpoint} not trusted. Pass --ca_bundle FILE (or set AWS_CA_BUNDLE)"
            )
        if isinstance(e, bx.ClientError):
            code = str(e.response.get("Error", {}).get("Code", ""))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"):
                return StoreError(
                    f"{where}: the S3 server at {endpoint} rejected the credentials ({code}). Check "
                    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
                )
            if code in ("AccessDenied", "403") or status == 403:
                return StoreError(
                    f"{where}: access denied by {endpoint} ({code or status}). Check the credentials "
                    "(AWS_ACCESS_KEY_ID / AWS_PROFILE) and that they may {what} in bucket {self.bucket}"
                )
            if code == "NoSuchBucket":
                return StoreError(
                    f"{where}: bucket {self.bucket!r} does not exist on {endpoint}. Create it "
                    f"(aws s3 mb s3://{self.bucket}) or fix the store URL"
                )
            if code in ("NoSuchKey", "404", "NotFound") or status == 404:
                return NotFound(f"{where} does not exist")
            return StoreError(f"{where}: S3 {what} failed: {code or status}")
        if isinstance(e, bx.BotoCoreError):
            return StoreError(f"{where}: S3 {what} failed: {type(e).__name__}")
        return StoreError(f"{where}: S3 {what} failed: {e}")

    def _call(self, what: str, key: str | None, fn: Callable, **kw):
        from botocore import exceptions as bx

        try:
            return fn(**kw)
        except (bx.ClientError, bx.BotoCoreError) as e:
            raise self._error(e, what, key) from None

    def check(self) -> None:
        """Probe the bucket once: clear errors for credentials, a missing bucket, an unreachable endpoint."""
        from botocore import exceptions as bx

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except bx.ClientError as e:
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404:
                raise self._error(
                    bx.ClientError({"Error": {"Code": "NoSuchBucket"}}, "HeadBucket"), "HeadBucket"
                ) from None
            if status == 403:  # HEAD has no body: ask again with a GET to learn why
                try:
                    self.client.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
                except (bx.ClientError, bx.BotoCoreError) as e2:
                    raise self._error(e2, "list") from None
            raise self._error(e, "HeadBucket") from None
        except bx.BotoCoreError as e:
            raise self._error(e, "HeadBucket") from None

    # -- primitives -------------------------------------------------------------------------------------------
    def _head(self, key: str) -> dict | None:
        from botocore import exceptions as bx

        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._k(key))
        except bx.ClientError as e:
            if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise self._error(e, "HeadObject", key) from None
        except bx.BotoCoreError as e:
            raise self._error(e, "HeadObject", key) from None

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def size(self, key: str) -> int:
        h = self._head(key)
        if h is None:
            raise NotFound(f"{self.url_for(key)} does not exist")
        return int(h["ContentLength"])

    def get_bytes(self, key: str) -> bytes:
        from botocore import exceptions as bx

        for attempt in range(4):
            body = self.open(key)
            try:
                return body.read()
            except (bx.BotoCoreError, OSError) as e:  # connection reset while reading the body
                if attempt == 3:
                    raise self._error(e, "GetObject", key) from None
                time.sleep(0.2 * 2**attempt)
            finally:
                body.close()
        raise AssertionError("unreachable")

    def open(self, key: str) -> BinaryIO:
        r = self._call("GetObject", key, self.client.get_object, Bucket=self.bucket, Key=self._k(key))
        return r["Body"]

    def put_stream(self, key: str, stream: BinaryIO, size: int | None = None) -> None:
        full = self._k(key)
        first = _read_full(stream, PART_SIZE)
        if len(first) < PART_SIZE:  # small object: one PUT, atomic by itself
            if not self._fast_put(full, first):
                self._call("PutObject", key, self.client.put_object, Bucket=self.bucket, Key=full, Body=first)
            return
        up = self._call("CreateMultipartUpload", key, self.client.create_multipart_upload, Bucket=self.bucket, Key=full)
        upload_id = up["UploadId"]
        parts = []
        try:
            data, n = first, 1
            while data:
                r = self._call(
                    "UploadPart",
                    key,
                    self.client.upload_part,
                    Bucket=self.bucket,
                    Key=full,
                    UploadId=upload_id,
                    PartNumber=n,
                    Body=data,
                )
                parts.append({"PartNumber": n, "ETag": r["ETag"]})
                n += 1
                data = _read_full(stream, PART_SIZE)
            self._call(
                "CompleteMultipartUpload",
                key,
                self.client.complete_multipart_upload,
                Bucket=self.bucket,
                Key=full,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
            except Exception:  # noqa: BLE001 - best effort; the original error matters
                log.warning("could not abort multipart upload of %s", self.url_for(key))
            raise

    def _fast_put(self, full: str, body: bytes) -> bool:
        """One signed PUT straight over a connection pool, skipping botocore's per-request machinery (about twice
        the objects/s for dataset-sized objects). True on success; on anything else (an error, a redirect, a
        throttle) False, and the caller repeats the PUT through boto3, which retries and explains errors."""
        import base64
        from urllib.parse import quote

        if self._fast_failures >= 3:
            return False
        try:
            fast = self._fast
            if fast is None or fast[0] != os.getpid():
                fast = self._fast = self._make_fast()
            _, pool, creds_source, region, base, virtual = fast
            creds = creds_source.get_frozen_credentials()
            from botocore.auth import S3SigV4Auth
            from botocore.awsrequest import AWSRequest

            path = quote(full, safe="/~")
            url = f"{base}/{path}" if virtual else f"{base}/{self.bucket}/{path}"
            headers = {
                "Content-MD5": base64.b64encode(hashlib.md5(body).digest()).decode(),
                "x-amz-content-sha256": hashlib.sha256(body).hexdigest(),
                "Content-Type": "application/octet-stream",
            }
            req = AWSRequest(method="PUT", url=url, data=body, headers=headers)
            S3SigV4Auth(creds, "s3", region).add_auth(req)
            r = pool.request("PUT", url, body=body, headers=dict(req.headers.items()), retries=False,
                             redirect=False, preload_content=True)
            ok = r.status == 200
        except Exception:  # noqa: BLE001 - the boto3 path handles and reports it
            ok = False
        self._fast_failures = 0 if ok else self._fast_failures + 1
        return ok

    def _make_fast(self):
        import boto3
        import urllib3

        session = boto3.session.Session()
        creds = session.get_credentials()
        if creds is None:
            raise StoreError("no credentials")  # caught by _fast_put; boto3 then reports it properly
        region = session.region_name or self.client.meta.region_name or "us-east-1"
        if self.endpoint_url:  # MinIO, SeaweedFS, Ceph: path-style, as the boto3 client here
            base, virtual = self.endpoint_url.rstrip("/"), False
        else:  # AWS: virtual-hosted style
            base, virtual = f"https://{self.bucket}.s3.{region}.amazonaws.com", True
        kw: dict = {"maxsize": self.max_pool_connections, "timeout": urllib3.Timeout(connect=10, read=120)}
        if base.startswith("https"):
            if self.verify is False:
                kw["cert_reqs"] = "CERT_NONE"
            else:
                import certifi

                kw.update(cert_reqs="CERT_REQUIRED", ca_certs=self.ca_bundle() or certifi.where())
        return (os.getpid(), urllib3.PoolManager(**kw), creds, region, base, virtual)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        full = self._k(prefix) if prefix.strip("/") else (self.prefix + "/" if self.prefix else "")
        if prefix.endswith("/") and not full.endswith("/"):
            full += "/"
        paginator = self.client.get_paginator("list_objects_v2")
        from botocore import exceptions as bx

        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                for o in page.get("Contents", ()):
                    yield ObjectInfo(self._unk(o["Key"]), int(o["Size"]), o.get("ETag", "").strip('"') or None)
        except (bx.ClientError, bx.BotoCoreError) as e:
            raise self._error(e, "ListObjects", prefix or None) from None

    def delete(self, key: str) -> None:
        self._call("DeleteObject", key, self.client.delete_object, Bucket=self.bucket, Key=self._k(key))

    def url_for(self, key: str = "") -> str:
        return f"{self.url}/{key.strip('/')}" if key else self.url

    def checksum(self, info: ObjectInfo) -> str:
        return info.etag or ""


def _read_full(stream: BinaryIO, n: int) -> bytes:
    """Read exactly n bytes unless the stream ends first (raw streams may return short reads)."""
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)
