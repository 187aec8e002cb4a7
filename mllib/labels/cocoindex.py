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

INDEX_VERSION = 2
KIND_POLY, KIND_RLE, KIND_BAD = 0, 1, 2
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
        meta = json.loads(bytes(self.meta).decode())
        self.categories = meta["categories"]
        self.bad: dict[str, str] = meta.get("bad", {})  # annotation row -> why it cannot be rendered

    # -- construction -----------------------------------------------------------------------------------------
    @classmethod
    def from_json(cls, data: bytes | str | dict, source: str = "") -> CocoIndex:
        """Index a COCO annotation file. A malformed image entry or a duplicate image id is an AnnotationError
        naming the file and image; a malformed annotation is kept as a bad one (KIND_BAD, with the reason), so
        rendering its image raises a LabelError naming image and annotation (a counted skip with skip_bad)."""
        t0 = time.perf_counter()
        d = json.loads(data) if isinstance(data, bytes | str) else data
        if not isinstance(d, dict) or not isinstance(d.get("images"), list):
            raise AnnotationError(f"{source}: not a COCO annotation file (no 'images' list)")
        anns = d.get("annotations") or []
        if not isinstance(anns, list) or not all(isinstance(a, dict) for a in anns):
            raise AnnotationError(f"{source}: 'annotations' is not a list of objects")
        arrays = _image_arrays(d["images"], source)
        order, counts = _group(anns, arrays["image_id"], source)
        ann_start = np.zeros(len(counts), np.int64)
        ann_start[1:] = np.cumsum(counts[:-1])
        arrays.update(ann_start=ann_start, ann_count=counts)
        ann_rows = np.repeat(np.arange(len(counts)), counts)  # the image row of each annotation, in index order
        bad: dict[str, str] = {}
        arrays.update(_annotation_arrays([anns[int(k)] for k in order], ann_rows, arrays, bad))
        meta = {"categories": d.get("categories", []), "version": INDEX_VERSION, "source": source, "bad": bad}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8).copy()
        log.info("indexed %s: %d images, %d annotations (%d malformed) in %.1f s", source or "annotations",
                 len(arrays["image_id"]), len(anns), len(bad), time.perf_counter() - t0)
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
        cache_key = key + CACHE_SUFFIX
        listed = {i.key: i for i in store.list(key)}  # the JSON and, beside it, its cached index
        if key not in listed:
            raise AnnotationError(
                f"annotation file {store.url_for(key)} not found; download it first (datasets/getcoco.py)"
            )
        # the cache is tied to this very JSON: its ETag, or on a local store the file's size, mtime and inode
        json_size, json_version = listed[key].size, store.version(listed[key])
        if cache and cache_key in listed:
            try:
                idx = cls.from_bytes(store.get_bytes(cache_key), key)
                meta = json.loads(bytes(idx.meta).decode())
                if meta.get("version") == INDEX_VERSION and meta.get("json_size") == json_size \
                        and meta.get("json_version") == json_version:
                    return idx
                log.info("cached index of %s is stale; rebuilding", key)
            except (OSError, ValueError, KeyError) as e:
                log.warning("cached index of %s unreadable (%s); rebuilding", key, e)
        idx = cls.from_json(store.get_bytes(key), key)
        meta = json.loads(bytes(idx.meta).decode())
        meta["json_size"], meta["json_version"] = json_size, json_version
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



