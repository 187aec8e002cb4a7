"""Verified, resumable downloads of dataset zips, streamed straight from the zip into an object store.

The pieces, used by datasets/getcoco.py and datasets/getcityscapes.py:

- `fetch()` streams a URL into WORKDIR/NAME.part, resumes with an HTTP Range request (appending only after a
  206 whose Content-Range starts where the file ends; a 200 restarts from zero), retries resets, timeouts and
  5xx with backoff, hashes while it writes, verifies size / sha256 / md5 against what is known, and only then
  renames the file to WORKDIR/NAME. A mismatch deletes the file and downloads once more, then fails.
- `extract_to_store()` checks every member name first (absolute paths, '..', links are refused), then streams
  the members into the store under PREFIX/<member path> with concurrent uploads; zips inside the zip are
  extracted in place. A manifest (members, sizes, CRCs) is written only after every member is stored, so an
  interrupted extraction is finished on the next run and a finished one is skipped.
- `Job` runs a list of files: the next download overlaps the previous extraction, and it prints an estimate of
  the time left for the whole job from the measured download and extraction speeds.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import queue
import stat
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath

from mllib import MllibError
from mllib.store import PART_SIZE, Cancelled, NotFound, Store, etag_of_bytes, run_all
from mllib.store.atomic import commit

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
NET_CHUNK = 64 * 1024  # a dropped connection loses at most this much
MANIFESTS = ".manifests"


class DownloadError(MllibError):
    pass


@dataclass(frozen=True)
class FileSpec:
    """A file to download and what is known about it (None: unknown, not checked)."""

    name: str
    url: str
    size: int | None = None
    sha256: str | None = None
    md5: str | None = None


def read_checksums(path: str | os.PathLike | None = None) -> dict[str, FileSpec]:
    """Read a checksum table (columns url, size, sha256, md5; '-' for unknown; '#' comments), keyed by file name.

    Without a path: the official COCO 2017 table shipped with mllib.
    """
    if path is None:
        text = (resources.files("mllib.datasets") / "coco2017-checksums.tsv").read_text()
        source = "coco2017-checksums.tsv"
    else:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise DownloadError(f"cannot read checksum table {path}: {e.strerror}") from None
        source = str(path)
    rows = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    out: dict[str, FileSpec] = {}
    reader = csv.DictReader(rows, delimiter="\t")
    if not reader.fieldnames or "url" not in reader.fieldnames:
        raise DownloadError(f"checksum table {source}: needs a header line 'url<TAB>size<TAB>sha256<TAB>md5'")

    def val(v):
        v = (v or "").strip()
        return None if v in ("", "-") else v

    for n, row in enumerate(reader, 2):
        url = val(row.get("url"))
        if not url:
            raise DownloadError(f"checksum table {source}: row {n} has no url")
        size = val(row.get("size"))
        try:
            size_i = int(size) if size else None
        except ValueError:
            raise DownloadError(f"checksum table {source}: row {n}: size {size!r} is not a number") from None
        name = url.rstrip("/").rsplit("/", 1)[-1]
        sha = val(row.get("sha256"))
        md5 = val(row.get("md5"))
        out[name] = FileSpec(name, url, size_i, sha.lower() if sha else None, md5.lower() if md5 else None)
    return out


# ---------------------------------------------------------------------------------------------------------------
# download
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Progress:
    """Bytes moved so far by the whole job, for the time estimate."""

    downloaded: int = 0
    download_seconds: float = 0.0
    extracted: int = 0
    extract_seconds: float = 0.0


def _human_seconds(s: float) -> str:
    s = int(max(0, s))
    h, m = divmod(s // 60, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s % 60:02d}s"


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


_safe_url = safe_url


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
) -> Path:
    """Download spec.url to WORKDIR/spec.name, resumable and verified. Returns the verified file's path."""
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
                      on_chunk)
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
    """A failed request: counted, backed off, retried (at most `retries` times in a row)."""


