"""The store interface every backend implements, its errors, ETags, and the transfers built on it.

A backend (local.py, s3.py) implements the primitives (exists, size, get_bytes, open, put_stream, list, delete,
url_for, checksum); put_bytes / put_file / get_file and the concurrent put_dir / get_dir come from here, as do
run_all (a thread pool that stops on the first failure or a cancel event) and the ETag helpers.
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
from mllib.atomic import TMP_MARK, atomic_write

log = logging.getLogger(__name__)

DEFAULT_STORE = "./store"
PART_SIZE = 16 * 1024 * 1024  # multipart part size; objects up to this size are one PUT
CHUNK = 1024 * 1024


class StoreError(MllibError):
    """A store operation failed in a way the user must fix (credentials, bucket, endpoint, missing key)."""


class StoreUnavailable(StoreError):
    """The store did not answer for longer than the outage budget (MLLIB_STORE_OUTAGE_S): a temporary failure, the
    same command succeeds once the store is back (scripts exit 75, EX_TEMPFAIL; training writes a checkpoint)."""

    exit_status = 75


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


def clean_key(key: str) -> str:
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
    """etag_of_file() of data in memory."""
    return _etag((data[i : i + part_size] for i in range(0, max(len(data), 1), part_size)), len(data) > part_size)


def etag_of_file(path: str | os.PathLike, part_size: int = PART_SIZE) -> str:
    """The ETag this module's upload of the file gets (see _etag): comparable with Store.checksum()."""
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

    def get_head(self, key: str, n: int) -> bytes:
        """The object's first n bytes (all of it when shorter): an image's header without the whole image."""
        return self.get_bytes(key)[:n]

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
        """The object's content checksum, comparable with etag_of_file() of a local copy."""
        raise NotImplementedError

    def version(self, info: ObjectInfo) -> str:
        """A stamp that changes whenever the object is written again, without reading it: the ETag on S3, size,
        mtime and inode on a local store (every write there is a new file renamed into place)."""
        return self.checksum(info)

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
            if have is not None and have.size == size and self.checksum(have) == etag_of_file(path):
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
        if root.exists() and not root.is_dir():
            raise StoreError(f"get_dir: {local_dir} is a file, not a folder to download into")
        report = TransferReport()
        lock = threading.Lock()
        infos = list(self.list(pre))
        paths = {info.key: local_target(root, info.key[len(pre) :], self.url_for(info.key)) for info in infos}

        def one(info: ObjectInfo) -> None:
            path = paths[info.key]
            if path.is_file() and path.stat().st_size == info.size and etag_of_file(path) == self.checksum(info):
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


def local_target(root: Path, rel: str, url: str) -> Path:
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


_END = object()


def run_all(fn: Callable, items: Iterable, jobs: int, cancel: threading.Event | None = None,
            window: int | None = None) -> None:
    """Run fn over items on a thread pool; the first failure, or `cancel` being set, cancels what has not
    started and is raised (Cancelled for the event). What is running finishes (each write is atomic).

    At most `window` items (default 4 per thread) are submitted at a time and refilled as they finish, so an item's
    cost does not grow with how many there are (a wait over every pending future is O(pending) per call)."""
    jobs = max(1, int(jobs))
    window = max(jobs, int(window or 4 * jobs))
    it = iter(items)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        pending: set = set()
        try:
            while True:
                while len(pending) < window:
                    item = next(it, _END)
                    if item is _END:
                        break
                    pending.add(pool.submit(fn, item))
                if not pending:
                    return
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                for f in done:
                    f.result()
                if cancel is not None and cancel.is_set():
                    raise Cancelled("interrupted: pending transfers cancelled")
        except BaseException:
            for f in pending:
                f.cancel()
            raise