# -- building the index ---------------------------------------------------------------------------------------------
def _image_arrays(images: list, source: str) -> dict[str, np.ndarray]:
    for n, im in enumerate(images):
        if not isinstance(im, dict):
            raise AnnotationError(f"{source}: images[{n}] is not an object")
        for k, kind in (("id", int), ("file_name", str), ("height", int), ("width", int)):
            v = im.get(k)
            if not isinstance(v, kind) or isinstance(v, bool) or (kind is int and k != "id" and v <= 0) \
                    or (kind is str and not v):
                raise AnnotationError(f"{source}: image {im.get('id')!r} (images[{n}]) has no valid {k!r}: {v!r}")
    image_id = np.array([im["id"] for im in images], dtype=np.int64)
    uniq, first, counts = np.unique(image_id, return_index=True, return_counts=True)
    if (counts > 1).any():
        dup = int(uniq[np.argmax(counts > 1)])
        raise AnnotationError(f"{source}: image id {dup} appears {int(counts.max())} times in 'images' "
                              "(its annotations could not be told apart)")
    names_b = [im["file_name"].encode() for im in images]
    name_off = np.zeros(len(images) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in names_b], out=name_off[1:])
    return dict(image_id=image_id, height=np.array([im["height"] for im in images], dtype=np.int32),
                width=np.array([im["width"] for im in images], dtype=np.int32), name_off=name_off,
                names=np.frombuffer(b"".join(names_b), dtype=np.uint8).copy())


def _group(anns: list, image_id: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    """(annotation order grouped by image, file order within an image; annotations per image)."""
    row_of = {int(i): r for r, i in enumerate(image_id)}
    img_rows = np.empty(len(anns), dtype=np.int64)
    for j, a in enumerate(anns):
        iid = a.get("image_id")
        img_rows[j] = row_of.get(iid, -1) if isinstance(iid, int) and not isinstance(iid, bool) else -1
    missing = np.flatnonzero(img_rows < 0)
    if missing.size:
        a = anns[int(missing[0])]
        raise AnnotationError(f"{source}: annotation {a.get('id')!r} refers to image {a.get('image_id')!r}, "
                              "not in 'images'")
    return np.argsort(img_rows, kind="stable"), np.bincount(img_rows, minlength=len(image_id)).astype(np.int64)


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _annotation_problem(a: dict, h: int, w: int) -> str | None:
    """Why an annotation cannot be rendered (structure only; coordinates are checked vectorized), or None."""
    if not isinstance(a.get("category_id"), int) or isinstance(a.get("category_id"), bool):
        return f"no valid 'category_id' ({a.get('category_id')!r})"
    crowd = a.get("iscrowd", 0)
    if not isinstance(crowd, int) or isinstance(crowd, bool) or not 0 <= crowd <= 1:
        return f"'iscrowd' must be 0 or 1, not {crowd!r}"
    if "area" in a and not _number(a["area"]):
        return f"'area' is not a number ({a['area']!r})"
    seg = a.get("segmentation")
    if isinstance(seg, list):
        if seg and not all(isinstance(p, list) for p in seg):
            return "'segmentation' is a flat list: polygons must be a list of [x1, y1, x2, y2, ...] lists"
        return None
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        size = seg["size"]
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size)):
            return f"RLE 'size' is not [height, width] ({size!r})"
        if tuple(size) != (h, w):
            return f"RLE size {size} differs from the image's [{h}, {w}]"
        counts = seg["counts"]
        if isinstance(counts, list):
            if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
                return "RLE counts are not non-negative integers"
            if sum(counts) != h * w:
                return f"RLE counts cover {sum(counts):,d} pixels, the image has {h * w:,d}"
        elif not isinstance(counts, str | bytes):
            return "RLE counts are neither a list nor a string"
        return None
    return "no usable 'segmentation' (polygons or RLE)"