class _Transfer:
    """One download into a .part file: resume with Range, and never lose bytes already there unless the server
    proves them wrong (a full answer to a Range request is compared with them first)."""

    def __init__(self, spec, part: Path, session, retries, backoff, timeout, progress, bar, on_chunk):
        self.spec, self.part, self.session = spec, part, session
        self.retries, self.backoff, self.timeout = retries, backoff, timeout
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
        try:
            while True:
                try:
                    if self._attempt():
                        return self.sha.hexdigest(), self.md5.hexdigest()
                except _Retry as e:
                    self._backoff(str(e))
        finally:
            if self.pbar is not None:
                self.pbar.close()

    def _backoff(self, why: str) -> None:
        self.failures += 1
        if self.failures > self.retries:
            raise DownloadError(
                f"{self.spec.name}: giving up after {self.retries} retries ({why}) from {safe_url(self.spec.url)}; "
                "re-run the same command to resume where it stopped"
            )
        delay = min(30.0, self.backoff * 2 ** (self.failures - 1))
        log.warning("%s: %s; retry %d/%d in %.1f s", self.spec.name, why, self.failures, self.retries, delay)
        time.sleep(delay)

    def _attempt(self) -> bool:
        """One request; True when the file is complete."""
        import requests

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
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
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
            raise _Retry(f"HTTP {code}")
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
            for chunk in r.iter_content(NET_CHUNK):
                if not chunk:
                    continue
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


# ---------------------------------------------------------------------------------------------------------------
# extraction
# ---------------------------------------------------------------------------------------------------------------
MAX_TOTAL_BYTES = 256 * 1024**3  # a zip that would unpack to more than this is refused (COCO's largest: ~20 GB)
MAX_RATIO = 200  # nor one whose member (over 1 MiB) unpacks to more than this many times its compressed size
MAX_KEY_BYTES = 1024  # S3's key limit
MAX_NAME_BYTES = 255  # one path component, as local filesystems allow


def check_members(zf: zipfile.ZipFile, zip_name: str, max_total: int = MAX_TOTAL_BYTES,
                  max_ratio: float = MAX_RATIO) -> list[zipfile.ZipInfo]:
    """The file members of a zip, after refusing, before anything is stored: absolute paths, '..', '.', empty
    components ('a//b'), links, names too long for S3 or a local filesystem, duplicate names, members under
    .manifests/, and zip bombs (total size or one member's compression ratio over the caps)."""
    out, seen, total = [], set(), 0
    for info in zf.infolist():
        name = info.filename
        p = PurePosixPath(name.replace("\\", "/"))
        mode = info.external_attr >> 16
        if name.startswith(("/", "\\")) or p.is_absolute() or (len(name) > 1 and name[1] == ":"):
            raise DownloadError(f"{zip_name}: refusing member with an absolute path: {name!r}")
        parts = name.replace("\\", "/").rstrip("/").split("/")
        if ".." in parts:
            raise DownloadError(f"{zip_name}: refusing member that escapes the folder: {name!r}")
        if stat.S_ISLNK(mode):
            raise DownloadError(f"{zip_name}: refusing symbolic link member: {name!r}")
        if name.endswith("/") or info.is_dir():
            continue
        if any(c in ("", ".") for c in parts):
            raise DownloadError(f"{zip_name}: refusing member with an empty or '.' path component: {name!r}")
        if parts[0] == MANIFESTS:
            raise DownloadError(f"{zip_name}: refusing member under {MANIFESTS}/ (where manifests live): {name!r}")
        if len(name.encode()) > MAX_KEY_BYTES or any(len(c.encode()) > MAX_NAME_BYTES for c in parts):
            raise DownloadError(f"{zip_name}: member name too long for the store: {name[:80]!r}...")
        if name in seen:
            raise DownloadError(f"{zip_name}: member {name!r} appears twice")
        seen.add(name)
        total += info.file_size
        if total > max_total:
            raise DownloadError(f"{zip_name}: unpacks to more than {max_total / 1e9:,.0f} GB (a zip bomb?)")
        if info.file_size > 1 << 20 and info.file_size > max_ratio * max(1, info.compress_size):
            raise DownloadError(f"{zip_name}: member {name!r} unpacks {info.file_size / max(1, info.compress_size):,.0f}"
                                f" times its compressed size (over {max_ratio:g}: a zip bomb?)")
        out.append(info)
    return out


@dataclass
class ExtractReport:
    zip: str
    members: int = 0
    stored: int = 0
    skipped: int = 0
    bytes: int = 0
    seconds: float = 0.0
    manifest: dict = field(default_factory=dict)


def manifest_key(prefix: str, zip_name: str) -> str:
    return f"{prefix}/{MANIFESTS}/{zip_name}.json"


def read_manifest(store: Store, prefix: str, zip_name: str) -> dict | None:
    try:
        m = json.loads(store.get_bytes(manifest_key(prefix, zip_name)))
    except NotFound:
        return None
    except ValueError:
        log.warning("%s: its manifest is not valid JSON; extracting again", zip_name)
        return None
    return m if isinstance(m, dict) else None


