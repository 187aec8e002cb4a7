"""Stage 2, the store: one object-store API keyed by URL, over S3 (boto3) and local directories.

    >>> from mllib import store
    >>> s = store.connect("s3://coco")          # or "/data/store", or None for $MLLIB_STORE / ./store
    >>> s.put_bytes("datasets/coco/hello.txt", b"hi")
    >>> s.get_bytes("datasets/coco/hello.txt")
    b'hi'

(From the shell: python3 -m mllib.storecli, mllib/storecli.py.) Keys are '/'-separated paths below the store's root (the bucket plus an optional prefix, or a directory).
Writes are atomic on both backends, so a reader never sees a partial object under its final name.

    base.py     the Store interface, errors, ETags, put_dir / get_dir, run_all
    local.py    LocalStore: files below a folder, atomic and fsynced (mllib/atomic.py)
    s3.py       S3Store: boto3, one error translation; fastput.py: the small-object PUT fast path
    streams.py  read_ahead (fetches in flight ahead of their use), StreamingPut (an object uploaded as it is written)
"""

from __future__ import annotations

import os

from mllib.atomic import TMP_MARK
from mllib.store.base import (
    CHUNK,
    DEFAULT_STORE,
    PART_SIZE,
    Cancelled,
    NotFound,
    ObjectInfo,
    Store,
    StoreError,
    StoreUnavailable,
    TransferReport,
    default_url,
    etag_of_bytes,
    etag_of_file,
    run_all,
)
from mllib.store.local import LocalStore
from mllib.store.s3 import S3Store

__all__ = ["CHUNK", "DEFAULT_STORE", "PART_SIZE", "TMP_MARK", "Cancelled", "LocalStore", "NotFound", "ObjectInfo",
           "S3Store", "Store", "StoreError", "StoreUnavailable", "TransferReport", "connect", "default_url", "etag_of_bytes",
           "etag_of_file", "run_all"]


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
