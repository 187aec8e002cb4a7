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
from mllib.labels.classes import ClassDictionary
from mllib.labels.cocoindex import KIND_BAD, KIND_POLY, CocoIndex

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

        aid = int(index.ann_id[a])
        if index.kind[a] == KIND_BAD:
            raise LabelError(f"{where}, annotation {aid}: {index.bad.get(str(a), 'malformed')}")
        seg = index.segmentation(a)
        if index.kind[a] == KIND_POLY:
            if not seg:
                raise LabelError(f"{where}, annotation {aid}: empty polygon list")
            for poly in seg:
                if len(poly) < 6 or len(poly) % 2:
                    raise LabelError(f"{where}, annotation {aid}: polygon with {len(poly) // 2} points (needs >= 3)")
            rles = maskutil.frPyObjects(seg, h, w)
            rle = rles[0] if len(rles) == 1 else maskutil.merge(rles)
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
        strings: list[bytes] = []
        values: list[int] = []
        aids: list[int] = []
        if stuff is not None and stuff_row is not None:
            for a in stuff.annotations(stuff_row):
                cat = int(stuff.category[a])
                if stuff.kind[a] == KIND_BAD:
                    self.rle(stuff, a, h, w, where)  # raises, naming the annotation and what is wrong
                if cat == STUFF_OTHER:
                    continue
                self._check_category(cat, where, int(stuff.ann_id[a]))
                strings.append(self.rle(stuff, a, h, w, where)["counts"])
                values.append(int(self.lut[cat]))
                aids.append(int(stuff.ann_id[a]))
        anns = list(things.annotations(i))
        # decreasing area; ties keep file order (stable)
        anns.sort(key=lambda a: -float(things.area[a]))
        for a in anns:
            cat = int(things.category[a])
            if things.kind[a] == KIND_BAD:
                self.rle(things, a, h, w, where)  # raises, naming the annotation and what is wrong
            self._check_category(cat, where, int(things.ann_id[a]))
            strings.append(self.rle(things, a, h, w, where)["counts"])
            values.append(self.classes.ignore if (things.iscrowd[a] and self.crowd == "ignore") else int(self.lut[cat]))
            aids.append(int(things.ann_id[a]))
        for runs, value, aid in zip(rle_counts_many(strings), values, aids, strict=True):
            if runs.size and (runs.min() < 0 or int(runs.sum()) != h * w):
                raise LabelError(f"{where}, annotation {aid}: RLE counts cover {int(runs.sum()):,d} pixels, the "
                                 f"image has {h * w:,d}")
            paint_runs(flat, runs, value)
        return np.ascontiguousarray(flat.reshape(w, h).T)

    def _check_category(self, cat: int, where: str, aid: int) -> None:
        if not (0 <= cat < 256 and self.known[cat]):
            raise LabelError(
                f"{where}, annotation {aid}: category {cat} is not in class dictionary {self.classes.name}"
            )


def rle_counts(counts: bytes | str) -> np.ndarray:
    """Run lengths of COCO's compressed RLE string (pycocotools rleFrString, vectorized)."""
    return rle_counts_many([counts])[0]


def rle_counts_many(strings: list[bytes | str]) -> list[np.ndarray]:
    """Run lengths of several compressed RLE strings, decoded together (one set of array operations)."""
    strings = [s.encode() if isinstance(s, str) else bytes(s) for s in strings]
    if not strings:
        return []
    c = np.frombuffer(b"".join(strings), dtype=np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return [np.zeros(0, np.int64) for _ in strings]
    # each number is 5-bit groups, low first; bit 0x20 says "more follows", 0x10 of the last is the sign
    ends = np.flatnonzero(c < 32)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    group = np.zeros(c.size, np.int64)
    group[starts] = starts
    np.maximum.accumulate(group, out=group)
    k = np.arange(c.size) - group
    x = np.add.reduceat((c & 0x1F) << (5 * k), starts)
    neg = np.flatnonzero(c[ends] & 0x10)
    x[neg] -= np.left_shift(1, 5 * (k[ends[neg]] + 1))
    bounds = np.searchsorted(ends, np.cumsum([0] + [len(s) for s in strings]))
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        runs = x[lo:hi].copy()
        if runs.size > 3:  # from the fourth on, numbers are deltas against the number two places back
            runs[2::2] = np.cumsum(runs[2::2])
            runs[1::2] = np.cumsum(runs[1::2])
        out.append(runs)
    return out


_PARITY = np.zeros(0, dtype=bool)


def paint_runs(flat: np.ndarray, runs: np.ndarray, value: int) -> None:
    """Set value where the runs (0-run, 1-run, 0-run, ...) are ones; flat is column-major, length h*w."""
    global _PARITY
    if runs.size < 2:
        return
    inner = runs[1 : 2 * (runs.size // 2)]  # from the first 1-run to the last 1-run
    if _PARITY.size < inner.size:
        _PARITY = (np.arange(max(inner.size, 2 * _PARITY.size)) % 2) == 0
    start = int(runs[0])
    end = start + int(inner.sum())
    np.copyto(flat[start:end], np.uint8(value), where=np.repeat(_PARITY[: inner.size], inner))


def presence(label: np.ndarray, classes: int) -> np.ndarray:
    """Float vector of length `classes`: 1 where that trainId occurs in the label."""
    return (pixel_counts(label)[:classes] > 0).astype(np.float32)


def pixel_counts(label: np.ndarray) -> np.ndarray:
    """Pixels per value (256 int64) of a uint8 label: through OpenCV's histogram for an image (np.bincount casts
    every pixel to int64 first, several times slower)."""
    if label.dtype == np.uint8 and label.ndim == 2 and label.size:
        import cv2

        return cv2.calcHist([np.ascontiguousarray(label)], [0], None, [256], [0, 256]).ravel().astype(np.int64)
    return np.bincount(np.asarray(label).ravel(), minlength=256).astype(np.int64)
