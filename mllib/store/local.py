"""The local-directory backend: keys are files below a root folder, written atomically and durably.

Every write goes to a hidden temporary file in the target folder, is fsynced, renamed into place and the folder
fsynced (mllib.atomic), so a reader sees the old object or the whole new one, also after a power loss.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from mllib.atomic import TMP_MARK, atomic_write, is_full, no_space
from mllib.store.base import CHUNK, NotFound, ObjectInfo, Store, StoreError, clean_key, etag_of_file


class LocalStore(Store):
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create local store directory {self.root}: {e.strerror}") from None
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / clean_key(key)

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

    def get_head(self, key: str, n: int) -> bytes:
        with self.open(key) as f:
            return f.read(n)

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound(f"{self.url_for(key)} does not exist") from None

    def put_stream(self, key: str, stream: BinaryIO, size: int | None = None) -> None:
        written = 0
        try:
            with atomic_write(self._path(key)) as f:  # fsync file, rename, fsync folder
                for chunk in iter(lambda: stream.read(CHUNK), b""):
                    f.write(chunk)
                    written += len(chunk)
        except OSError as e:  # the temporary file is gone, the object under its name unchanged
            if is_full(e):
                raise StoreError(f"writing {self.url_for(key)}: " + no_space(self.root, size or written)) from None
            raise

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        with open(path, "rb") as f:
            self.put_stream(key, f)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        if str(prefix).strip("/"):
            clean_key(prefix)  # as S3Store: no '..' or '.' that would walk out of the store's folder
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
        return LocalStore(self.root / clean_key(bucket))

    def local_path(self, key: str = "") -> Path | None:
        return self._path(key) if key else self.root

    def checksum(self, info: ObjectInfo) -> str:
        return etag_of_file(self._path(info.key))

    def version(self, info: ObjectInfo) -> str:
        st = self._path(info.key).stat()
        return f"{st.st_size}-{st.st_mtime_ns}-{st.st_ino}"
