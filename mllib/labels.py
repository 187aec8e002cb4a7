"""Label images from COCO annotations: the one renderer that cocorecord, CocoDataset and training reuse.

A label is uint8 HxW of trainIds from the class dictionary's lookup table (255 = ignore). Masks are exactly
pycocotools' (`frPyObjects` / `merge` / `decode`, the pixels of `COCO.annToMask`) for polygons, compressed RLE
and uncompressed (crowd) RLE. Draw order: stuff annotations first (COCO-stuff category 183 "other" marks thing
pixels and paints nothing), then thing annotations by decreasing area, so small objects stay on top. Crowd
regions get their class (crowd="class") or 255 (crowd="ignore").
"""

from __future__ import annotations

import numpy as np

from mllib import MllibError
from mllib.classes import ClassDictionary
from mllib.cocoindex import KIND_POLY, CocoIndex

STUFF_OTHER = 183


class LabelError(MllibError):
    """A bad annotation: names the image and the annotation id."""


class Renderer:
    def __init__(self, classes: ClassDictionary, crowd: str = "class"):
        if crowd not in ("class", "ignore"):
            raise MllibError(f"crowd policy must be 'class' or 'ignore', got {crowd!r}")
        self.classes = classes
        self.crowd = crowd
        self.lut = classes.lut
        self.known = np.zeros(256, dtype=bool)
        for o in classes.objects:
            self.known[o.id] = True
        self.fill = int(self.lut[0]) if self.known[0] else classes.background  # pixels no annotation covers

    def mask(self, index: CocoIndex, a: int, h: int, w: int, where: str) -> np.ndarray:
        """The annotation's binary mask (uint8 HxW), as COCO.annToMask computes it."""
        from pycocotools import mask as maskutil

        seg = index.segmentation(a)
        aid = int(index.ann_id[a])
        if index.kind[a] == KIND_POLY:
            if not seg:
                raise LabelError(f"{where}, annotation {aid}: empty polygon list")
            for poly in seg:
                if len(poly) < 6 or len(poly) % 2:
                    raise LabelError(f"{where}, annotation {aid}: polygon with {len(poly) // 2} points (needs >= 3)")
            rle = maskutil.merge(maskutil.frPyObjects(seg, h, w))
        else:
            if tuple(seg["size"]) != (h, w):
                raise LabelError(f"{where}, annotation {aid}: RLE size {seg['size']} differs from the image's [{h}, {w}]")
            rle = seg
        return maskutil.decode(rle)

    def render(self, things: CocoIndex, i: int, stuff: CocoIndex | None = None, stuff_row: int | None = None,
               where: str | None = None) -> np.ndarray:
        """Label of image row i of `things` (and row stuff_row of `stuff`, the same image, when given)."""
        h, w = things.size(i)
        where = where or f"image {int(things.image_id[i])} ({things.file_name(i)})"
        label = np.full((h, w), self.fill, dtype=np.uint8)
        if stuff is not None and stuff_row is not None:
            for a in stuff.annotations(stuff_row):
                cat = int(stuff.category[a])
                if cat == STUFF_OTHER:
                    continue
                self._check_category(cat, where, int(stuff.ann_id[a]))
                m = self.mask(stuff, a, h, w, where)
                label[m.astype(bool)] = self.lut[cat]
        anns = list(things.annotations(i))
        # decreasing area; ties keep file order (stable)
        anns.sort(key=lambda a: -float(things.area[a]))
        for a in anns:
            cat = int(things.category[a])
            self._check_category(cat, where, int(things.ann_id[a]))
            m = self.mask(things, a, h, w, where)
            value = self.classes.ignore if (things.iscrowd[a] and self.crowd == "ignore") else self.lut[cat]
            label[m.astype(bool)] = value
        return label

    def _check_category(self, cat: int, where: str, aid: int) -> None:
        if not (0 <= cat < 256 and self.known[cat]):
            raise LabelError(
                f"{where}, annotation {aid}: category {cat} is not in class dictionary {self.classes.name}"
            )


def presence(label: np.ndarray, classes: int) -> np.ndarray:
    """Float vector of length `classes`: 1 where that trainId occurs in the label."""
    counts = np.bincount(label.ravel(), minlength=256)
    return (counts[:classes] > 0).astype(np.float32)


def pixel_counts(label: np.ndarray) -> np.ndarray:
    return np.bincount(label.ravel(), minlength=256).astype(np.int64)
