"""A compact index of a COCO annotation file (instances or stuff), cached in the store beside the JSON.

Parsing instances_train2017.json (448 MB, 860k annotations) takes a while; the index keeps what rendering
labels needs in flat numpy arrays (no per-image Python objects, so DataLoader workers share it without
copy-on-read growth), and is written once to `<json key>.mllib-index.npz` so later runs load it in seconds.

    idx = CocoIndex.load(store, "datasets/coco/annotations/instances_val2017.json")
    idx.images            # number of images
    idx.file_name(i), idx.size(i), idx.annotations(i)   # annotation rows of image i (sorted by image)
    idx.segmentation(a)   # polygons (list of float64 arrays) or an RLE dict, exactly as pycocotools takes them
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import time

import numpy as np

from mllib import MllibError

log = logging.getLogger(__name__)

INDEX_VERSION = 1
KIND_POLY, KIND_RLE = 0, 1
CACHE_SUFFIX = ".mllib-index.npz"


class AnnotationError(MllibError):
    pass


class CocoIndex:
    """Flat arrays over one COCO annotation file. Build with from_json / load; read with the accessors."""

    FIELDS = (
        "image_id", "height", "width", "name_off", "names", "ann_start", "ann_count",
        "ann_id", "category", "iscrowd", "area", "kind", "seg_start", "seg_count",
        "poly_start", "poly_len", "coords", "rle_off", "rle_h", "rle_w", "rle_bytes", "meta",
    )  # fmt: skip

    def __init__(self, arrays: dict[str, np.ndarray], source: str = ""):
        for k in self.FIELDS:
            setattr(self, k, arrays[k])
        self.source = source
        self.categories = json.loads(bytes(self.meta).decode())["categories"]

    # -- construction -----------------------------------------------------------------------------------------
    @classmethod
    def from_json(cls, data: bytes | str | dict, source: str = "") -> CocoIndex:
        from pycocotools import mask as maskutil

        t0 = time.perf_counter()
        d = json.loads(data) if isinstance(data, bytes | str) else data
        try:
            images = d["images"]
            anns = d.get("annotations", [])
        except (KeyError, TypeError):
            raise AnnotationError(f"{source}: not a COCO annotation file (no 'images')") from None
        n = len(images)
        image_id = np.array([im["id"] for im in images], dtype=np.int64)
        height = np.array([im["height"] for im in images], dtype=np.int32)
        width = np.array([im["width"] for im in images], dtype=np.int32)
        names_b = [im["file_name"].encode() for im in images]
        name_off = np.zeros(n + 1, dtype=np.int64)
        np.cumsum([len(b) for b in names_b], out=name_off[1:])
        names = np.frombuffer(b"".join(names_b), dtype=np.uint8).copy()
        row_of = {int(i): r for r, i in enumerate(image_id)}

        # annotations grouped by image, in file order within an image
        img_rows = np.array([row_of.get(int(a["image_id"]), -1) for a in anns], dtype=np.int64)
        missing = np.flatnonzero(img_rows < 0)
        if missing.size:
            a = anns[int(missing[0])]
            raise AnnotationError(f"{source}: annotation {a.get('id')} refers to image {a['image_id']}, not in 'images'")
        order = np.argsort(img_rows, kind="stable")
        counts = np.bincount(img_rows, minlength=n).astype(np.int64)
        ann_start = np.zeros(n, dtype=np.int64)
        ann_start[1:] = np.cumsum(counts[:-1])

        m = len(anns)
        ann_id = np.empty(m, np.int64)
        category = np.empty(m, np.int32)
        iscrowd = np.empty(m, np.uint8)
        area = np.empty(m, np.float64)
        kind = np.empty(m, np.uint8)
        seg_start = np.zeros(m, np.int64)  # polygons: first row in poly_*; RLE: row in rle_*
        seg_count = np.zeros(m, np.int32)  # polygons: how many
        poly_len: list[int] = []
        coords: list[list[float]] = []
        rle_h: list[int] = []
        rle_w: list[int] = []
        rle_chunks: list[bytes] = []
        for j, k in enumerate(order):
            a = anns[int(k)]
            ann_id[j] = a.get("id", -1)
            category[j] = a["category_id"]
            iscrowd[j] = a.get("iscrowd", 0)
            area[j] = a.get("area", 0.0)
            seg = a.get("segmentation")
            if isinstance(seg, list):
                kind[j] = KIND_POLY
                seg_start[j] = len(poly_len)
                seg_count[j] = len(seg)
                for poly in seg:
                    poly_len.append(len(poly))
                    coords.append(poly)
            elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
                kind[j] = KIND_RLE
                h, w = int(seg["size"][0]), int(seg["size"][1])
                counts_ = seg["counts"]
                if isinstance(counts_, list):  # uncompressed RLE -> the compressed form, as annToRLE does
                    counts_ = maskutil.frPyObjects(seg, h, w)["counts"]
                if isinstance(counts_, str):
                    counts_ = counts_.encode()
                seg_start[j] = len(rle_chunks)
                rle_h.append(h)
                rle_w.append(w)
                rle_chunks.append(bytes(counts_))
            else:
                raise AnnotationError(f"{source}: annotation {a.get('id')} has no usable 'segmentation'")
        rle_off = np.zeros(len(rle_chunks) + 1, np.int64)
        np.cumsum([len(c) for c in rle_chunks], out=rle_off[1:])
        flat = np.fromiter(itertools.chain.from_iterable(coords), dtype=np.float64, count=sum(poly_len))
        poly_start = np.zeros(len(poly_len) + 1, np.int64)
        np.cumsum(poly_len, out=poly_start[1:])
        meta = {"categories": d.get("categories", []), "version": INDEX_VERSION, "source": source}
        arrays = dict(
            image_id=image_id, height=height, width=width, name_off=name_off, names=names,
            ann_start=ann_start, ann_count=counts, ann_id=ann_id, category=category, iscrowd=iscrowd, area=area,
            kind=kind, seg_start=seg_start, seg_count=seg_count, poly_start=poly_start,
            poly_len=np.array(poly_len, np.int32), coords=flat,
            rle_off=rle_off, rle_h=np.array(rle_h, np.int32), rle_w=np.array(rle_w, np.int32),
            rle_bytes=np.frombuffer(b"".join(rle_chunks), np.uint8).copy(),
            meta=np.frombuffer(json.dumps(meta).encode(), np.uint8).copy(),
        )  # fmt: skip
        log.info("indexed %s: %d images, %d annotations in %.1f s", source or "annotations", n, m,
                 time.perf_counter() - t0)
        return cls(arrays, source)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, **{k: getattr(self, k) for k in self.FIELDS})
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "") -> CocoIndex:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return cls({k: z[k] for k in cls.FIELDS}, source)

    @classmethod
    def load(cls, store, key: str, cache: bool = True) -> CocoIndex:
        """Index of the annotation JSON at key; uses / writes the cached index beside it in the store."""
        from mllib.store import NotFound

        cache_key = key + CACHE_SUFFIX
        try:
            json_size = store.size(key)
        except NotFound:
            raise AnnotationError(
                f"annotation file {store.url_for(key)} not found; download it first (datasets/getcoco.py)"
            ) from None
        if cache and store.exists(cache_key):
            try:
                idx = cls.from_bytes(store.get_bytes(cache_key), key)
                meta = json.loads(bytes(idx.meta).decode())
                if meta.get("version") == INDEX_VERSION and meta.get("json_size") == json_size:
                    return idx
                log.info("cached index of %s is stale; rebuilding", key)
            except (OSError, ValueError, KeyError) as e:
                log.warning("cached index of %s unreadable (%s); rebuilding", key, e)
        idx = cls.from_json(store.get_bytes(key), key)
        meta = json.loads(bytes(idx.meta).decode())
        meta["json_size"] = json_size
        idx.meta = np.frombuffer(json.dumps(meta).encode(), np.uint8).copy()
        if cache:
            store.put_bytes(cache_key, idx.to_bytes())
        return idx

    # -- accessors --------------------------------------------------------------------------------------------
    @property
    def images(self) -> int:
        return len(self.image_id)

    def __len__(self) -> int:
        return self.images

    def file_name(self, i: int) -> str:
        return bytes(self.names[self.name_off[i] : self.name_off[i + 1]]).decode()

    def size(self, i: int) -> tuple[int, int]:
        return int(self.height[i]), int(self.width[i])

    def annotations(self, i: int) -> range:
        s = int(self.ann_start[i])
        return range(s, s + int(self.ann_count[i]))

    def segmentation(self, a: int):
        """Polygons as a list of float lists, or an RLE dict {'size', 'counts': bytes}."""
        if self.kind[a] == KIND_POLY:
            s, c = int(self.seg_start[a]), int(self.seg_count[a])
            return [self.coords[self.poly_start[p] : self.poly_start[p + 1]] for p in range(s, s + c)]
        r = int(self.seg_start[a])
        return {"size": [int(self.rle_h[r]), int(self.rle_w[r])],
                "counts": bytes(self.rle_bytes[self.rle_off[r] : self.rle_off[r + 1]])}

    def row_of(self, image_id: int) -> int | None:
        """The row of an image id, or None (a sorted order is built once, on first use)."""
        order = getattr(self, "_id_order", None)
        if order is None:
            order = self._id_order = np.argsort(self.image_id, kind="stable")
        pos = int(np.searchsorted(self.image_id, image_id, sorter=order))
        if pos < len(order) and self.image_id[order[pos]] == image_id:
            return int(order[pos])
        return None

    def category_ids(self) -> set[int]:
        return {int(c["id"]) for c in self.categories}
