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
from mllib.store import PART_SIZE, Store, _run_all, etag_of_bytes

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
        part, hashes = _download(spec, workdir / (spec.name + ".part"), session, retries, backoff, timeout, progress,
                                 bar, on_chunk)
        problem = _verify(spec, part, hashes)
        if problem is None:
            os.replace(part, final)
            return final
        part.unlink(missing_ok=True)
        if attempt == 1:
            log.warning("%s failed verification (%s); deleted it, downloading once more", spec.name, problem)
        else:
            raise DownloadError(
                f"{spec.name} from {_safe_url(spec.url)} failed verification twice ({problem}); the file was deleted "
                "and nothing from it was stored. The server's copy may be corrupt: try again later or another mirror"
            )
    raise AssertionError("unreachable")


def _safe_url(url: str) -> str:
    """A URL for messages: no query string (download links may carry tokens)."""
    return url.split("?", 1)[0]


def _hash_file(path: Path, hashers) -> None:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            for h in hashers:
                h.update(chunk)


def _download(spec, part: Path, session, retries, backoff, timeout, progress, bar, on_chunk) -> Path:
    import requests

    sha, md5 = hashlib.sha256(), hashlib.md5()
    have = part.stat().st_size if part.exists() else 0
    if have and spec.size is not None and have > spec.size:
        part.unlink()
        have = 0
    if have:
        _hash_file(part, (sha, md5))  # hash what is there once, then keep hashing what is appended
    total = spec.size
    pbar = None
    failures = 0
    try:
        while True:
            headers = {"Range": f"bytes={have}-"} if have else {}
            try:
                r = session.get(spec.url, headers=headers, stream=True, timeout=timeout, allow_redirects=True)
            except (requests.ConnectionError, requests.Timeout) as e:
                failures = _backoff(spec, failures, retries, backoff, f"{type(e).__name__}")
                continue
            with r:
                if r.status_code in (429, 500, 502, 503, 504):
                    failures = _backoff(spec, failures, retries, backoff, f"HTTP {r.status_code}")
                    continue
                if r.status_code == 416 and have:
                    # nothing more to send: the part is complete if it has the expected size
                    if spec.size is None or have == spec.size:
                        return part, (sha.hexdigest(), md5.hexdigest())
                    log.warning("%s: server refused the resume range; restarting from zero", spec.name)
                    part.unlink()
                    have, sha, md5 = 0, hashlib.sha256(), hashlib.md5()
                    continue
                if r.status_code in (401, 403):
                    raise DownloadError(f"{spec.name}: {_safe_url(spec.url)} answered HTTP {r.status_code} (not allowed)")
                if r.status_code == 404:
                    raise DownloadError(f"{spec.name}: {_safe_url(spec.url)} not found (HTTP 404); check --base_url")
                if r.status_code not in (200, 206):
                    raise DownloadError(f"{spec.name}: {_safe_url(spec.url)} answered HTTP {r.status_code}")
                mode = "ab"
                if r.status_code == 206:
                    cr = r.headers.get("Content-Range", "")
                    start, length = _parse_content_range(cr)
                    if start != have:
                        log.warning("%s: resume answered with range %r, not from byte %d; restarting", spec.name, cr, have)
                        mode, have, sha, md5 = "wb", 0, hashlib.sha256(), hashlib.md5()
                        r.close()
                        part.unlink(missing_ok=True)
                        continue
                    if length is not None:
                        total = length
                else:  # 200: the whole file from byte 0, never appended
                    if have:
                        log.info("%s: server ignored the Range request; restarting from zero", spec.name)
                    mode, have, sha, md5 = "wb", 0, hashlib.sha256(), hashlib.md5()
                    cl = r.headers.get("Content-Length")
                    if cl and cl.isdigit():
                        total = int(cl)
                if spec.size is not None and total is not None and total != spec.size:
                    raise DownloadError(
                        f"{spec.name}: server reports {total:,d} bytes, expected {spec.size:,d}; wrong file or mirror"
                    )
                if bar and pbar is None:
                    from tqdm import tqdm

                    pbar = tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                                desc=spec.name, dynamic_ncols=True, miniters=1)
                elif pbar is not None:
                    pbar.reset(total=total)
                    pbar.update(have)
                try:
                    with open(part, mode) as f:
                        t0 = time.perf_counter()
                        for chunk in r.iter_content(NET_CHUNK):
                            if not chunk:
                                continue
                            f.write(chunk)
                            sha.update(chunk)
                            md5.update(chunk)
                            have += len(chunk)
                            if pbar is not None:
                                pbar.update(len(chunk))
                            if progress is not None:
                                now = time.perf_counter()
                                progress.downloaded += len(chunk)
                                progress.download_seconds += now - t0
                                t0 = now
                            if on_chunk:
                                on_chunk(len(chunk))
                except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
                    failures = _backoff(spec, failures, retries, backoff, f"{type(e).__name__} at byte {have:,d}")
                    continue
                if total is not None and have < total:
                    failures = _backoff(spec, failures, retries, backoff, f"connection closed at byte {have:,d}")
                    continue
                failures = 0
                break
    finally:
        if pbar is not None:
            pbar.close()
    # hashes computed while writing, so verification does not read the file again
    return part, (sha.hexdigest(), md5.hexdigest())


