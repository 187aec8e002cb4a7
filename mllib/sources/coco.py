"""type "coco": images + instance (and stuff) annotation JSON in COCO's format; labels rendered by mllib.labels.

    {"type": "coco", "jsonpath": "annotations/instances_val2017.json", "imagepath": "val2017", "set": "val",
     "stuffpath": "annotations/stuff_val2017.json"}      # stuffpath optional

Items in the annotation file's image order; an image's label is rendered from its annotations through the class
dictionary (category ids are the dictionary's ids), stuff first, things by decreasing area.
"""

from __future__ import annotations

import numpy as np

from mllib.labels import classes as mclasses
from mllib.labels.cocoindex import KIND_BAD, CocoIndex
from mllib.labels.render import Renderer
from mllib.sources.base import SizeMismatch, Source, Spec, register
from mllib.store import Store


@register
class CocoSource(Source):
    type = "coco"
    required = ("jsonpath", "imagepath")

    def __init__(self, store: Store, spec: Spec, classes: mclasses.ClassDictionary, crowd: str = "class"):
        super().__init__(store, spec, classes)
        self.index = CocoIndex.load(store, spec.key(spec.jsonpath))
        self.stuff = CocoIndex.load(store, spec.key(spec.stuffpath)) if spec.stuffpath else None
        self.renderer = Renderer(classes, crowd)
        self.image_prefix = spec.key(spec.imagepath)

    def __len__(self) -> int:
        return self.index.images

    def item(self, row: int) -> tuple[str, str, str]:
        key = f"{self.image_prefix}/{self.spec.name_decoration}{self.index.file_name(row)}"
        sid = str(int(self.index.image_id[row]))
        return key, sid, f"image {sid} ({key})"

    def size(self, row: int) -> tuple[int, int]:
        return self.index.size(row)

    def label(self, row: int, h: int, w: int, where: str, fetched: dict | None = None) -> np.ndarray:
        idx = self.index
        if (h, w) != idx.size(row):
            raise SizeMismatch(f"{where}: image is {h}x{w} but the annotation file says "
                             f"{idx.size(row)[0]}x{idx.size(row)[1]}")
        srow = self.stuff.row_of(int(idx.image_id[row])) if self.stuff is not None else None
        return self.renderer.render(idx, row, self.stuff, srow, where)

    def inspect(self, row: int, fetched: dict, hw: tuple[int, int] | None) -> dict:
        """Unmapped values are the category ids of the image's annotations that the dictionary does not list (their
        pixels: the annotations' areas); the label is rendered from the rest."""
        where = self.item(row)[2]
        bad: dict[int, int] = {}
        for idx, r in ((self.index, row), (self.stuff, self._stuff_row(row))):
            if idx is None or r is None:
                continue
            for a in idx.annotations(r):
                cat = int(idx.category[a])
                if idx.kind[a] != KIND_BAD and not (0 <= cat < 256 and self.renderer.known[cat]) and cat != 183:
                    bad[cat] = bad.get(cat, 0) + int(round(float(idx.area[a])))
        if bad:
            return {"values": bad, "train": None, "binary": False}
        label = self.label(row, *(hw or self.index.size(row)), where)
        return {"values": {}, "train": np.bincount(label.ravel(), minlength=256), "binary": False}

    def _stuff_row(self, row: int) -> int | None:
        return self.stuff.row_of(int(self.index.image_id[row])) if self.stuff is not None else None

    def identity(self) -> bytes:
        return np.ascontiguousarray(self.index.image_id).tobytes()

    def describe(self) -> str:
        return f"coco source {self.store.url_for(self.spec.key(self.spec.jsonpath))}"
