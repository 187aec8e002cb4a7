"""Zips streamed straight into the store: every member checked first, a manifest written last.

`extract_to_store()` refuses, before anything is stored, unsafe member names (absolute, '..', '.', 'a//b', links,
duplicates, too long, under .manifests/), zip bombs, and members that would replace another zip's objects with
other content; then streams the members into the store under PREFIX/<member path> with concurrent uploads
(zips inside the zip are extracted in place). The manifest (members, sizes, CRCs, the zip's size and digests)
is written only after every member is stored, so an interrupted extraction is finished on the next run, and a
finished one is skipped only when its manifest describes the very zip expected (`is_extracted`). A cancel event
(Ctrl-C) stops it within seconds.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from mllib import layout
from mllib.get.fetch import CHUNK, DownloadError, FileSpec
from mllib.store import PART_SIZE, Cancelled, NotFound, Store, etag_of_bytes, run_all

if TYPE_CHECKING:
    from mllib.get.download import Progress

log = logging.getLogger(__name__)

MANIFESTS = layout.MANIFESTS

MAX_TOTAL_BYTES = 256 * 1024**3  # a zip that would unpack to more than this is refused (COCO's largest: ~20 GB)
MAX_RATIO = 1000  # nor one whose member (over 1 MiB) unpacks to more than this (deflate tops out near 1032:1;
# generated JSON can reach 500:1, so this only catches members that are almost all one repeated byte)
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
    """The manifest of a zip extracted below prefix (datasets/<name>: layout.manifest(name, zip_name))."""
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
