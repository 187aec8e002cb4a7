"""Where a training set's items come from: one source per dataset type, and the per-process Worker that turns
an item into a record.

    CocoSource        images + instance (and stuff) annotations, labels rendered by mllib.labels
    CityscapesSource  *_leftImg8bit.png images + *_gtFine_labelIds.png labels, mapped through a class dictionary

A Worker holds one source per entry of the conversion and makes (record, pixel counts, None), or
(None, None, {"key", "reason"}) for a skipped item: a missing or corrupt image always, a bad annotation with
skip_bad (else it raises, naming image and annotation).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from mllib import images, layout
from mllib.labels import classes
from mllib.labels import render as labels
from mllib.labels.cocoindex import CocoIndex
from mllib.records import schema, tfrecord
from mllib.store import NotFound, Store


@dataclass
class Entry:
    """One source of a set: the seed's {jsonpath, imagepath, name_decoration, set} plus extensions."""

    jsonpath: str = ""
    imagepath: str = ""
    set: str = "train"
    name_decoration: str = ""
    stuffpath: str | None = None
    dataset: str = "coco"
    classes_file: str | None = None
    type: str = "coco"
    labelpath: str | None = None

    def key(self, path: str) -> str:
        path = path.strip("/")
        return path if path.startswith(layout.DATASETS + "/") else f"{layout.dataset(self.dataset)}/{path}"


class MissingLabel(labels.LabelError):
    """A label image that is not in the store: the item is skipped (and listed), as a missing image is."""


class CocoSource:
    def __init__(self, store: Store, e: Entry, dictionary: classes.ClassDictionary, crowd: str):
        self.store, self.e = store, e
        self.things = CocoIndex.load(store, e.key(e.jsonpath))
        self.stuff = CocoIndex.load(store, e.key(e.stuffpath)) if e.stuffpath else None
        self.renderer = labels.Renderer(dictionary, crowd)

    def items(self) -> int:
        return self.things.images

    def item(self, row: int) -> tuple[str, str, str]:
        """(image key, source id, how errors name it)."""
        key = f"{self.e.key(self.e.imagepath)}/{self.e.name_decoration}{self.things.file_name(row)}"
        sid = str(int(self.things.image_id[row]))
        return key, sid, f"image {sid} ({key})"

    def fetch(self, row: int) -> dict:
        """The item's bytes from the store (None for a missing object); what example() reads, fetched ahead."""
        return {"image": _get(self.store, self.item(row)[0])}

    def label(self, row: int, h: int, w: int, where: str, fetched: dict | None = None) -> np.ndarray:
        idx = self.things
        if (h, w) != idx.size(row):
            raise labels.LabelError(f"{where}: image is {h}x{w} but the annotation file says "
                                    f"{idx.size(row)[0]}x{idx.size(row)[1]}")
        srow = self.stuff.row_of(int(idx.image_id[row])) if self.stuff is not None else None
        return self.renderer.render(idx, row, self.stuff, srow, where)


class CityscapesSource:
    def __init__(self, store: Store, e: Entry, dictionary: classes.ClassDictionary):
        self.store, self.e, self.lut = store, e, dictionary.lut
        pre = e.key(e.imagepath) + "/"
        self.keys = sorted(i.key for i in store.list(pre) if i.key.endswith("_leftImg8bit.png"))

    def items(self) -> int:
        return len(self.keys)

    def item(self, row: int) -> tuple[str, str, str]:
        key = self.keys[row]
        sid = key[len(self.e.key(self.e.imagepath)) :].strip("/").rsplit("/", 1)[-1].replace("_leftImg8bit.png", "")
        return key, sid, key

    def label_key(self, row: int) -> str:
        rel = self.keys[row][len(self.e.key(self.e.imagepath)) :]
        return self.e.key(self.e.labelpath) + rel.replace("_leftImg8bit.png", "_gtFine_labelIds.png")

    def fetch(self, row: int) -> dict:
        return {"image": _get(self.store, self.keys[row]), "label": _get(self.store, self.label_key(row))}

    def label(self, row: int, h: int, w: int, where: str, fetched: dict | None = None) -> np.ndarray:
        lab_key = self.label_key(row)
        data = fetched["label"] if fetched is not None else _get(self.store, lab_key)
        if data is None:
            raise MissingLabel(f"{lab_key}: label image missing from the store")
        ids = images.decode(data, flags=images.cv2.IMREAD_UNCHANGED)
        if ids.ndim != 2 or ids.shape != (h, w):
            raise labels.LabelError(f"{lab_key}: label shape {ids.shape} differs from the image's {(h, w)}")
        return self.lut[ids]


class Worker:
    """Per-process state of a conversion: the sources (indexes loaded once), and the per-item work."""

    def __init__(self, store: Store, entries: list[Entry], main_classes: str, crowd: str, skip_bad: bool):
        self.store, self.entries, self.crowd, self.skip_bad = store, entries, crowd, skip_bad
        self.classes = classes.load(main_classes)
        self._sources: dict[int, CocoSource | CityscapesSource] = {}
        self._lock = threading.Lock()  # the read-ahead threads ask for sources too: each is loaded once

    def entry_classes(self, k: int) -> classes.ClassDictionary:
        e = self.entries[k]
        name = e.classes_file or ("cityscapes_coco" if e.type == "cityscapes" else None)
        return classes.load(name) if name else self.classes

    def source(self, k: int) -> CocoSource | CityscapesSource:
        src = self._sources.get(k)
        if src is None:
            with self._lock:
                if k not in self._sources:
                    e = self.entries[k]
                    self._sources[k] = CityscapesSource(self.store, e, self.entry_classes(k)) \
                        if e.type == "cityscapes" else CocoSource(self.store, e, self.entry_classes(k), self.crowd)
                src = self._sources[k]
        return src

    def items(self, k: int) -> int:
        return self.source(k).items()

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
        data = fetched["image"] if fetched is not None else _get(self.store, img_key)
        if data is None:
            return None, None, {"key": img_key, "reason": "image missing from the store"}
        try:
            img, fmt, h, w = images.uniform_rgb(data)
        except images.ImageError as err:
            return None, None, {"key": img_key, "reason": f"corrupt image: {err}"}
        try:
            label = src.label(row, h, w, where, fetched)
        except (labels.LabelError, images.ImageError) as err:
            if not self.skip_bad and not isinstance(err, MissingLabel):
                raise
            return None, None, {"key": img_key, "reason": str(err)}
        counts = labels.pixel_counts(label)
        rec = tfrecord.encode_example(schema.example(
            image=img, fmt=fmt, height=h, width=w, label_png=images.encode_label_png(label),
            classes=(counts[: self.classes.classes] > 0).astype(np.float32).tolist(),
            filename=img_key.rsplit("/", 1)[-1], source_id=source_id))
        return rec, counts, None


def _get(store: Store, key: str) -> bytes | None:
    """An object's bytes, or None when it is not in the store (the item is then skipped and listed)."""
    try:
        return store.get_bytes(key)
    except NotFound:
        return None