def _parse_content_range(cr: str) -> tuple[int | None, int | None]:
    # "bytes 100-199/1000"
    try:
        unit, rest = cr.split(" ", 1)
        rng, total = rest.split("/", 1)
        start = int(rng.split("-", 1)[0])
        return start, (None if total.strip() == "*" else int(total))
    except (ValueError, AttributeError):
        return None, None


def _backoff(spec: FileSpec, failures: int, retries: int, backoff: float, why: str) -> int:
    failures += 1
    if failures > retries:
        raise DownloadError(
            f"{spec.name}: giving up after {retries} retries ({why}) from {_safe_url(spec.url)}; "
            "re-run the same command to resume where it stopped"
        )
    delay = min(30.0, backoff * 2 ** (failures - 1))
    log.warning("%s: %s; retry %d/%d in %.1f s", spec.name, why, failures, retries, delay)
    time.sleep(delay)
    return failures


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
def check_members(zf: zipfile.ZipFile, zip_name: str) -> list[zipfile.ZipInfo]:
    """The file members of a zip, after refusing unsafe names and links."""
    out = []
    for info in zf.infolist():
        name = info.filename
        p = PurePosixPath(name.replace("\\", "/"))
        mode = info.external_attr >> 16
        if name.startswith(("/", "\\")) or p.is_absolute() or (len(name) > 1 and name[1] == ":"):
            raise DownloadError(f"{zip_name}: refusing member with an absolute path: {name!r}")
        if ".." in p.parts:
            raise DownloadError(f"{zip_name}: refusing member that escapes the folder: {name!r}")
        if stat.S_ISLNK(mode):
            raise DownloadError(f"{zip_name}: refusing symbolic link member: {name!r}")
        if name.endswith("/") or info.is_dir():
            continue
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


