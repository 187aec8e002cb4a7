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
import json
import logging
import re
import time
from array import array

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
        rendering its image raises a LabelError naming image and annotation (a counted skip with skip_bad).

        Text (bytes or str) is read one annotation at a time, so the index is built without the whole file's
        Python objects (at train2017 size those are several GB; the text and the arrays are a fraction)."""
        return cls._build([data], source)

    @classmethod
    def _build(cls, box: list, source: str) -> CocoIndex:
        """from_json of box's one item, which is taken out of box so the text can be freed once it is read."""
        t0 = time.perf_counter()
        data = box.pop()
        if isinstance(data, dict):
            arrays = _index_document(data, source)
        else:
            if isinstance(data, bytes | bytearray):  # the encodings json.loads accepts, decoded as it does
                data = data.decode(json.detect_encoding(data), "surrogatepass")
            read = _read_text(data, source)
            if read is None:  # not a plain COCO layout (or not valid JSON): the whole document, as json.loads
                arrays = _index_document(json.loads(data), source)
            else:
                del data  # the text is read: free it before the arrays are grouped
                arrays = read[0].finish(read[1], source)
        idx = cls(arrays, source)
        log.info("indexed %s: %d images, %d annotations (%d malformed) in %.1f s", source or "annotations",
                 idx.images, len(idx.ann_id), len(idx.bad), time.perf_counter() - t0)
        return idx

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
        idx = cls._build([store.get_bytes(key)], key)  # the JSON's bytes are freed as soon as decoded
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


def _index_document(d, source: str) -> dict[str, np.ndarray]:
    """The index arrays of a parsed COCO document."""
    if not isinstance(d, dict) or not isinstance(d.get("images"), list):
        raise AnnotationError(f"{source}: not a COCO annotation file (no 'images' list)")
    anns = d.get("annotations") or []
    if not isinstance(anns, list) or not all(isinstance(a, dict) for a in anns):
        raise AnnotationError(f"{source}: 'annotations' is not a list of objects")
    rows = _Annotations(_image_arrays(d["images"], source))
    for a in anns:
        if not rows.add(a):
            raise AnnotationError(f"{source}: annotation {a.get('id')!r} refers to image {a.get('image_id')!r}, "
                                  "not in 'images'")
    return rows.finish(d.get("categories", []), source)


_WS = re.compile(r"[ \t\n\r]*")


def _read_text(text: str, source: str) -> tuple[_Annotations, list] | None:
    """The annotations and categories of COCO JSON text, decoding one annotation at a time; None where the text is not an object
    with a valid 'images' list before its 'annotations' list of objects that all name an image (or is not valid
    JSON): the caller then parses the whole document, which gives the same arrays or the error json.loads or
    _index_document raises. Never builds the whole file's Python objects on the common layout."""
    decode = json.JSONDecoder().raw_decode
    ws = _WS.match
    seen: set[str] = set()
    categories: list = []
    rows = None
    try:
        pos = ws(text, 0).end()
        if text[pos] != "{":
            return None
        pos = ws(text, pos + 1).end()
        while True:
            if text[pos] != '"':
                return None
            key, pos = decode(text, pos)
            pos = ws(text, pos).end()
            if text[pos] != ":" or key in seen:
                return None
            seen.add(key)
            pos = ws(text, pos + 1).end()
            if key == "annotations" and rows is not None and text[pos] == "[":
                pos = ws(text, pos + 1).end()
                more = text[pos] != "]"
                pos = pos if more else pos + 1
                while more:
                    a, pos = decode(text, pos)
                    if not isinstance(a, dict) or not rows.add(a):
                        return None
                    pos, more = _separator(text, pos, "]")
            else:
                value, pos = decode(text, pos)
                if key == "images":
                    if not isinstance(value, list):
                        return None
                    try:
                        rows = _Annotations(_image_arrays(value, source))
                    except AnnotationError:
                        return None
                    del value
                elif key == "annotations":  # before 'images', or not a list
                    return None
                elif key == "categories":
                    categories = value
            pos, more = _separator(text, pos, "}")
            if not more:
                break
        if ws(text, pos).end() != len(text) or rows is None:
            return None
    except (IndexError, json.JSONDecodeError):
        return None
    return rows, categories


def _separator(text: str, pos: int, close: str) -> tuple[int, bool]:
    """After a value in an array or object: (position after `close`, False) or (start of the next item, True).
    Anything else is a JSONDecodeError (the caller then parses the whole document, which says where)."""
    pos = _WS.match(text, pos).end()
    if text[pos] == close:
        return pos + 1, False
    if text[pos] != ",":
        raise json.JSONDecodeError(f"Expecting ',' or {close!r}", text, pos)
    return _WS.match(text, pos + 1).end(), True


