"""Overlapping a store's latency with work: reads issued ahead of their use, and an object uploaded while it is
being written.

    for item, data in read_ahead(fetch, items, depth=16):     # fetch(item) for the next 16 items in flight
        use(item, data)                                        # in the items' order

    with StreamingPut(store, "trainingsets/coco/train-00000-of-00119.tfrecord") as out:
        out.write(record)                                      # uploaded part by part while the rest is made
                                                               # the object exists, whole, when the block ends

Both are bounded (depth items, `limit` bytes buffered) and leave no thread behind: leaving a read_ahead loop early
cancels what has not started and waits for what has; a StreamingPut whose block raises aborts the upload (a
multipart upload is aborted, a local temporary file removed), so no partial object ever has the final name.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

from mllib.store.base import PART_SIZE, Store, StoreError


def read_ahead(fetch: Callable, items: Iterable, depth: int) -> Iterator[tuple]:
    """(item, fetch(item)) in the items' order, with fetch running for up to `depth` items ahead on a thread pool.
    An exception from fetch is raised at its item's turn. depth <= 1: fetch(item) in turn, no thread."""
    if depth <= 1:
        for item in items:
            yield item, fetch(item)
        return
    it = iter(items)
    with ThreadPoolExecutor(depth, thread_name_prefix="mllib-ahead") as pool:
        window = deque((item, pool.submit(fetch, item)) for item in itertools.islice(it, depth))
        try:
            while window:
                item, future = window.popleft()
                for nxt in itertools.islice(it, 1):
                    window.append((nxt, pool.submit(fetch, nxt)))
                yield item, future.result()
        finally:
            for _, future in window:
                future.cancel()


class _Aborted(StoreError):
    pass


class _Pipe:
    """Bytes from one thread to another (the uploader's reads), at most `limit` of them buffered."""

    def __init__(self, limit: int):
        self.limit = limit
        self.buf = bytearray()
        self.cv = threading.Condition()
        self.closed = False
        self.error: BaseException | None = None  # the writer failed: the reader raises it (the upload aborts)
        self.gone = False  # the reader failed: the writer stops

    def write(self, data: bytes) -> None:
        with self.cv:
            while len(self.buf) >= self.limit and not self.gone:
                self.cv.wait()
            if self.gone:
                raise _Aborted("the upload stopped")
            self.buf += data
            self.cv.notify_all()

    def read(self, n: int = -1) -> bytes:
        with self.cv:
            while not self.buf and not self.closed and self.error is None:
                self.cv.wait()
            if self.error is not None:
                raise self.error
            n = len(self.buf) if n is None or n < 0 else n
            out = bytes(self.buf[:n])
            del self.buf[:n]
            self.cv.notify_all()
            return out

    def finish(self, error: BaseException | None = None) -> None:
        with self.cv:
            self.closed = True
            self.error = error
            self.cv.notify_all()

    def reader_failed(self) -> None:
        with self.cv:
            self.gone = True
            self.cv.notify_all()


class StreamingPut:
    """Write an object into the store while its upload runs (Store.put_stream in a thread, parts sent as they
    fill); the object exists, whole, when the with-block ends without an error, and not at all otherwise."""

    def __init__(self, store: Store, key: str, limit: int = 2 * PART_SIZE):
        self.store, self.key = store, key
        self.pipe = _Pipe(limit)
        self.size = 0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._upload, name="mllib-streaming-put", daemon=True)

    def _upload(self) -> None:
        try:
            self.store.put_stream(self.key, self.pipe)
        except BaseException as e:  # noqa: BLE001 - handed to the writing thread, which raises it
            self._error = e
            self.pipe.reader_failed()

    def __enter__(self) -> StreamingPut:
        self._thread.start()
        return self

    def write(self, data: bytes) -> None:
        try:
            self.pipe.write(data)
        except _Aborted:
            self._thread.join()
            raise self._error from None
        self.size += len(data)

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.pipe.finish(None if exc is None else _Aborted(f"not stored: {exc_type.__name__}"))
        self._thread.join()
        if exc is None and self._error is not None:
            raise self._error
        return False
