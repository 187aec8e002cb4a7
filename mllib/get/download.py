"""The download job: a list of files downloaded and extracted into the store, the two stages overlapped.

    summary = Job(specs, store, "datasets/coco", "downloads").run()     # datasets/getcoco.py, getcityscapes.py

The next download overlaps the previous zip's extraction; an estimate of the time left for the whole job comes
from the measured download and extraction speeds; a summary line at the end. Ctrl-C or a failure cancels pending
uploads and stops the extractor within seconds, leaving whole objects and no manifest for the unfinished zip.
Also here: the job's checksum table (read_checksums), its Progress and time formatting (human_seconds).
"""

from __future__ import annotations

import csv
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from mllib.get.extract import extract_to_store, is_extracted
from mllib.get.fetch import DownloadError, FileSpec, fetch, verify_local
from mllib.store import Store

log = logging.getLogger(__name__)


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


@dataclass
class Progress:
    """Bytes moved so far by the whole job, for the time estimate."""

    downloaded: int = 0
    download_seconds: float = 0.0
    extracted: int = 0
    extract_seconds: float = 0.0  # summed over the upload threads
    extract_wall: float = 0.0  # wall-clock seconds of zips finished extracting
    extract_since: float | None = None  # perf_counter() when the zip now extracting started (None: idle)

    def extract_elapsed(self) -> float:
        """Wall-clock seconds spent extracting so far (the zip in progress included)."""
        live = time.perf_counter() - self.extract_since if self.extract_since is not None else 0.0
        return self.extract_wall + live


def human_seconds(s: float) -> str:
    s = int(max(0, s))
    h, m = divmod(s // 60, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s % 60:02d}s"


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
            f"{self.objects:,d} objects stored in {self.url}, {human_seconds(self.seconds)}"
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
        local: dict[str, Path] | None = None,
    ):
        self.specs = specs
        self.local = dict(local or {})  # file name -> a copy the user downloaded: verified, never deleted
        self.store = store
        self.prefix = prefix.strip("/")
        self.workdir = Path(workdir)
        if self.workdir.exists() and not self.workdir.is_dir():
            raise DownloadError(f"--workdir {self.workdir} is a file, not a folder for the downloads")
        self.jobs = jobs
        self.keep_zips = keep_zips
        self.session = session
        self.bar = bar
        self.retries = retries
        self.backoff = backoff
        self.progress = Progress()
        self._last_estimate = 0.0

    @classmethod
    def from_args(cls, specs: list[FileSpec], store: Store, prefix: str, args, session=None,
                  local: dict[str, Path] | None = None) -> Job:
        """A job with the flags of mllib.cli.add_download_args."""
        return cls(specs, store, prefix, args.workdir, jobs=args.jobs, keep_zips=args.keep_zips, session=session,
                   bar=not args.no_progress, retries=args.retries, local=local)

    def estimate(self, remaining_download: int, remaining_extract: int) -> tuple[float, str] | None:
        """(seconds left for the whole job, the line that says so), from the rates measured so far: download
        bytes per second of downloading, extraction bytes per wall-clock second of extracting."""
        p = self.progress
        if p.download_seconds < 1 or p.downloaded == 0:
            return None
        dl_rate = p.downloaded / p.download_seconds
        t_dl = remaining_download / dl_rate
        elapsed = p.extract_elapsed()
        if p.extracted and elapsed > 1:
            t_ex = remaining_extract / (p.extracted / elapsed)
        else:
            t_ex = remaining_extract / dl_rate  # no measurement yet: assume extraction keeps up with downloading
        left = max(t_dl, t_ex)
        return left, (f"estimate: {human_seconds(left)} left for the whole job "
                      f"(download {remaining_download / 1e9:,.2f} GB at {dl_rate / 1e6:,.1f} MB/s: {human_seconds(t_dl)}; "
                      f"extraction: {human_seconds(t_ex)})")

    def _log_estimate(self) -> None:
        est = self.estimate(max(0, self._remaining[0]), max(0, self._remaining[1] - self._extracting_done()))
        if est:
            self._last_estimate = time.perf_counter()
            log.info(est[1], extra={"seconds_left": est[0]})

    def _extracting_done(self) -> int:
        """Bytes of the zip now extracting that are already in the store."""
        return max(0, self.progress.extracted - self._extracted_before)

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
        self._extracted_before = 0  # progress.extracted when the zip now extracting started
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._errors: list[BaseException] = []
        self._cancel = threading.Event()
        th = threading.Thread(target=self._extractor, args=(summary,), name="extract", daemon=True)
        th.start()
        try:
            for spec in todo:
                if self._errors:
                    break
                if spec.name in self.local:
                    path = verify_local(spec, self.local[spec.name])
                    self._tick(path.stat().st_size)
                    log.info("%s verified (%s, %.2f GB); extracting", spec.name, path, path.stat().st_size / 1e9)
                else:
                    path = fetch(spec, self.workdir, session=self.session, progress=self.progress, bar=self.bar,
                                 on_chunk=self._tick, retries=self.retries, backoff=self.backoff)
                    summary.downloaded_bytes += path.stat().st_size
                    log.info("%s downloaded and verified (%.2f GB); extracting", spec.name, path.stat().st_size / 1e9)
                self._log_estimate()
                self._put((spec, path))  # waits while the previous zip is still being extracted
            self._put(None)
            while th.is_alive():  # the last extraction: the estimate goes on every 30 s
                th.join(0.2)
                if time.perf_counter() - self._last_estimate > 30:
                    self._log_estimate()
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
            except queue.Full:  # the previous zip is still extracting: the estimate goes on every 30 s
                if self._errors:
                    return
                if time.perf_counter() - self._last_estimate > 30:
                    self._log_estimate()

    def _extractor(self, summary: JobSummary) -> None:
        while (item := self._queue.get()) is not None:
            if self._errors or self._cancel.is_set():
                return
            spec, path = item
            self._extracted_before = self.progress.extracted
            self.progress.extract_since = time.perf_counter()
            try:
                r = extract_to_store(path, self.store, self.prefix, jobs=self.jobs, workdir=self.workdir,
                                     progress=self.progress, bar=self.bar, cancel=self._cancel,
                                     zip_info={"size": path.stat().st_size, "sha256": spec.sha256, "md5": spec.md5})
                summary.objects += r.stored
                self._remaining[1] -= self._sizes.get(spec.name, 0)
                self._extracted_before = self.progress.extracted
                log.info("%s: %d objects stored, %d already there, %.1f s", spec.name, r.stored, r.skipped, r.seconds)
                if not self.keep_zips and spec.name not in self.local:
                    path.unlink(missing_ok=True)
            except BaseException as e:  # noqa: BLE001 - handed to the main thread
                self._errors.append(e)
                return
            finally:
                self.progress.extract_wall += time.perf_counter() - self.progress.extract_since
                self.progress.extract_since = None

    def _tick(self, n: int) -> None:
        self._remaining[0] -= n
        if time.perf_counter() - self._last_estimate > 30:
            self._log_estimate()