class _Annotations:
    """The annotations of one file, added in file order as compact typed arrays, then grouped by image."""

    def __init__(self, im: dict[str, np.ndarray]):
        self.im = im
        self.row_of = {int(i): r for r, i in enumerate(im["image_id"])}
        self.h, self.w = im["height"].tolist(), im["width"].tolist()
        self.img_row, self.ann_id, self.seg_first = array("q"), array("q"), array("q")
        self.category, self.seg_count, self.poly_len = array("i"), array("i"), array("i")
        self.iscrowd, self.kind = array("B"), array("B")
        self.area, self.coords = array("d"), array("d")
        self.rle_h, self.rle_w = array("i"), array("i")
        self.rle_chunks: list[bytes] = []
        self.problems: list[tuple[int, str]] = []  # (annotation in file order, why it cannot be rendered)

    def add(self, a: dict) -> bool:
        """Add one annotation (a dict); False, adding nothing, where its image_id is not one of the images."""
        iid = a.get("image_id")
        r = self.row_of.get(iid, -1) if isinstance(iid, int) and not isinstance(iid, bool) else -1
        if r < 0:
            return False
        j = len(self.img_row)
        self.img_row.append(r)
        h, w = self.h[r], self.w[r]
        aid = a.get("id", -1)
        self.ann_id.append(aid if isinstance(aid, int) and not isinstance(aid, bool) and abs(aid) < 2**63 else -1)
        problem = _annotation_problem(a, h, w)
        if problem is not None:
            self.problems.append((j, problem))
            self._row(KIND_BAD, -1, 0, 0.0, 0, 0)
            return True
        cat = a["category_id"] if -(2**31) <= a["category_id"] < 2**31 else -1
        seg = a["segmentation"]
        if isinstance(seg, list):
            self._row(KIND_POLY, cat, a.get("iscrowd", 0), a.get("area", 0.0), len(self.poly_len), len(seg))
            for poly in seg:
                self.poly_len.append(len(poly))
                n0 = len(self.coords)
                try:
                    self.coords.extend(poly)
                except (TypeError, ValueError, OverflowError):  # a non-number: NaN, flagged by _check_coords
                    del self.coords[n0:]
                    self.coords.extend(_as_float(v) for v in poly)
        else:
            self._row(KIND_RLE, cat, a.get("iscrowd", 0), a.get("area", 0.0), len(self.rle_chunks), 0)
            counts = seg["counts"]
            if isinstance(counts, list):  # uncompressed RLE -> the compressed form, as annToRLE does
                from pycocotools import mask as maskutil

                counts = maskutil.frPyObjects(seg, h, w)["counts"]
            if isinstance(counts, str):
                counts = counts.encode()
            self.rle_h.append(h)
            self.rle_w.append(w)
            self.rle_chunks.append(bytes(counts))
        return True

    def _row(self, kind, category, iscrowd, area, seg_first, seg_count) -> None:
        self.kind.append(kind)
        self.category.append(category)
        self.iscrowd.append(iscrowd)
        self.area.append(_as_float(area))
        self.seg_first.append(seg_first)
        self.seg_count.append(seg_count)

    def finish(self, categories, source: str) -> dict[str, np.ndarray]:
        """The index arrays: annotations grouped by image (file order within an image), polygons and RLEs in that
        order, annotation rows of the bad ones in 'meta'."""
        im = self.im
        rows = np.frombuffer(self.img_row, np.int64)
        m = len(rows)
        order = np.argsort(rows, kind="stable")
        counts = np.bincount(rows, minlength=len(im["image_id"])).astype(np.int64)
        ann_start = np.zeros(len(counts), np.int64)
        ann_start[1:] = np.cumsum(counts[:-1])
        ann_rows = np.repeat(np.arange(len(counts)), counts)  # the image row of each annotation, in index order
        new_of = np.empty(m, np.int64)
        new_of[order] = np.arange(m)
        kind = np.frombuffer(self.kind, np.uint8)[order]
        out = dict(im, ann_start=ann_start, ann_count=counts,
                   ann_id=np.frombuffer(self.ann_id, np.int64)[order],
                   category=np.frombuffer(self.category, np.int32)[order],
                   iscrowd=np.frombuffer(self.iscrowd, np.uint8)[order],
                   area=np.frombuffer(self.area, np.float64)[order], kind=kind)
        first = np.frombuffer(self.seg_first, np.int64)[order]
        seg_start = np.zeros(m, np.int64)
        seg_count = np.frombuffer(self.seg_count, np.int32)[order].copy()
        # polygons: each polygon annotation's run, in the new order
        n_polys = np.where(kind == KIND_POLY, seg_count, 0).astype(np.int64)
        poly_first = np.cumsum(n_polys) - n_polys
        seg_start[kind == KIND_POLY] = poly_first[kind == KIND_POLY]
        src_poly = np.repeat(first - poly_first, n_polys) + np.arange(int(n_polys.sum()))
        old_len = np.frombuffer(self.poly_len, np.int32)
        old_start = np.zeros(len(old_len) + 1, np.int64)
        np.cumsum(old_len, out=old_start[1:])
        poly_len = old_len[src_poly]
        poly_start = np.zeros(len(poly_len) + 1, np.int64)
        np.cumsum(poly_len, out=poly_start[1:])
        old = np.frombuffer(self.coords, np.float64)
        coords = np.empty(int(poly_start[-1]), np.float64)
        for p0, p1 in _blocks(poly_start):  # gathered in blocks: no index array as long as the coordinates
            lens = poly_len[p0:p1].astype(np.int64)
            idx = np.repeat(old_start[src_poly[p0:p1]] - poly_start[p0:p1], lens) \
                + np.arange(poly_start[p0], poly_start[p1])
            coords[poly_start[p0] : poly_start[p1]] = old[idx]
        # RLEs, in the new order
        is_rle = kind == KIND_RLE
        src_rle = first[is_rle]
        seg_start[is_rle] = np.arange(len(src_rle))
        chunks = [self.rle_chunks[int(k)] for k in src_rle]
        rle_off = np.zeros(len(chunks) + 1, np.int64)
        np.cumsum([len(c) for c in chunks], out=rle_off[1:])
        bad = {str(j): why for j, why in sorted((int(new_of[j]), why) for j, why in self.problems)}
        out.update(seg_start=seg_start, seg_count=seg_count, poly_start=poly_start, poly_len=poly_len,
                   coords=coords, rle_off=rle_off, rle_h=np.frombuffer(self.rle_h, np.int32)[src_rle],
                   rle_w=np.frombuffer(self.rle_w, np.int32)[src_rle],
                   rle_bytes=np.frombuffer(b"".join(chunks), np.uint8).copy())
        _check_coords(out, ann_rows, bad)
        meta = {"categories": categories, "version": INDEX_VERSION, "source": source, "bad": bad}
        out["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8).copy()
        return out


def _blocks(poly_start: np.ndarray, size: int = 1 << 18):
    """Runs of polygons [p0, p1) of about size coordinates each (a longer polygon is a run of its own)."""
    n, p0 = len(poly_start) - 1, 0
    while p0 < n:
        p1 = max(p0 + 1, int(np.searchsorted(poly_start, poly_start[p0] + size, "right")) - 1)
        yield p0, min(p1, n)
        p0 = p1


def _as_float(v) -> float:
    if not _number(v):
        return np.nan
    try:
        return float(v)
    except OverflowError:
        return np.inf


def _check_coords(out: dict[str, np.ndarray], ann_rows: np.ndarray, bad: dict[str, str]) -> None:
    """Flag annotations with non-finite coordinates, or coordinates far outside their image (which would make
    pycocotools rasterize for hours or run out of memory). Checked in blocks of polygons: no temporary array is
    as long as all the coordinates."""
    poly_start, coords = out["poly_start"], out["coords"]
    n_polys = len(poly_start) - 1
    if not n_polys:
        return
    is_poly = out["kind"] == KIND_POLY
    poly_ann = np.repeat(np.flatnonzero(is_poly), out["seg_count"][is_poly])  # the annotation of each polygon
    rows = ann_rows[poly_ann]
    limit = 4.0 * np.maximum(out["height"][rows], out["width"][rows]).astype(np.float64) + 16
    flagged = []
    for p0, p1 in _blocks(poly_start):
        vals = coords[poly_start[p0] : poly_start[p1]]
        lim = np.repeat(limit[p0:p1], np.diff(poly_start[p0 : p1 + 1]))
        with np.errstate(invalid="ignore"):
            ok = np.abs(vals) <= lim  # False for NaN and for an infinity
        if not ok.all():
            poly_of = np.repeat(np.arange(p0, p1), np.diff(poly_start[p0 : p1 + 1]))
            flagged.append(np.unique(poly_ann[poly_of[~ok]]))
    for j in np.unique(np.concatenate(flagged)) if flagged else ():
        j = int(j)
        s, c = int(out["seg_start"][j]), int(out["seg_count"][j])
        vals = coords[poly_start[s] : poly_start[s + c]]
        nonfinite = not np.isfinite(vals).all()
        bad[str(j)] = ("polygon with a non-finite coordinate (NaN or Infinity)" if nonfinite else
                       f"polygon coordinate {vals[np.argmax(np.abs(vals))]:.6g} is far outside the image")
        out["kind"][j], out["category"][j] = KIND_BAD, -1
