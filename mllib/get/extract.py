"""Archives (zip, tar, tar.gz) streamed straight into the store: every member checked first, a manifest written last.

`extract_to_store()` refuses, before anything is stored, unsafe member names (absolute, '..', '.', 'a//b', links,
duplicates, too long, under .manifests/), zip bombs, and members that would replace another zip's objects with
other content; then streams the members into the store under PREFIX/<member path> with concurrent uploads
(zips inside the zip are extracted in place). Tars (plain, .tgz, .tbz2, .txz) get the same checks from a first
pass over their headers (check_tar: also hard links, devices, sparse members and a member longer than its header
says), then one sequential streaming pass: no extracted copy on local disk. The manifest (members, sizes, CRCs, the zip's size and digests)
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
import zlib
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


def check_name(name: str, archive: str) -> list[str]:
    """The path components of a member name, after refusing absolute paths, '..', empty or '.' components ('a//b'),
    names under .manifests/ and names too long for S3 or a local filesystem (zip and tar members alike)."""
    p = PurePosixPath(name.replace("\\", "/"))
    if name.startswith(("/", "\\")) or p.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise DownloadError(f"{archive}: refusing member with an absolute path: {name!r}")
    parts = name.replace("\\", "/").rstrip("/").split("/")
    if ".." in parts:
        raise DownloadError(f"{archive}: refusing member that escapes the folder: {name!r}")
    return parts


def check_file_name(name: str, parts: list[str], archive: str) -> None:
    if any(c in ("", ".") for c in parts):
        raise DownloadError(f"{archive}: refusing member with an empty or '.' path component: {name!r}")
    if parts[0] == MANIFESTS:
        raise DownloadError(f"{archive}: refusing member under {MANIFESTS}/ (where manifests live): {name!r}")
    if len(name.encode()) > MAX_KEY_BYTES or any(len(c.encode()) > MAX_NAME_BYTES for c in parts):
        raise DownloadError(f"{archive}: member name too long for the store: {name[:80]!r}...")


def check_members(zf: zipfile.ZipFile, zip_name: str, max_total: int = MAX_TOTAL_BYTES,
                  max_ratio: float = MAX_RATIO) -> list[zipfile.ZipInfo]:
    """The file members of a zip, after refusing, before anything is stored: absolute paths, '..', '.', empty
    components ('a//b'), links, names too long for S3 or a local filesystem, duplicate names, members under
    .manifests/, and zip bombs (total size or one member's compression ratio over the caps)."""
    out, seen, total = [], set(), 0
    for info in zf.infolist():
        name = info.filename
        parts = check_name(name, zip_name)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise DownloadError(f"{zip_name}: refusing symbolic link member: {name!r}")
        if name.endswith("/") or info.is_dir():
            continue
        check_file_name(name, parts, zip_name)
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


def archive_kind(path: str | os.PathLike, name: str | None = None) -> str:
    """"zip", "tar" (plain, gzip, bzip2 or xz compressed) or "file" (stored as one object), from the file's first
    bytes; a name that promises an archive (.zip, .tar, .tgz, .tar.gz) whose bytes are not one is an error."""
    name = name or Path(path).name
    with open(path, "rb") as f:
        head = f.read(512)
    low = name.lower()
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00" or head[257:262] == b"ustar":
        return "tar"
    if low.endswith(".zip"):
        raise DownloadError(f"{name}: not a valid zip (no zip signature)")
    if low.endswith((".tar", ".tgz", ".tar.gz", ".tbz2", ".tar.bz2", ".tar.xz")):
        raise DownloadError(f"{name}: not a valid tar archive")
    return "file"


def _tar_open(raw, name: str):
    import tarfile

    try:
        return tarfile.open(fileobj=raw, mode="r:*")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DownloadError(f"{name}: not a valid tar archive ({e})") from None


def _next_members(tf, name: str):
    """The members of an open tar in archive order (headers read one at a time); a damaged header is an error
    naming the archive."""
    import tarfile

    while True:
        try:
            m = tf.next()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DownloadError(f"{name}: damaged tar archive ({e})") from None
        if m is None:
            return
        yield m


def check_tar(path: str | os.PathLike, name: str, max_total: int = MAX_TOTAL_BYTES,
              max_ratio: float = MAX_RATIO) -> list:
    """The regular-file members of a tar (plain, .tgz, .tbz2, .txz), after reading every header and refusing,
    before anything is stored: the zip rules for names (absolute, '..', '.', 'a//b', .manifests/, too long,
    duplicates), symbolic and hard links, device files, FIFOs, sparse and other special members, a total over the
    cap or over max_ratio times the archive's size (a tar bomb), a truncated archive, and anything but the
    end-of-archive marker after the last member (the sign of a member longer than its header says: its extra
    bytes stand where the next header should be, which tarfile would silently take for the end)."""
    import tarfile

    size = os.path.getsize(path)
    out, seen, total = [], set(), 0
    with open(path, "rb") as raw:
        tf = _tar_open(raw, name)
        try:
            for m in _next_members(tf, name):
                parts = check_name(m.name, name)
                if m.issym() or m.islnk():
                    raise DownloadError(f"{name}: refusing {'symbolic' if m.issym() else 'hard'} link member: "
                                        f"{m.name!r} -> {m.linkname!r}")
                if m.isdev():
                    raise DownloadError(f"{name}: refusing device or FIFO member: {m.name!r}")
                if m.isdir():
                    continue
                if not m.isreg() or m.issparse():
                    raise DownloadError(f"{name}: refusing special member (type {m.type!r}): {m.name!r}")
                check_file_name(m.name, parts, name)
                if m.name in seen:
                    raise DownloadError(f"{name}: member {m.name!r} appears twice")
                seen.add(m.name)
                total += m.size
                if total > max_total:
                    raise DownloadError(f"{name}: unpacks to more than {max_total / 1e9:,.0f} GB (a tar bomb?)")
                out.append(m)
            if total > 1 << 20 and total > max_ratio * max(1, size):
                raise DownloadError(f"{name}: unpacks {total / max(1, size):,.0f} times its size (over {max_ratio:g}:"
                                    " a tar bomb?)")
            # what follows the last member must be the end-of-archive marker: zero blocks to the end
            try:
                tf.fileobj.seek(tf.offset)
                for chunk in iter(lambda: tf.fileobj.read(CHUNK), b""):
                    if chunk.count(0) != len(chunk):
                        raise DownloadError(
                            f"{name}: data after the last readable member (offset {tf.offset:,d}) is not the end of "
                            "the archive: a member longer than its header says, or a damaged archive; refusing")
            except (tarfile.TarError, OSError, EOFError) as e:
                raise DownloadError(f"{name}: damaged tar archive ({e})") from None
        finally:
            tf.close()
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
            self.refuse_replacing(where, m.filename, self.key(base, m), m.file_size, m.CRC)

    def refuse_replacing(self, where: str, member: str, key: str, size: int, crc: int | None) -> None:
        """A DownloadError when `key` belongs to another archive extracted into the prefix and this member's bytes
        differ (its size, and its CRC-32 when known): an archive may only write its own objects."""
        owner = self.owners.get(key)
        if owner is not None and (owner[1] != size or (crc is not None and owner[2] != f"{crc:08x}")):
            raise DownloadError(f"{where}: member {member!r} would replace {key}, which {owner[0]} stored with other "
                                "content; refusing (an archive may only write its own objects, or the very same "
                                "bytes)")

    def list_existing(self, names) -> None:
        """The objects already there (an interrupted extraction), listing only the folders the members go into."""
        for top in sorted({n.split("/", 1)[0] for n in names}):
            self.existing.update((i.key, i) for i in self.store.list(f"{self.prefix}/{top}"))

    def one(self, info: zipfile.ZipInfo, source: zipfile.ZipFile, base: str) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("interrupted")
        key = self.key(base, info)
        t = time.perf_counter()
        if info.file_size <= PART_SIZE * 4:
            with source.open(info) as f:
                data = f.read()  # zipfile checks the CRC at the end of the member
            skipped = self.put(key, data)
        else:  # large member (e.g. instances_train2017.json): stream it, multipart on S3
            with source.open(info) as f:
                self.store.put_stream(key, _Cancellable(f, self.cancel), size=info.file_size)
            skipped = False
        self.done(key, info.file_size, info.CRC, skipped, info.compress_size, t)

    def put(self, key: str, data: bytes) -> bool:
        """Store one member's bytes; True when the very same object is already there (skipped)."""
        have = self.existing.get(key)
        if have is not None and have.size == len(data) and self.store.checksum(have) == etag_of_bytes(data):
            return True
        self.store.put_bytes(key, data)
        return False

    def done(self, key: str, size: int, crc: int, skipped: bool, archive_bytes: int, t: float) -> None:
        with self.lock:
            self.members_out.append({"key": key, "size": size, "crc": f"{crc:08x}"})
            self.report.skipped += skipped
            self.report.stored += not skipped
            self.report.bytes += 0 if skipped else size
            if self.progress is not None:
                self.progress.extracted += archive_bytes
                self.progress.extract_seconds += time.perf_counter() - t
            if self.pbar is not None:
                self.pbar.update(archive_bytes)

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
            self.list_existing(m.filename for m in members)
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


class _Crc:
    """A member stream that keeps the CRC-32 of what was read (a tar member's, for the manifest)."""

    def __init__(self, f, cancel: threading.Event | None):
        self.f, self.cancel, self.crc, self.n = f, cancel, 0, 0

    def read(self, n: int = -1) -> bytes:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("interrupted")
        b = self.f.read(n)
        self.crc = zlib.crc32(b, self.crc)
        self.n += len(b)
        return b


class _TarExtraction(_Extraction):
    """One tar (plain or compressed) into the store: every header checked first (check_tar), then one sequential
    pass that reads each member and hands it to the upload threads (at most a window of members in memory; a large
    member streamed), then the manifest. No extracted copy on local disk."""

    def run(self, zip_info: dict | None) -> ExtractReport:
        t0 = time.perf_counter()
        members = check_tar(self.zip_path, self.name)
        self.owners = owned_keys(self.store, self.prefix, self.name)
        for m in members:  # sizes now; CRCs (no tar header has one) as each member is read
            self.refuse_replacing(self.name, m.name, f"{self.prefix}/{m.name}", m.size, None)
        self.list_existing(m.name for m in members)
        self.report.members = len(members)
        if self.bar:
            from tqdm import tqdm

            self.pbar = tqdm(total=self.zip_path.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024,
                             desc=f"extract {self.name}", dynamic_ncols=True, position=1, leave=False)
        try:
            with open(self.zip_path, "rb") as raw:
                tf = _tar_open(raw, self.name)
                try:
                    run_all(lambda item: self.tar_one(*item), self._read(tf, raw, members), self.jobs, self.cancel)
                finally:
                    tf.close()
        finally:
            if self.pbar is not None:
                self.pbar.close()
        return self.finish(zip_info, t0)

    def _read(self, tf, raw, members):
        """(member, bytes, archive bytes read for it, start time) of each checked member, in archive order; large
        members are streamed into the store here and yield nothing."""
        import tarfile

        wanted = iter(members)
        last = raw.tell()
        for m in _next_members(tf, self.name):
            if self.cancel is not None and self.cancel.is_set():
                raise Cancelled("interrupted")
            if not m.isreg():
                continue
            want = next(wanted, None)
            if want is None or (want.name, want.size) != (m.name, m.size):
                raise DownloadError(f"{self.name}: the archive changed while it was extracted (member {m.name!r})")
            t = time.perf_counter()
            f = tf.extractfile(m)
            key = f"{self.prefix}/{m.name}"
            try:
                if m.size <= PART_SIZE * 4 or key in self.owners:
                    data = f.read()
                    if len(data) != m.size:
                        raise DownloadError(f"{self.name}: member {m.name!r} is truncated")
                    pos = raw.tell()
                    yield m, data, pos - last, t
                    last = pos
                else:
                    src = _Crc(f, self.cancel)
                    self.store.put_stream(key, src, size=m.size)
                    if src.n != m.size:
                        raise DownloadError(f"{self.name}: member {m.name!r} is truncated")
                    pos = raw.tell()
                    self.done(key, m.size, src.crc, False, pos - last, t)
                    last = pos
            except (tarfile.TarError, EOFError) as e:
                raise DownloadError(f"{self.name}: damaged tar archive at {m.name!r} ({e})") from None
        if next(wanted, None) is not None:
            raise DownloadError(f"{self.name}: the archive changed while it was extracted (members missing)")

    def tar_one(self, m, data: bytes, archive_bytes: int, t: float) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("interrupted")
        key = f"{self.prefix}/{m.name}"
        crc = zlib.crc32(data)
        self.refuse_replacing(self.name, m.name, key, m.size, crc)
        self.done(key, m.size, crc, self.put(key, data), archive_bytes, t)


class _FileExtraction(_Extraction):
    """A download that is not an archive (a split list, a README): stored as one object, prefix/<name>."""

    def run(self, zip_info: dict | None) -> ExtractReport:
        t0 = time.perf_counter()
        check_file_name(self.name, check_name(self.name, self.name), self.name)
        data = self.zip_path.read_bytes()
        key = f"{self.prefix}/{self.name}"
        self.existing = {i.key: i for i in self.store.list(key) if i.key == key}
        self.report.members = 1
        self.done(key, len(data), zlib.crc32(data), self.put(key, data), len(data), t0)
        return self.finish(zip_info, t0)


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
    """Stream every member of an archive (zip, tar, tar.gz/.tgz, .tbz2, .txz) into store under
    prefix/<member path>; nested zips are extracted in place; a file that is no archive is stored as
    prefix/<its name>. Setting `cancel` stops it within seconds: pending uploads are cancelled, a multipart
    upload is aborted."""
    zip_path = Path(zip_path)
    name = manifest_name or zip_path.name
    kind = archive_kind(zip_path, name)
    cls = {"zip": _Extraction, "tar": _TarExtraction, "file": _FileExtraction}[kind]
    return cls(zip_path, store, prefix.strip("/"), name, jobs, workdir, progress, bar, cancel).run(zip_info)