def is_extracted(store: Store, prefix: str, zip_name: str, spec: FileSpec | None = None) -> bool:
    """A manifest for this zip exists and describes this very zip: its name, and the size / sha256 / md5 that
    spec knows (a manifest is never trusted by its name alone when the zip's digests are known)."""
    m = read_manifest(store, prefix, zip_name)
    if m is None or m.get("zip") != zip_name:
        return False
    if spec is not None:
        for field_, want in (("size", spec.size), ("sha256", spec.sha256), ("md5", spec.md5)):
            if want is not None and m.get(field_) != want:
                log.warning("%s: the manifest in the store describes another file (%s %s, expected %s); extracting "
                            "again", zip_name, field_, m.get(field_), want)
                return False
    return True


def owned_keys(store: Store, prefix: str, zip_name: str) -> dict[str, tuple[str, int, str]]:
    """key -> (the zip whose manifest lists it, size, crc), for every other zip extracted into prefix."""
    owners: dict[str, tuple[str, int, str]] = {}
    for info in store.list(f"{prefix}/{MANIFESTS}/"):
        other = info.key.rsplit("/", 1)[-1][: -len(".json")] if info.key.endswith(".json") else None
        if not other or other == zip_name:
            continue
        m = read_manifest(store, prefix, other) or {}
        for member in m.get("members", ()):
            if "key" in member:
                owners[member["key"]] = (other, member.get("size"), member.get("crc"))
    return owners


class _Cancellable:
    """A member stream that stops (Cancelled) once the job is cancelled: a multipart upload then aborts."""

    def __init__(self, f, cancel: threading.Event | None):
        self.f, self.cancel = f, cancel

    def read(self, n: int = -1) -> bytes:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("interrupted")
        return self.f.read(n)


