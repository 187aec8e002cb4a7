"""The per-process Worker of a conversion: one source per entry (mllib.sources, any type), and the per-item work
that turns an item into a record.

A Worker holds one source per entry of the conversion and makes (record, pixel counts, None), or
(None, None, {"key", "reason"}) for a skipped item: a missing or corrupt image always; a bad label (a bad
annotation, unmapped values, a size that differs from the image's, a missing label) with skip_bad, else it raises
naming the file.
"""

from __future__ import annotations

import threading

import numpy as np

from mllib import images
from mllib import sources as msources
from mllib.labels import render as labels
from mllib.records import schema, tfrecord
from mllib.sources import Source, Spec
from mllib.sources.base import get_or_none

Entry = Spec  # the seed's name for one entry of --datasets


class Worker:
    """Per-process state of a conversion: the sources (indexes and listings loaded once), and the per-item work."""

    def __init__(self, store, entries: list[Spec], main_classes, crowd: str, skip_bad: bool,
                 preloaded: dict[int, Source] | None = None):
        self.store, self.entries, self.crowd, self.skip_bad = store, entries, crowd, skip_bad
        self.classes = msources.set_classes(store, entries, main_classes)
        self._sources: dict[int, Source] = dict(preloaded or {})  # sources another process opened (shippable())
        self._lock = threading.Lock()  # the read-ahead threads ask for sources too: each is loaded once
        self._loading: dict[int, threading.Lock] = {}  # one lock per source: several load at once (open_all)

    def source(self, k: int) -> Source:
        src = self._sources.get(k)
        if src is None:
            with self._lock:
                lock = self._loading.setdefault(k, threading.Lock())
            with lock:
                if k not in self._sources:
                    e = self.entries[k]
                    d = msources.entry_classes(self.store, e, self.classes)
                    opened = msources.get(e.type)(self.store, e, d, crowd=self.crowd)
                    with self._lock:
                        self._sources[k] = opened
                src = self._sources[k]
        return src

    def open_all(self) -> list[Source]:
        """Every entry's source, the entries' listings and indexes read at once (mostly waits on the store's
        pages); the first error is raised."""
        n = len(self.entries)
        if n <= 1:
            return [self.source(k) for k in range(n)]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(n, 8), thread_name_prefix="mllib-open") as pool:
            return list(pool.map(self.source, range(n)))

    def items(self, k: int) -> int:
        return len(self.source(k))

    def shippable(self) -> dict[int, Source]:
        """The opened sources that are cheaper to send to another process than to open there (a folder's listing:
        ~0.2 ms a key through S3 LIST in each process, vs pickled lists), by entry."""
        with self._lock:
            return {k: s for k, s in self._sources.items() if s.shippable}

    def release(self) -> None:
        """Drop the loaded sources (their indexes); a later call loads them again."""
        with self._lock:
            self._sources.clear()

    def fetch(self, k: int, row: int) -> dict:
        """What example(k, row) reads from the store, read now (a conversion worker reads items ahead)."""
        return self.source(k).fetch(row)

    def example(self, k: int, row: int, fetched: dict | None = None
                ) -> tuple[bytes | None, np.ndarray | None, dict | None]:
        """(record, label pixel counts, None) or (None, None, {"key", "reason"}) for a skipped item; `fetched` is
        fetch(k, row)'s result when it was read ahead."""
        src = self.source(k)
        img_key, source_id, where = src.item(row)
        data = fetched["image"] if fetched is not None else get_or_none(self.store, img_key)
        if data is None:
            return None, None, {"key": img_key, "reason": "image missing from the store"}
        try:
            img, fmt, h, w = images.uniform_rgb(data)
        except images.ImageError as err:
            return None, None, {"key": img_key, "reason": f"corrupt image: {err}"}
        try:
            label, counts = src.label_counts(row, h, w, where, fetched)
        except (labels.LabelError, images.ImageError) as err:
            if not self.skip_bad:
                raise
            return None, None, {"key": img_key, "reason": str(err)}
        rec = tfrecord.encode_example(schema.example(
            image=img, fmt=fmt, height=h, width=w, label_png=images.encode_label_png(label),
            classes=(counts[: self.classes.classes] > 0).astype(np.float32).tolist(),
            filename=img_key.rsplit("/", 1)[-1], source_id=source_id))
        return rec, counts, None
