"""Verified, resumable downloads: one URL into WORKDIR/NAME, checked against what is known about it.

`fetch()` streams a URL into WORKDIR/NAME.part and resumes with an HTTP Range request. Bytes already there are
never thrown away on a server's word alone: a 206 must start where the part ends and stay within its
Content-Range, a 200 to a Range request is compared with the part byte for byte, and a part longer than the
remote file is cut back to it. Resets, timeouts, 5xx and malformed answers are retried a bounded number of times
with backoff. The file is hashed while it is written, verified (size / sha256 / md5), fsynced and only then
renamed to WORKDIR/NAME; a mismatch deletes it and downloads once more, then fails. URLs in messages never show
user:password@ or a query string (`safe_url`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mllib import MllibError
from mllib.atomic import commit

if TYPE_CHECKING:
    from mllib.get.download import Progress

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
NET_CHUNK = 64 * 1024  # a dropped connection loses at most this much


class DownloadError(MllibError):
    """A download that failed: a refused archive, a checksum, an HTTP error (exit status 1)."""


class DownloadUnavailable(DownloadError):
    """The site did not answer (resets, timeouts, 5xx, 429) through all retries: temporary, exit status 75."""

    exit_status = 75


@dataclass(frozen=True)
class FileSpec:
    """A file to download and what is known about it (None: unknown, not checked)."""

    name: str
    url: str
    size: int | None = None
    sha256: str | None = None
    md5: str | None = None


def safe_url(url: str) -> str:
    """A URL for messages and logs: no user:password@ and no query string (download links may carry tokens)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        u = urlsplit(url)
        host = u.hostname or ""
        if u.port:
            host = f"{host}:{u.port}"
        return urlunsplit((u.scheme, host, u.path, "", ""))
    except ValueError:
        return url.split("?", 1)[0].rsplit("@", 1)[-1]



def fetch(
    spec: FileSpec,
    workdir: str | os.PathLike,
    *,
    session=None,
    retries: int = 8,
    backoff: float = 0.5,
    timeout: float = 60.0,
    progress: Progress | None = None,
    bar: bool = True,
    on_chunk: Callable[[int], None] | None = None,
    stall_s: float = 120.0,
    min_rate: float = 1024.0,
) -> Path:
    """Download spec.url to WORKDIR/spec.name, resumable and verified. Returns the verified file's path.

    timeout: seconds without a byte before a request is retried. stall_s, min_rate: a response that delivers fewer
    than min_rate bytes/s over stall_s seconds is retried too (a server that trickles a byte at a time never reaches
    the timeout, and would hold the job forever)."""
    import requests

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    final = workdir / spec.name
    if final.exists() and (spec.size is None or final.stat().st_size == spec.size):
        log.info("%s already downloaded and verified, skipping", spec.name)
        return final
    session = session or requests.Session()
    for attempt in (1, 2):
        t = _Transfer(spec, workdir / (spec.name + ".part"), session, retries, backoff, timeout, progress, bar,
                      on_chunk, stall_s, min_rate)
        hashes = t.run()
        problem = _verify(spec, t.part, hashes)
        if problem is None:
            with open(t.part, "rb+") as f:
                os.fsync(f.fileno())
            commit(t.part, final)
            return final
        t.part.unlink(missing_ok=True)
        if attempt == 1:
            log.warning("%s failed verification (%s); deleted it, downloading once more", spec.name, problem)
        else:
            raise DownloadError(
                f"{spec.name} from {safe_url(spec.url)} failed verification twice ({problem}); the file was deleted "
                "and nothing from it was stored. The server's copy may be corrupt: try again later or another mirror"
            )
    raise AssertionError("unreachable")


def verify_local(spec: FileSpec, path: str | os.PathLike) -> Path:
    """A file the user downloaded (a login-gated dataset's archive, --from_dir): checked against the size, sha256
    and md5 known for it; an error naming the file and what differs. The file is never changed or deleted."""
    path = Path(path)
    if not path.is_file():
        raise DownloadError(f"{spec.name}: {path} is not a file")
    sha, md5 = hashlib.sha256(), hashlib.md5()
    if spec.sha256 or spec.md5:
        _hash_file(path, [sha, md5])
    problem = _verify(spec, path, (sha.hexdigest(), md5.hexdigest()))
    if problem:
        raise DownloadError(f"{path} is not the expected {spec.name}: {problem} (a partial or different download? "
                            "download it again)")
    return path