class _Extraction:
    """One zip into the store: its members (checked up front), then its nested zips, then the manifest."""

    def __init__(self, zip_path: Path, store: Store, prefix: str, name: str, jobs: int, workdir, progress, bar,
                 cancel):
        self.zip_path, self.store, self.prefix, self.name = zip_path, store, prefix, name
        self.jobs, self.workdir, self.progress, self.bar, self.cancel = jobs, workdir, progress, bar, cancel
        self.report = ExtractReport(name)
        self.existing: dict = {}
        self.members_out: list[dict] = []
        self.lock = threading.Lock()
        self.pbar = None
        self.owners: dict[str, tuple[str, int, str]] = {}

    def key(self, base: str, info: zipfile.ZipInfo) -> str:
        return f"{self.prefix}/{base}{info.filename}"

    def check_owners(self, members, base: str, where: str) -> None:
        for m in members:
            owner = self.owners.get(self.key(base, m))
            if owner is not None and (owner[1], owner[2]) != (m.file_size, f"{m.CRC:08x}"):
                raise DownloadError(f"{where}: member {m.filename!r} would replace {self.key(base, m)}, which "
                                    f"{owner[0]} stored with other content; refusing (a zip may only write its own "
                                    "objects, or the very same bytes)")

    def one(self, info: zipfile.ZipInfo, source: zipfile.ZipFile, base: str) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("interrupted")
        key = self.key(base, info)
        t = time.perf_counter()
        have = self.existing.get(key)
        skipped = False
        if info.file_size <= PART_SIZE * 4:
            with source.open(info) as f:
                data = f.read()  # zipfile checks the CRC at the end of the member
            if have is not None and have.size == len(data) and self.store.checksum(have) == etag_of_bytes(data):
                skipped = True
            else:
                self.store.put_bytes(key, data)
        else:  # large member (e.g. instances_train2017.json): stream it, multipart on S3
            with source.open(info) as f:
                self.store.put_stream(key, _Cancellable(f, self.cancel), size=info.file_size)
        with self.lock:
            self.members_out.append({"key": key, "size": info.file_size, "crc": f"{info.CRC:08x}"})
            self.report.skipped += skipped
            self.report.stored += not skipped
            self.report.bytes += 0 if skipped else info.file_size
            if self.progress is not None:
                self.progress.extracted += info.compress_size
                self.progress.extract_seconds += time.perf_counter() - t
            if self.pbar is not None:
                self.pbar.update(info.compress_size)

    def nested(self, zf: zipfile.ZipFile, inner: zipfile.ZipInfo) -> None:
        base = str(PurePosixPath(inner.filename).parent)
        base = "" if base == "." else base + "/"
        tmp = Path(self.workdir or self.zip_path.parent) / f".{PurePosixPath(inner.filename).name}.nested-{os.getpid()}"
        try:
            with zf.open(inner) as src, open(tmp, "wb") as dst:
                for chunk in iter(lambda: src.read(CHUNK), b""):
                    dst.write(chunk)
            with zipfile.ZipFile(tmp) as izf:
                where = f"{self.name}:{inner.filename}"
                members = check_members(izf, where)
                self.check_owners(members, base, where)
                self.report.members += len(members)
                if self.pbar is not None:
                    self.pbar.total += sum(m.compress_size for m in members)
                    self.pbar.refresh()
                run_all(lambda m: self.one(m, izf, base), members, self.jobs, self.cancel)
            self.members_out.append({"nested_zip": inner.filename, "size": inner.file_size, "crc": f"{inner.CRC:08x}"})
        finally:
            tmp.unlink(missing_ok=True)

    def run(self, zip_info: dict | None) -> ExtractReport:
        t0 = time.perf_counter()
        try:
            zf = zipfile.ZipFile(self.zip_path)
        except zipfile.BadZipFile as e:
            raise DownloadError(f"{self.name}: not a valid zip ({e})") from None
        with zf:
            members = check_members(zf, self.name)
            self.owners = owned_keys(self.store, self.prefix, self.name)
            nested = [m for m in members if m.filename.lower().endswith(".zip")]
            plain = [m for m in members if not m.filename.lower().endswith(".zip")]
            self.check_owners(plain, "", self.name)
            # objects already there (an interrupted extraction): list only the folders this zip writes into
            for top in sorted({m.filename.split("/", 1)[0] for m in members}):
                self.existing.update((i.key, i) for i in self.store.list(f"{self.prefix}/{top}"))
            self.report.members = len(members)
            if self.bar:
                from tqdm import tqdm

                self.pbar = tqdm(total=sum(m.compress_size for m in members), unit="B", unit_scale=True,
                                 unit_divisor=1024, desc=f"extract {self.name}", dynamic_ncols=True, position=1,
                                 leave=False)  # below the download bar of the next zip
            try:
                run_all(lambda m: self.one(m, zf, ""), plain, self.jobs, self.cancel)
                for inner in nested:
                    self.nested(zf, inner)
            finally:
                if self.pbar is not None:
                    self.pbar.close()
        return self.finish(zip_info, t0)

    def finish(self, zip_info: dict | None, t0: float) -> ExtractReport:
        out = sorted(self.members_out, key=lambda m: m.get("key") or m.get("nested_zip"))
        self.report.seconds = time.perf_counter() - t0
        self.report.manifest = {
            "zip": self.name, **(zip_info or {}), "members": out,
            "objects": sum(1 for m in out if "key" in m), "bytes": sum(m["size"] for m in out if "key" in m),
            "completed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        # written last: its presence means every member is in the store
        self.store.put_bytes(manifest_key(self.prefix, self.name), json.dumps(self.report.manifest, indent=1).encode())
        return self.report


def extract_to_store(
    zip_path: str | os.PathLike,
    store: Store,
    prefix: str,
    *,
    jobs: int = 16,
    workdir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    bar: bool = True,
    manifest_name: str | None = None,
    zip_info: dict | None = None,
    cancel: threading.Event | None = None,
) -> ExtractReport:
    """Stream every member of a zip into store under prefix/<member path>; nested zips are extracted in place.
    Setting `cancel` stops it within seconds: pending uploads are cancelled, a multipart upload is aborted."""
    zip_path = Path(zip_path)
    name = manifest_name or zip_path.name
    return _Extraction(zip_path, store, prefix.strip("/"), name, jobs, workdir, progress, bar, cancel).run(zip_info)


# ---------------------------------------------------------------------------------------------------------------
# the whole job: download the next file while the previous one is extracted
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class JobSummary:
    files: int = 0
    downloaded_bytes: int = 0
    objects: int = 0
    skipped_files: int = 0
    seconds: float = 0.0
    url: str = ""

    def line(self) -> str:
        return (
            f"{self.files} files ({self.skipped_files} already done), {self.downloaded_bytes / 1e9:,.2f} GB downloaded, "
            f"{self.objects:,d} objects stored in {self.url}, {_human_seconds(self.seconds)}"
        )


class Job:
    """Download and extract a list of files into store/prefix, overlapping the two stages."""

    def __init__(
        self,
        specs: list[FileSpec],
        store: Store,
        prefix: str,
        workdir: str | os.PathLike,
        *,
        jobs: int = 16,
        keep_zips: bool = False,
        session=None,
        bar: bool = True,
        retries: int = 8,
        backoff: float = 0.5,
    ):
        self.specs = specs
        self.store = store
        self.prefix = prefix.strip("/")
        self.workdir = Path(workdir)
        self.jobs = jobs
        self.keep_zips = keep_zips
        self.session = session
        self.bar = bar
        self.retries = retries
        self.backoff = backoff
        self.progress = Progress()
        self._last_estimate = 0.0

    @classmethod
    def from_args(cls, specs: list[FileSpec], store: Store, prefix: str, args, session=None) -> Job:
        """A job with the flags of mllib.cli.add_download_args."""
        return cls(specs, store, prefix, args.workdir, jobs=args.jobs, keep_zips=args.keep_zips, session=session,
                   bar=not args.no_progress, retries=args.retries)

    def estimate(self, remaining_download: int, remaining_extract: int) -> str | None:
        p = self.progress
        if p.download_seconds < 1 or p.downloaded == 0:
            return None
        dl_rate = p.downloaded / p.download_seconds
        t_dl = remaining_download / dl_rate
        if p.extracted and p.extract_seconds > 0:
            ex_rate = p.extracted / max(p.extract_seconds / max(1, self.jobs), 1e-6)
            t_ex = remaining_extract / ex_rate
        else:
            t_ex = remaining_extract / dl_rate  # no measurement yet: assume extraction keeps up with downloading
        return (
            f"estimate: {_human_seconds(max(t_dl, t_ex))} left for the whole job "
            f"(download {remaining_download / 1e9:,.2f} GB at {dl_rate / 1e6:,.1f} MB/s: {_human_seconds(t_dl)}; "
            f"extraction: {_human_seconds(t_ex)})"
        )

    def run(self) -> JobSummary:
        t0 = time.perf_counter()
        summary = JobSummary(files=len(self.specs), url=self.store.url_for(self.prefix))
        todo = []
        for spec in self.specs:
            if is_extracted(self.store, self.prefix, spec.name, spec):
                log.info("%s already extracted into %s, skipping", spec.name, self.store.url_for(self.prefix))
                summary.skipped_files += 1
            else:
                todo.append(spec)
        self._sizes = {s.name: s.size or 0 for s in todo}
        self._remaining = [sum(self._sizes.values()), sum(self._sizes.values())]  # to download, to extract
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._errors: list[BaseException] = []
        self._cancel = threading.Event()
        th = threading.Thread(target=self._extractor, args=(summary,), name="extract", daemon=True)
        th.start()
        try:
            for spec in todo:
                if self._errors:
                    break
                path = fetch(spec, self.workdir, session=self.session, progress=self.progress, bar=self.bar,
                             on_chunk=self._tick, retries=self.retries, backoff=self.backoff)
                summary.downloaded_bytes += path.stat().st_size
                msg = self.estimate(max(0, self._remaining[0]), max(0, self._remaining[1]))
                if msg:
                    log.info(msg)
                self._put((spec, path))  # waits while the previous zip is still being extracted
            self._put(None)
            while th.is_alive():
                th.join(0.2)
        except BaseException:
            # Ctrl-C or a download error: pending uploads are cancelled, a multipart upload aborted, and the
            # extractor stops within seconds; objects already written are whole (atomic writes), no manifest
            self._cancel.set()
            try:
                self._queue.put_nowait(None)  # an idle extractor wakes up and ends; a busy one sees the cancel
            except queue.Full:
                pass
            th.join(timeout=30)
            raise
        if self._errors:
            raise self._errors[0]
        summary.seconds = time.perf_counter() - t0
        return summary

    def _put(self, item) -> None:
        while True:  # a bounded wait, so Ctrl-C reaches this thread
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                if self._errors:
                    return

    def _extractor(self, summary: JobSummary) -> None:
        while (item := self._queue.get()) is not None:
            if self._errors or self._cancel.is_set():
                return
            spec, path = item
            try:
                r = extract_to_store(path, self.store, self.prefix, jobs=self.jobs, workdir=self.workdir,
                                     progress=self.progress, bar=self.bar, cancel=self._cancel,
                                     zip_info={"size": path.stat().st_size, "sha256": spec.sha256, "md5": spec.md5})
                summary.objects += r.stored
                self._remaining[1] -= self._sizes.get(spec.name, 0)
                log.info("%s: %d objects stored, %d already there, %.1f s", spec.name, r.stored, r.skipped, r.seconds)
                if not self.keep_zips:
                    path.unlink(missing_ok=True)
            except BaseException as e:  # noqa: BLE001 - handed to the main thread
                self._errors.append(e)
                return

    def _tick(self, n: int) -> None:
        self._remaining[0] -= n
        now = time.perf_counter()
        if now - self._last_estimate > 30:
            self._last_estimate = now
            msg = self.estimate(max(0, self._remaining[0]), max(0, self._remaining[1]))
            if msg:
                log.info(msg)