def _annotation_arrays(anns: list, ann_rows: np.ndarray, im: dict, bad: dict[str, str]) -> dict[str, np.ndarray]:
    from pycocotools import mask as maskutil

    m = len(anns)
    out = dict(ann_id=np.empty(m, np.int64), category=np.empty(m, np.int32), iscrowd=np.zeros(m, np.uint8),
               area=np.zeros(m, np.float64), kind=np.empty(m, np.uint8), seg_start=np.zeros(m, np.int64),
               seg_count=np.zeros(m, np.int32))
    poly_len: list[int] = []
    poly_ann: list[int] = []
    coords: list[list] = []
    rle_h: list[int] = []
    rle_w: list[int] = []
    rle_chunks: list[bytes] = []
    for j, a in enumerate(anns):
        r = int(ann_rows[j])
        h, w = int(im["height"][r]), int(im["width"][r])
        aid = a.get("id", -1)
        out["ann_id"][j] = aid if isinstance(aid, int) and not isinstance(aid, bool) and abs(aid) < 2**63 else -1
        problem = _annotation_problem(a, h, w)
        if problem is not None:
            bad[str(j)] = problem
            out["kind"][j], out["category"][j] = KIND_BAD, -1
            continue
        out["category"][j] = a["category_id"] if -(2**31) <= a["category_id"] < 2**31 else -1
        out["iscrowd"][j] = a.get("iscrowd", 0)
        out["area"][j] = a.get("area", 0.0)
        seg = a["segmentation"]
        if isinstance(seg, list):
            out["kind"][j] = KIND_POLY
            out["seg_start"][j] = len(poly_len)
            out["seg_count"][j] = len(seg)
            for poly in seg:
                poly_len.append(len(poly))
                poly_ann.append(j)
                coords.append(poly)
        else:
            out["kind"][j] = KIND_RLE
            counts_ = seg["counts"]
            if isinstance(counts_, list):  # uncompressed RLE -> the compressed form, as annToRLE does
                counts_ = maskutil.frPyObjects(seg, h, w)["counts"]
            if isinstance(counts_, str):
                counts_ = counts_.encode()
            out["seg_start"][j] = len(rle_chunks)
            rle_h.append(h)
            rle_w.append(w)
            rle_chunks.append(bytes(counts_))
    flat = _flat_coords(coords, poly_len)
    _check_coords(flat, poly_len, poly_ann, ann_rows, im, out, bad)
    rle_off = np.zeros(len(rle_chunks) + 1, np.int64)
    np.cumsum([len(c) for c in rle_chunks], out=rle_off[1:])
    poly_start = np.zeros(len(poly_len) + 1, np.int64)
    np.cumsum(poly_len, out=poly_start[1:])
    out.update(poly_start=poly_start, poly_len=np.array(poly_len, np.int32), coords=flat, rle_off=rle_off,
               rle_h=np.array(rle_h, np.int32), rle_w=np.array(rle_w, np.int32),
               rle_bytes=np.frombuffer(b"".join(rle_chunks), np.uint8).copy())
    return out


def _flat_coords(coords: list[list], poly_len: list[int]) -> np.ndarray:
    """All polygon coordinates as one float64 array; a non-number becomes NaN (then flagged as non-finite)."""
    try:
        return np.fromiter(itertools.chain.from_iterable(coords), dtype=np.float64, count=sum(poly_len))
    except (TypeError, ValueError):
        return np.array([float(v) if _number(v) else np.nan for poly in coords for v in poly], dtype=np.float64)


def _check_coords(flat, poly_len, poly_ann, ann_rows, im, out, bad) -> None:
    """Flag annotations with non-finite coordinates, or coordinates far outside their image (which would make
    pycocotools rasterize for hours or run out of memory)."""
    if not poly_len:
        return
    lens = np.asarray(poly_len, np.int64)
    ann_of = np.repeat(np.asarray(poly_ann, np.int64), lens)
    rows = ann_rows[ann_of]
    limit = 4.0 * np.maximum(im["height"][rows], im["width"][rows]).astype(np.float64) + 16
    ok = np.isfinite(flat) & (np.abs(np.nan_to_num(flat, nan=0.0, posinf=np.inf)) <= limit)
    for j in np.unique(ann_of[~ok]):
        j = int(j)
        vals = flat[ann_of == j]
        nonfinite = not np.isfinite(vals).all()
        bad[str(j)] = ("polygon with a non-finite coordinate (NaN or Infinity)" if nonfinite else
                       f"polygon coordinate {vals[np.argmax(np.abs(vals))]:.6g} is far outside the image")
        out["kind"][j], out["category"][j] = KIND_BAD, -1
