"""Small generated COCO-format data: images, instance annotations, and zips in the official download layout."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import cv2
import numpy as np

CATEGORIES = [
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 3, "name": "car", "supercategory": "vehicle"},
    {"id": 18, "name": "dog", "supercategory": "animal"},
    {"id": 62, "name": "chair", "supercategory": "furniture"},
]


def jpeg(h: int, w: int, seed: int, gray: bool = False) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (h, w) if gray else (h, w, 3), dtype=np.uint8)
    img = cv2.GaussianBlur(img, (5, 5), 0)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


def make_coco(root: Path, split: str = "val2017", n_images: int = 3, seed: int = 0, hw=(48, 64)) -> dict:
    """Write root/<split>/*.jpg and root/annotations/instances_<split>.json; return the annotation dict.

    Each image has a large person polygon, a small car polygon on top of it, a dog triangle, and every third
    image a crowd RLE (uncompressed) of a chair.
    """
    rng = np.random.default_rng(seed)
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    aid = 1
    for i in range(n_images):
        h, w = hw
        iid = 1000 * (seed + 1) + i
        fname = f"{iid:012d}.jpg"
        (root / split / fname).write_bytes(jpeg(h, w, seed * 100 + i))
        images.append({"id": iid, "file_name": fname, "height": h, "width": w})
        x0, y0 = int(rng.integers(2, 10)), int(rng.integers(2, 10))
        person = [x0, y0, w - 4, y0, w - 4, h - 4, x0, h - 4]
        car = [x0 + 6, y0 + 6, x0 + 20, y0 + 6, x0 + 20, y0 + 16, x0 + 6, y0 + 16]
        dog = [w - 20, 2, w - 3, 2, w - 10, 14]
        for cat, poly in ((1, person), (3, car), (18, dog)):
            xs, ys = poly[0::2], poly[1::2]
            anns.append({"id": aid, "image_id": iid, "category_id": cat, "iscrowd": 0, "segmentation": [poly],
                         "area": float((max(xs) - min(xs)) * (max(ys) - min(ys))),
                         "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]})
            aid += 1
        if i % 3 == 0:
            m = np.zeros((h, w), np.uint8)
            m[h - 12 : h - 2, 2:14] = 1
            anns.append({"id": aid, "image_id": iid, "category_id": 62, "iscrowd": 1,
                         "segmentation": rle_uncompressed(m), "area": float(m.sum()), "bbox": [2, h - 12, 12, 10]})
            aid += 1
    data = {"info": {"description": "generated"}, "licenses": [], "images": images, "annotations": anns,
            "categories": CATEGORIES}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return data


def rle_uncompressed(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (column-major run lengths starting with zeros)."""
    flat = mask.flatten(order="F")
    counts, last, run = [], 0, 0
    for v in flat:
        if v != last:
            counts.append(run)
            run, last = 0, v
        run += 1
    counts.append(run)
    return {"counts": counts, "size": list(mask.shape)}


def png(h: int, w: int, seed: int) -> bytes:
    img = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def _zip(path: Path, files: dict[str, bytes], stored: bool = False) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)


def nested_zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def make_coco_zips(out: Path, n_images: int = 4, extra: dict[str, dict[str, bytes]] | None = None) -> dict[str, dict]:
    """Zips in the official layout in out/zips and out/annotations, plus out/checksums.tsv.

    Returns {zip name: {member path: bytes}} with the nested zips' members listed where they will be extracted.
    """
    src = out / "src"
    val = make_coco(src, "val2017", n_images, seed=1)
    make_coco(src, "train2017", n_images, seed=2)
    contents: dict[str, dict[str, bytes]] = {}
    contents["val2017.zip"] = {f"val2017/{im['file_name']}": (src / "val2017" / im["file_name"]).read_bytes()
                               for im in val["images"]}
    contents["annotations_trainval2017.zip"] = {
        f"annotations/instances_{s}.json": (src / "annotations" / f"instances_{s}.json").read_bytes()
        for s in ("val2017", "train2017")
    }
    pan = {f"panoptic_val2017/{im['file_name'][:-4]}.png": png(8, 8, k) for k, im in enumerate(val["images"])}
    stuff = {f"stuff_val2017_pixelmaps/{im['file_name'][:-4]}.png": png(8, 8, 50 + k) for k, im in enumerate(val["images"])}
    zips = {
        "val2017.zip": contents["val2017.zip"],
        "annotations_trainval2017.zip": contents["annotations_trainval2017.zip"],
        "panoptic_annotations_trainval2017.zip": {
            "annotations/panoptic_val2017.json": json.dumps({"annotations": []}).encode(),
            "annotations/panoptic_val2017.zip": nested_zip_bytes(pan),
        },
        "stuff_annotations_trainval2017.zip": {
            "annotations/stuff_val2017.json": json.dumps({"annotations": []}).encode(),
            "annotations/stuff_val2017_pixelmaps.zip": nested_zip_bytes(stuff),
        },
    }
    zips.update(extra or {})
    contents = {}
    rows = ["url\tsize\tsha256\tmd5"]
    for name, files in zips.items():
        folder = "zips" if name in ("val2017.zip", "train2017.zip", "test2017.zip") else "annotations"
        (out / folder).mkdir(parents=True, exist_ok=True)
        path = out / folder / name
        _zip(path, files)
        data = path.read_bytes()
        rows.append(f"http://mirror/{folder}/{name}\t{len(data)}\t{hashlib.sha256(data).hexdigest()}\t"
                    f"{hashlib.md5(data).hexdigest()}")
        expanded = {}
        for member, blob in files.items():
            if member.endswith(".zip"):
                base = member.rsplit("/", 1)[0] + "/" if "/" in member else ""
                with zipfile.ZipFile(io.BytesIO(blob)) as z:
                    for n in z.namelist():
                        expanded[base + n] = z.read(n)
            else:
                expanded[member] = blob
        contents[name] = expanded
    (out / "checksums.tsv").write_text("\n".join(rows) + "\n")
    return contents


def put_coco(store, tmp_path: Path, split: str = "val2017", n: int = 6, seed: int = 1, hw=(60, 80),
             dataset: str = "coco") -> dict:
    """A generated COCO split in a store, in the layout getcoco.py writes; returns the annotation dict."""
    src = tmp_path / f"src-{split}-{seed}"
    d = make_coco(src, split, n, seed=seed, hw=hw)
    for im in d["images"]:
        store.put_file(f"datasets/{dataset}/{split}/{im['file_name']}", src / split / im["file_name"])
    store.put_bytes(f"datasets/{dataset}/annotations/instances_{split}.json", json.dumps(d).encode())
    return d