def _hash_file(path: Path, hashers, limit: int | None = None) -> None:
    left = limit
    with open(path, "rb") as f:
        while left is None or left > 0:
            chunk = f.read(CHUNK if left is None else min(CHUNK, left))
            if not chunk:
                break
            for h in hashers:
                h.update(chunk)
            if left is not None:
                left -= len(chunk)


class _Retry(Exception):
    """A failed request: counted, backed off, retried (at most `retries` times in a row). `after`: the seconds the
    server asked to wait (Retry-After), or None."""

    def __init__(self, why: str, after: float | None = None):
        super().__init__(why)
        self.after = after


MAX_RETRY_AFTER = 300.0  # a server's Retry-After is honoured up to this many seconds


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), clamped to 0..MAX_RETRY_AFTER; None when
    absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, min(when - (time.time() if now is None else now), MAX_RETRY_AFTER))


class _Transfer:
    """One download into a .part file: resume with Range, and never lose bytes already there unless the server
    proves them wrong (a full answer to a Range request is compared with them first)."""

    def __init__(self, spec, part: Path, session, retries, backoff, timeout, progress, bar, on_chunk,
                 stall_s: float = 120.0, min_rate: float = 1024.0):
        self.spec, self.part, self.session = spec, part, session
        self.retries, self.backoff, self.timeout = retries, backoff, timeout
        self.stall_s, self.min_rate = stall_s, min_rate
        self.progress, self.bar, self.on_chunk = progress, bar, on_chunk
        self.failures = 0
        self.pbar = None
        self.ranged = True  # ask with Range; off after a 416 whose size does not match the part
        self.have = part.stat().st_size if part.exists() else 0
        if self.have and spec.size is not None and self.have > spec.size:
            part.unlink()
            self.have = 0
        self.sha, self.md5 = hashlib.sha256(), hashlib.md5()
        if self.have:
            _hash_file(part, (self.sha, self.md5))  # hash what is there once, then keep hashing what is appended
        self.total = spec.size

    def run(self) -> tuple[str, str]:
        from mllib.atomic import is_full, no_space

        try:
            while True:
                try:
                    if self._attempt():
                        return self.sha.hexdigest(), self.md5.hexdigest()
                except _Retry as e:
                    self._backoff(str(e), e.after)
                except OSError as e:  # the part keeps what was written: a re-run resumes from there
                    if is_full(e):
                        left = (self.total - self.have) if self.total is not None else None
                        raise DownloadError(f"{self.spec.name}: " + no_space(self.part.parent, left)) from None
                    raise
        finally:
            if self.pbar is not None:
                self.pbar.close()

    def _backoff(self, why: str, after: float | None = None) -> None:
        """Wait before the next try: exponential backoff with full jitter (a random share of min(30 s, backoff x
        2^(failures - 1)), so many clients do not retry in step), or at least the server's Retry-After."""
        self.failures += 1
        if self.failures > self.retries:
            raise DownloadUnavailable(
                f"{self.spec.name}: giving up after {self.retries} retries ({why}) from {safe_url(self.spec.url)}; "
                "re-run the same command to resume where it stopped"
            )
        delay = random.uniform(0.5, 1.0) * min(30.0, self.backoff * 2 ** (self.failures - 1))
        if after is not None:
            delay = max(delay, after)
        log.warning("%s: %s; retry %d/%d in %.1f s%s", self.spec.name, why, self.failures, self.retries, delay,
                    " (the server's Retry-After)" if after is not None and delay == after else "")
        time.sleep(delay)

    def _attempt(self) -> bool:
        """One request; True when the file is complete."""
        import requests
        import urllib3

        asked = self.have if self.ranged else 0
        headers = {"Range": f"bytes={asked}-"} if asked else {}
        try:
            r = self.session.get(self.spec.url, headers=headers, stream=True, timeout=self.timeout,
                                 allow_redirects=True)
        except (requests.ConnectionError, requests.Timeout) as e:
            raise _Retry(type(e).__name__) from None
        with r:
            start, limit = self._check_status(r, asked)
            if start is None:
                return True  # 416 on a complete part
            try:
                self._receive(r, start, limit)
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                    urllib3.exceptions.HTTPError) as e:  # the last: read1's own (timeouts, resets, short bodies)
                raise _Retry(f"{type(e).__name__} at byte {self.have:,d}") from None
        if self.total is not None and self.have < self.total:
            raise _Retry(f"connection closed at byte {self.have:,d}")
        self.failures = 0
        return True

    def _check_status(self, r, asked: int) -> tuple[int | None, int | None]:
        """(first byte of the body, end of the body (exclusive) or None); (None, None) when the part is complete."""
        name, url = self.spec.name, safe_url(self.spec.url)
        code = r.status_code
        if code in (429, 500, 502, 503, 504):
            raise _Retry(f"HTTP {code}", retry_after(r.headers.get("Retry-After")) if code in (429, 503) else None)
        if code == 416 and asked:
            return self._on_416(r)
        if code in (401, 403):
            raise DownloadError(f"{name}: {url} answered HTTP {code} (not allowed)")
        if code == 404:
            raise DownloadError(f"{name}: {url} not found (HTTP 404); check --base_url")
        if code not in (200, 206):
            raise DownloadError(f"{name}: {url} answered HTTP {code}")
        if code == 206:
            cr = r.headers.get("Content-Range", "")
            start, end, total = _parse_content_range(cr)
            if start is None:
                raise _Retry(f"HTTP 206 without a valid Content-Range ({cr[:60]!r})")
            if start != asked:
                raise _Retry(f"HTTP 206 for bytes from {start:,d}, asked from {asked:,d}")
            self._set_total(total)
            return start, end + 1
        cl = r.headers.get("Content-Length")  # 200: the whole file from byte 0
        self._set_total(int(cl) if cl and cl.isdigit() else None)
        if self.have:
            log.info("%s: the server sent the whole file; comparing it with the %s bytes already here", name,
                     f"{self.have:,d}")
        return 0, self.total

    def _set_total(self, total: int | None) -> None:
        if total is None:
            return
        if self.spec.size is not None and total != self.spec.size:
            raise DownloadError(f"{self.spec.name}: server reports {total:,d} bytes, expected {self.spec.size:,d}; "
                                "wrong file or mirror")
        self.total = total

    def _on_416(self, r) -> tuple[int | None, int | None]:
        """The server has nothing from byte `have` on: the part is complete only if its size is the file's."""
        _, _, remote = _parse_content_range(r.headers.get("Content-Range", ""))
        size = self.spec.size if self.spec.size is not None else remote
        if size is not None and self.have == size:
            return None, None
        if self.ranged:  # a part of unknown or wrong length: ask for the whole file and compare
            log.warning("%s: the server has no bytes from %s on (its size: %s); comparing with a full download",
                        self.spec.name, f"{self.have:,d}", "unknown" if size is None else f"{size:,d}")
            self.ranged = False
            raise _Retry("HTTP 416 on resume")
        raise DownloadError(f"{self.spec.name}: {safe_url(self.spec.url)} answered HTTP 416 to a request "
                            "without Range")

    def _receive(self, r, start: int, limit: int | None) -> None:
        """Write the body from byte `start`; bytes already in the part are compared, not rewritten."""
        self._bar()
        pos = start
        f = open(self.part, "r+b" if self.part.exists() else "wb")
        try:
            f.seek(pos)
            t0 = time.perf_counter()
            for chunk in self._arriving(r):
                if limit is not None and pos + len(chunk) > limit:
                    raise _Retry(f"body longer than announced ({limit - start:,d} bytes)")
                if pos < self.have:  # overlap with what is here: must be the same bytes
                    n = min(len(chunk), self.have - pos)
                    if f.read(n) != chunk[:n]:
                        self._restart_at(f, pos)
                        f.seek(pos)
                    else:
                        pos += n
                        chunk = chunk[n:]
                        if not chunk:
                            continue
                f.write(chunk)
                self.sha.update(chunk)
                self.md5.update(chunk)
                pos += len(chunk)
                self.have = pos
                self._count(len(chunk), t0)
                t0 = time.perf_counter()
            if pos < self.have:  # the whole file is shorter than the part: the part's tail is not the file's
                log.warning("%s: the file is %s bytes, the part was longer; truncated", self.spec.name, f"{pos:,d}")
                self._restart_at(f, pos)
        finally:
            f.close()

    def _arriving(self, r):
        """The body as it arrives: what one receive gives, up to NET_CHUNK (urllib3's read1; iter_content would
        wait for NET_CHUNK whole bytes). Fewer than min_rate bytes/s over a stall_s window is a _Retry."""
        read1 = getattr(r.raw, "read1", None)
        chunks = iter(lambda: read1(NET_CHUNK, decode_content=True), b"") if read1 else r.iter_content(NET_CHUNK)
        t0, n = time.monotonic(), 0
        for chunk in chunks:
            n += len(chunk)
            elapsed = time.monotonic() - t0
            if elapsed >= self.stall_s:
                if n < self.min_rate * elapsed:
                    raise _Retry(f"stalled at byte {self.have:,d}: {n:,d} bytes in {elapsed:.0f} s (under "
                                 f"{self.min_rate:,.0f} bytes/s)")
                t0, n = time.monotonic(), 0
            if chunk:
                yield chunk

    def _restart_at(self, f, pos: int) -> None:
        """The part differs from the server's file from byte pos: keep what matched, drop the rest."""
        log.warning("%s: the bytes here differ from the server's from byte %s on; keeping the %s that match",
                    self.spec.name, f"{pos:,d}", f"{pos:,d}")
        f.truncate(pos)
        f.flush()
        self.have = pos
        self.sha, self.md5 = hashlib.sha256(), hashlib.md5()
        _hash_file(self.part, (self.sha, self.md5), limit=pos)
        if self.pbar is not None:
            self.pbar.reset(total=self.total)
            self.pbar.update(pos)

    def _bar(self) -> None:
        if self.bar and self.pbar is None:
            from tqdm import tqdm

            self.pbar = tqdm(total=self.total, initial=self.have, unit="B", unit_scale=True, unit_divisor=1024,
                             desc=self.spec.name, dynamic_ncols=True, miniters=1)
        elif self.pbar is not None:
            self.pbar.reset(total=self.total)
            self.pbar.update(self.have)

    def _count(self, n: int, t0: float) -> None:
        if self.pbar is not None:
            self.pbar.update(n)
        if self.progress is not None:
            self.progress.downloaded += n
            self.progress.download_seconds += time.perf_counter() - t0
        if self.on_chunk:
            self.on_chunk(n)