def is_extracted(store: Store, prefix: str, zip_name: str) -> bool:
    return store.exists(manifest_key(prefix, zip_name))


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
) -> ExtractReport:
    """Stream every member of a zip into store under prefix/<member path>; nested zips are extracted in place."""
    zip_path = Path(zip_path)
    name = manifest_name or zip_path.name
    prefix = prefix.strip("/")
    t0 = time.perf_counter()
    report = ExtractReport(name)
    existing: dict = {}
    members_out: list[dict] = []
    lock = threading.Lock()
    pbar = None
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as e:
        raise DownloadError(f"{name}: not a valid zip ({e})") from None
    with zf:
        members = check_members(zf, name)
        # objects already there (an interrupted extraction): list only the folders this zip writes into
        for top in sorted({m.filename.split("/", 1)[0] for m in members}):
            existing.update((i.key, i) for i in store.list(f"{prefix}/{top}"))
        nested = [m for m in members if m.filename.lower().endswith(".zip")]
        plain = [m for m in members if not m.filename.lower().endswith(".zip")]
        report.members = len(members)
        if bar:
            from tqdm import tqdm

            total_bytes = sum(m.compress_size for m in members)
            pbar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc=f"extract {name}",
                        dynamic_ncols=True, position=1, leave=False)  # below the download bar of the next zip

        def one(info: zipfile.ZipInfo, source: zipfile.ZipFile, base: str) -> None:
            key = f"{prefix}/{base}{info.filename}" if base else f"{prefix}/{info.filename}"
            t = time.perf_counter()
            have = existing.get(key)
            if info.file_size <= PART_SIZE * 4:
                with source.open(info) as f:
                    data = f.read()  # zipfile checks the CRC at the end of the member
                if have is not None and have.size == len(data) and store.checksum(have) == etag_of_bytes(data):
                    skipped = True
                else:
                    store.put_bytes(key, data)
                    skipped = False
            else:  # large member (e.g. instances_train2017.json): stream it, multipart on S3
                with source.open(info) as f:
                    store.put_stream(key, f, size=info.file_size)
                skipped = False
            with lock:
                members_out.append({"key": key, "size": info.file_size, "crc": f"{info.CRC:08x}"})
                if skipped:
                    report.skipped += 1
                else:
                    report.stored += 1
                    report.bytes += info.file_size
                if progress is not None:
                    progress.extracted += info.compress_size
                    progress.extract_seconds += time.perf_counter() - t
                if pbar is not None:
                    pbar.update(info.compress_size)

        _run_all(lambda m: one(m, zf, ""), plain, jobs)
        for inner in nested:
            base = str(PurePosixPath(inner.filename).parent)
            base = "" if base == "." else base + "/"
            tmpdir = Path(workdir or zip_path.parent)
            tmp = tmpdir / f".{PurePosixPath(inner.filename).name}.nested-{os.getpid()}"
            try:
                with zf.open(inner) as src, open(tmp, "wb") as dst:
                    for chunk in iter(lambda: src.read(CHUNK), b""):
                        dst.write(chunk)
                with zipfile.ZipFile(tmp) as izf:
                    inner_members = check_members(izf, f"{name}:{inner.filename}")
                    report.members += len(inner_members)
                    if pbar is not None:
                        pbar.total += sum(m.compress_size for m in inner_members)
                        pbar.refresh()
                    _run_all(lambda m, izf=izf, base=base: one(m, izf, base), inner_members, jobs)
                members_out.append({"nested_zip": inner.filename, "size": inner.file_size, "crc": f"{inner.CRC:08x}"})
            finally:
                tmp.unlink(missing_ok=True)
    if pbar is not None:
        pbar.close()
    members_out.sort(key=lambda m: m.get("key") or m.get("nested_zip"))
    report.seconds = time.perf_counter() - t0
    report.manifest = {
        "zip": name,
        **(zip_info or {}),
        "members": members_out,
        "objects": sum(1 for m in members_out if "key" in m),
        "bytes": sum(m["size"] for m in members_out if "key" in m),
        "completed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    # written last: its presence means every member is in the store
    store.put_bytes(manifest_key(prefix, name), json.dumps(report.manifest, indent=1).encode())
    return report


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
            if is_extracted(self.store, self.prefix, spec.name):
                log.info("%s already extracted into %s, skipping", spec.name, self.store.url_for(self.prefix))
                summary.skipped_files += 1
            else:
                todo.append(spec)
        sizes = {s.name: s.size or 0 for s in todo}
        remaining_dl = [sum(sizes.values())]
        remaining_ex = [sum(sizes.values())]
        q: queue.Queue = queue.Queue(maxsize=1)
        errors: list[BaseException] = []

        def extractor():
            while (item := q.get()) is not None:
                if errors:
                    continue  # keep consuming so the downloader never blocks
                spec, path = item
                try:
                    r = extract_to_store(path, self.store, self.prefix, jobs=self.jobs, workdir=self.workdir,
                                         progress=self.progress, bar=self.bar,
                                         zip_info={"size": path.stat().st_size, "sha256": spec.sha256, "md5": spec.md5})
                    summary.objects += r.stored
                    remaining_ex[0] -= sizes.get(spec.name, 0)
                    log.info("%s: %d objects stored, %d already there, %.1f s", spec.name, r.stored, r.skipped,
                             r.seconds)
                    if not self.keep_zips:
                        path.unlink(missing_ok=True)
                except BaseException as e:  # noqa: BLE001 - handed to the main thread
                    errors.append(e)

        th = threading.Thread(target=extractor, name="extract", daemon=True)
        th.start()

        def tick(n):
            remaining_dl[0] -= n
            now = time.perf_counter()
            if now - self._last_estimate > 30:
                self._last_estimate = now
                msg = self.estimate(max(0, remaining_dl[0]), max(0, remaining_ex[0]))
                if msg:
                    log.info(msg)

        try:
            for spec in todo:
                if errors:
                    break
                path = fetch(spec, self.workdir, session=self.session, progress=self.progress, bar=self.bar,
                             on_chunk=tick, retries=self.retries, backoff=self.backoff)
                summary.downloaded_bytes += path.stat().st_size
                msg = self.estimate(max(0, remaining_dl[0]), max(0, remaining_ex[0]))
                if msg:
                    log.info(msg)
                q.put((spec, path))  # waits while the previous zip is still being extracted
        except BaseException:
            errors.append(None)  # the extractor stops taking work; objects it wrote are complete (atomic writes)
            raise
        q.put(None)
        th.join()
        if errors:
            raise errors[0]
        summary.seconds = time.perf_counter() - t0
        return summary
