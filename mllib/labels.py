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

        return maskutil.decode(self.rle(index, a, h, w, where))

    def rle(self, index: CocoIndex, a: int, h: int, w: int, where: str) -> dict:
        """The annotation's compressed RLE, as COCO.annToRLE computes it (polygons merged)."""
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
        return rle

    def render(self, things: CocoIndex, i: int, stuff: CocoIndex | None = None, stuff_row: int | None = None,
               where: str | None = None) -> np.ndarray:
        """Label of image row i of `things` (and row stuff_row of `stuff`, the same image, when given)."""
        h, w = things.size(i)
        where = where or f"image {int(things.image_id[i])} ({things.file_name(i)})"
        # painted in COCO's column-major pixel order straight from the RLE runs (no full-image mask per object)
        flat = np.full(h * w, self.fill, dtype=np.uint8)
        if stuff is not None and stuff_row is not None:
            for a in stuff.annotations(stuff_row):
                cat = int(stuff.category[a])
                if cat == STUFF_OTHER:
                    continue
                self._check_category(cat, where, int(stuff.ann_id[a]))
                paint_rle(flat, self.rle(stuff, a, h, w, where)["counts"], self.lut[cat])
        anns = list(things.annotations(i))
        # decreasing area; ties keep file order (stable)
        anns.sort(key=lambda a: -float(things.area[a]))
        for a in anns:
            cat = int(things.category[a])
            self._check_category(cat, where, int(things.ann_id[a]))
            value = self.classes.ignore if (things.iscrowd[a] and self.crowd == "ignore") else self.lut[cat]
            paint_rle(flat, self.rle(things, a, h, w, where)["counts"], value)
        return np.ascontiguousarray(flat.reshape(w, h).T)

    def _check_category(self, cat: int, where: str, aid: int) -> None:
        if not (0 <= cat < 256 and self.known[cat]):
            raise LabelError(
                f"{where}, annotation {aid}: category {cat} is not in class dictionary {self.classes.name}"
            )


def rle_counts(counts: bytes | str) -> np.ndarray:
    """Run lengths of COCO's compressed RLE string (pycocotools rleFrString, vectorized)."""
    if isinstance(counts, str):
        counts = counts.encode()
    c = np.frombuffer(counts, dtype=np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, np.int64)
    last = (c & 0x20) == 0  # the last character of each number
    starts = np.flatnonzero(np.concatenate(([True], last[:-1])))
    k = np.arange(c.size) - np.repeat(starts, np.diff(np.append(starts, c.size)))
    x = np.add.reduceat((c & 0x1F) << (5 * k), starts)
    ends = np.flatnonzero(last)
    negative = (c[ends] & 0x10) != 0
    x = x - np.where(negative, np.left_shift(1, 5 * (k[ends] + 1)), 0)
    # numbers from the fourth on are deltas against the number two places back
    out = x.copy()
    if out.size > 3:
        out[2::2] = np.cumsum(x[2::2])
        out[1::2] = np.cumsum(x[1::2])
    return out


def paint_rle(flat: np.ndarray, counts: bytes | str, value: int) -> None:
    """Set value where the RLE mask is 1; flat is the label in column-major order (length h*w)."""
    runs = rle_counts(counts)
    if runs.size < 2:
        return
    n_ones = runs.size // 2  # runs alternate 0,1,0,1,...; the last 1-run is runs[2 * n_ones - 1]
    inner = runs[1 : 2 * n_ones]
    start = int(runs[0])
    end = start + int(inner.sum())
    ones = np.repeat((np.arange(inner.size) % 2) == 0, inner)
    np.copyto(flat[start:end], np.uint8(value), where=ones)


def presence(label: np.ndarray, classes: int) -> np.ndarray:
    """Float vector of length `classes`: 1 where that trainId occurs in the label."""
    counts = np.bincount(label.ravel(), minlength=256)
    return (counts[:classes] > 0).astype(np.float32)


def pixel_counts(label: np.ndarray) -> np.ndarray:
    return np.bincount(label.ravel(), minlength=256).astype(np.int64)