def _parse_content_range(cr: str) -> tuple[int | None, int | None, int | None]:
    """'bytes 100-199/1000' -> (100, 199, 1000); 'bytes */1000' -> (None, None, 1000); total None for '*'."""
    try:
        unit, rest = cr.strip().split(" ", 1)
        rng, total = rest.split("/", 1)
        size = None if total.strip() == "*" else int(total)
        if unit.lower() != "bytes" or (size is not None and size < 0):
            return None, None, None
        if rng.strip() == "*":
            return None, None, size
        a, b = rng.split("-", 1)
        start, end = int(a), int(b)
        if start < 0 or end < start or (size is not None and end >= size):
            return None, None, None
        return start, end, size
    except (ValueError, AttributeError):
        return None, None, None


def _verify(spec: FileSpec, path: Path, hashes: tuple[str, str]) -> str | None:
    """None if the file (of these sha256, md5) matches everything known about it, else what differs."""
    size = path.stat().st_size
    if spec.size is not None and size != spec.size:
        return f"size {size:,d} != expected {spec.size:,d}"
    if spec.sha256 or spec.md5:
        if spec.sha256 and hashes[0] != spec.sha256:
            return f"sha256 {hashes[0]} != expected {spec.sha256}"
        if spec.md5 and hashes[1] != spec.md5:
            return f"md5 {hashes[1]} != expected {spec.md5}"
    return None
