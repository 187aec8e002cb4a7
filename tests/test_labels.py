"""The label renderer against pycocotools' annToMask, draw order, crowd policy, stuff, bad annotations."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from pycocotools import mask as maskutil
from pycocotools.coco import COCO

from mllib import images
from mllib.labels import classes
from mllib.labels.cocoindex import CocoIndex
from mllib.labels.render import LabelError, Renderer

from .cocofake import CATEGORIES, jpeg, rle_uncompressed
from .conftest import shared_path

H, W = 40, 50


def donut() -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[5:35, 8:42] = 1
    m[14:26, 18:32] = 0
    return m


def dataset(anns, h=H, w=W):
    for k, a in enumerate(anns):
        a.setdefault("id", k + 1)
        a.setdefault("image_id", 7)
        a.setdefault("iscrowd", 0)
        a.setdefault("area", 1.0)
    return {"images": [{"id": 7, "file_name": "x.jpg", "height": h, "width": w}], "annotations": anns,
            "categories": CATEGORIES}


def coco_api(d) -> COCO:
    c = COCO()
    c.dataset = copy.deepcopy(d)
    c.createIndex()
    return c


def rle_compressed(m):
    r = maskutil.encode(np.asfortranarray(m))
    return {"size": r["size"], "counts": r["counts"].decode()}


def test_masks_equal_annToMask_for_every_encoding():
    m = donut()
    anns = [
        {"category_id": 1, "segmentation": [[10.5, 3.2, 45.7, 8.1, 30.2, 38.9, 4.4, 30.0], [1, 1, 6, 1, 3, 6]]},
        {"category_id": 3, "segmentation": rle_compressed(m)},  # a donut: a hole no single polygon has
        {"category_id": 18, "segmentation": rle_uncompressed(m), "iscrowd": 1},
    ]
    d = dataset(anns)
    api = coco_api(d)
    idx = CocoIndex.from_json(json.dumps(d))
    r = Renderer(classes.load("coco"))
    for a in range(3):
        ours = r.mask(idx, a, H, W, "t")
        ref = api.annToMask(api.anns[anns[a]["id"]])
        assert ours.dtype == ref.dtype and np.array_equal(ours, ref), a
    assert np.array_equal(r.mask(idx, 1, H, W, "t"), m)  # the donut's hole survives the round trip


def test_real_annotations_equal_annToMask():
    path = shared_path("coco-real", "annotations", "instances_val2017.json")
    raw = path.read_bytes()
    api = COCO(str(path))
    idx = CocoIndex.from_json(raw)
    r = Renderer(classes.load("coco"))
    checked = crowd = 0
    for i in range(idx.images):
        h, w = idx.size(i)
        for a in idx.annotations(i):
            ref = api.annToMask(api.anns[int(idx.ann_id[a])])
            assert np.array_equal(r.mask(idx, a, h, w, "t"), ref)
            checked += 1
            crowd += int(idx.iscrowd[a])
    assert checked == 382 and crowd == 5


def test_real_stuff_rle_and_other():
    path = shared_path("coco-real", "stuff-sample", "annotations", "stuff_examples.json")
    d = json.loads(path.read_text())
    idx = CocoIndex.from_json(d)
    api = coco_api(d)
    stuff_dict = classes.load("coco").to_dict()
    stuff_dict = copy.deepcopy(stuff_dict)
    for o in stuff_dict["objects"]:
        if o["id"] >= 92:
            o["trainId"] = 3  # make stuff visible: every stuff class -> 3
    r = Renderer(classes.load(stuff_dict))
    empty = CocoIndex.from_json({"images": d["images"], "annotations": [], "categories": []})
    for i in range(idx.images):
        h, w = idx.size(i)
        label = r.render(empty, i, stuff=idx, stuff_row=i)
        want = np.zeros((h, w), np.uint8)
        for a in api.getAnnIds(imgIds=[int(idx.image_id[i])]):
            ann = api.anns[a]
            if ann["category_id"] != 183:
                want[api.annToMask(ann).astype(bool)] = 3
        assert np.array_equal(label, want)
        other = [a for a in api.getAnnIds(imgIds=[int(idx.image_id[i])]) if api.anns[a]["category_id"] == 183]
        for a in other:  # "other" (thing pixels) paints nothing
            assert (label[api.annToMask(api.anns[a]).astype(bool)] == 0).all()


def _two_overlapping(first_small: bool):
    big = {"category_id": 1, "segmentation": [[2, 2, 48, 2, 48, 38, 2, 38]], "area": 1500.0}
    small = {"category_id": 3, "segmentation": [[10, 10, 20, 10, 20, 20, 10, 20]], "area": 100.0}
    return dataset([copy.deepcopy(small), copy.deepcopy(big)] if first_small else [copy.deepcopy(big), copy.deepcopy(small)])


@pytest.mark.parametrize("first_small", [True, False])
def test_small_objects_stay_on_top(first_small):
    idx = CocoIndex.from_json(_two_overlapping(first_small))
    label = Renderer(classes.load("coco")).render(idx, 0)
    assert label[15, 15] == 2  # vehicle over person
    assert label[30, 30] == 1
    assert label[0, 0] == 0


def test_crowd_policy():
    d = dataset([{"category_id": 18, "segmentation": rle_uncompressed(donut()), "iscrowd": 1}])
    idx = CocoIndex.from_json(d)
    assert Renderer(classes.load("coco"), crowd="class").render(idx, 0)[6, 10] == 3
    lab = Renderer(classes.load("coco"), crowd="ignore").render(idx, 0)
    assert lab[6, 10] == 255 and lab[20, 25] == 0  # the hole is not crowd


def test_bad_annotations_name_image_and_annotation():
    r = Renderer(classes.load("coco"))
    cases = [
        ({"category_id": 1, "segmentation": [[1, 1, 5, 5]], "id": 41}, "polygon with 2 points"),
        ({"category_id": 3, "segmentation": rle_compressed(np.zeros((H + 1, W), np.uint8)), "id": 42}, "RLE size"),
        ({"category_id": 250, "segmentation": [[1, 1, 9, 1, 9, 9]], "id": 43}, "category 250"),
    ]
    for ann, expect in cases:
        idx = CocoIndex.from_json(dataset([ann]))
        with pytest.raises(LabelError) as e:
            r.render(idx, 0)
        assert expect in str(e.value) and f"annotation {ann['id']}" in str(e.value) and "image 7" in str(e.value)


def test_index_cache_round_trip_and_invalidation(local_store):
    d = _two_overlapping(True)
    local_store.put_bytes("datasets/coco/annotations/a.json", json.dumps(d).encode())
    idx = CocoIndex.load(local_store, "datasets/coco/annotations/a.json")
    assert local_store.exists("datasets/coco/annotations/a.json.mllib-index.npz")
    again = CocoIndex.load(local_store, "datasets/coco/annotations/a.json")
    for k in CocoIndex.FIELDS:
        if k != "meta":
            assert np.array_equal(getattr(idx, k), getattr(again, k)), k
    assert again.file_name(0) == "x.jpg" and again.size(0) == (H, W)
    d["images"][0]["file_name"] = "renamed_longer.jpg"  # a changed file is re-indexed
    local_store.put_bytes("datasets/coco/annotations/a.json", json.dumps(d).encode())
    assert CocoIndex.load(local_store, "datasets/coco/annotations/a.json").file_name(0) == "renamed_longer.jpg"


def test_image_info_and_uniform_rgb():
    color = jpeg(30, 40, 1)
    assert images.info(color) == ("jpeg", 30, 40, 3)
    data, fmt, h, w = images.uniform_rgb(color)
    assert data is color and (fmt, h, w) == ("jpeg", 30, 40)  # stored as is
    gray = jpeg(30, 40, 2, gray=True)
    assert images.info(gray)[3] == 1
    data, fmt, h, w = images.uniform_rgb(gray)
    assert fmt == "jpeg" and images.info(data)[3] == 3 and images.decode(data).shape == (30, 40, 3)
    with pytest.raises(images.ImageError):
        images.info(color[: len(color) // 2])
    with pytest.raises(images.ImageError):
        images.info(b"GIF89a....")


def test_exif_orientation_is_not_applied(tmp_path):
    from PIL import Image

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 60, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display
    p = tmp_path / "rot.jpg"
    img.save(p, exif=exif.tobytes())
    data = p.read_bytes()
    assert images.info(data)[1:3] == (20, 60)
    assert images.decode(data).shape == (20, 60, 3)


def reference_render(api: COCO, img_id: int, lut, crowd_ignore=False) -> np.ndarray:
    """The straightforward renderer: annToMask per annotation, painted by decreasing area."""
    im = api.imgs[img_id]
    label = np.zeros((im["height"], im["width"]), np.uint8)
    anns = sorted(api.loadAnns(api.getAnnIds(imgIds=[img_id])), key=lambda a: -a["area"])
    for a in anns:
        label[api.annToMask(a).astype(bool)] = 255 if (crowd_ignore and a["iscrowd"]) else lut[a["category_id"]]
    return label


@pytest.mark.parametrize("crowd", ["class", "ignore"])
def test_render_equals_reference_on_real_images(crowd):
    path = shared_path("coco-real", "annotations", "instances_train2017.json")
    api = COCO(str(path))
    idx = CocoIndex.from_json(path.read_bytes())
    d = classes.load("coco")
    r = Renderer(d, crowd=crowd)
    for i in range(idx.images):
        want = reference_render(api, int(idx.image_id[i]), d.lut, crowd == "ignore")
        assert np.array_equal(r.render(idx, i), want), idx.file_name(i)


def test_rle_counts_match_pycocotools():
    from mllib.labels.render import rle_counts

    rng = np.random.default_rng(3)
    for n in range(30):
        h, w = rng.integers(1, 90, 2)
        m = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        if n % 3 == 0:
            m = np.zeros((h, w), np.uint8) if n % 2 else np.ones((h, w), np.uint8)
        enc = maskutil.encode(np.asfortranarray(m))
        runs = rle_counts(enc["counts"])
        assert runs.sum() == h * w
        flat = np.repeat(np.arange(runs.size) % 2 == 1, runs).astype(np.uint8)
        assert np.array_equal(flat.reshape(w, h).T, m)


def test_label_png_round_trip():
    lab = np.random.default_rng(0).integers(0, 4, (33, 47), dtype=np.uint8)
    lab[0, 0] = 255
    data = images.encode_label_png(lab)
    assert images.info(data) == ("png", 33, 47, 1)
    assert np.array_equal(images.decode(data, images.cv2.IMREAD_UNCHANGED), lab)


@pytest.mark.parametrize("deflate", ["default", "zlib"])
def test_label_png_reads_the_same_in_every_decoder(deflate, monkeypatch):
    """Label PNGs as conversions write them (ISA-L's deflate where isal is installed, zlib's otherwise) read back
    to the same values through libspng, OpenCV, Pillow and a plain zlib inflate of the rows; 150-class regions,
    noise, one pixel, a wide row, all 256 values."""
    import io
    import zlib

    import pyspng
    from PIL import Image

    if deflate == "zlib":
        monkeypatch.setattr(images, "_DEFLATE", [lambda raw: zlib.compress(raw, 1)])
    rng = np.random.default_rng(3)
    labels = [np.kron(rng.integers(0, 150, (24, 32)), np.ones((10, 10))).astype(np.uint8),
              rng.integers(0, 256, (61, 47), dtype=np.uint8), np.array([[7]], np.uint8),
              np.full((2, 5000), 255, np.uint8), np.arange(256, dtype=np.uint8).reshape(16, 16)]
    for lab in labels:
        data = images.encode_label_png(lab)
        assert np.array_equal(pyspng.load(data), lab)
        assert np.array_equal(images.decode(data, images.cv2.IMREAD_UNCHANGED), lab)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), lab)
        h, w = lab.shape
        idat = data[33 + 8 : len(data) - 12 - 4]  # IHDR is 33 bytes with the signature; then IDAT; then IEND
        rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, w + 1)
        assert not rows[:, 0].any() and np.array_equal(rows[:, 1:], lab)


def _index_arrays(idx: CocoIndex) -> dict:
    out = {k: getattr(idx, k) for k in CocoIndex.FIELDS if k != "meta"}
    out["meta"] = json.loads(bytes(idx.meta).decode())
    return out


def _same_index(a: CocoIndex, b: CocoIndex) -> None:
    x, y = _index_arrays(a), _index_arrays(b)
    assert x["meta"] == y["meta"]
    for k in CocoIndex.FIELDS:
        if k != "meta":
            assert x[k].dtype == y[k].dtype and np.array_equal(x[k], y[k], equal_nan=True), k


def _outcome(data):
    try:
        return CocoIndex.from_json(data), None
    except Exception as e:  # noqa: BLE001 - the error itself is compared
        return None, f"{type(e).__name__}: {e}"


def test_text_is_indexed_one_annotation_at_a_time_with_the_documents_result(tmp_path):
    """JSON text is read annotation by annotation (not as one document of Python objects); the index, and every
    error, is what the parsed document gives, over shuffled files with malformed annotations, other key orders,
    duplicate keys, other encodings and broken JSON."""
    import random

    from tests.cocofake import make_coco

    base = make_coco(tmp_path, n_images=9, seed=3)
    rnd = random.Random(5)
    junk = [None, "x", True, -1, 10**30, 1.5, [], [[1, "a", 3, 4, 5, 6]], [[float("nan"), 1, 2, 3, 4, 5]],
            [[1e9, 2, 3, 4, 5, 6]], [[10**400, 2, 3, 4, 5, 6]], {"counts": [1, 2], "size": [1, 3]}, [5, 6]]
    outcomes = set()
    for case in range(120):
        d = copy.deepcopy(base)
        rnd.shuffle(d["annotations"])
        for _ in range(rnd.randint(0, 3)):
            a = rnd.choice(d["annotations"])
            a[rnd.choice(["segmentation", "category_id", "iscrowd", "area", "id"] * 4 + ["image_id"])] = rnd.choice(junk)
        if case % 10 == 1:
            d = {"annotations": d["annotations"], "categories": d["categories"], "images": d["images"]}
        raw = json.dumps(d).encode()
        if case % 17 == 2:
            raw = raw.replace(b'"info"', b'"images": 3, "info"', 1)  # a duplicate key: json.loads keeps the last
        if case % 19 == 3:
            raw = raw[:-2]
        if case % 23 == 4:
            raw = json.dumps(d).encode("utf-16")
        if case % 29 == 5:
            raw = b'  \n' + raw + b' \n\t'
        doc, doc_err = _outcome(json.loads(raw)) if case % 19 != 3 else (None, None)
        text, text_err = _outcome(raw)
        str_idx, str_err = _outcome(raw.decode("utf-16") if case % 23 == 4 else raw.decode())
        assert text_err == str_err
        if case % 19 == 3:
            assert text_err and text_err.startswith("JSONDecodeError")
        else:
            assert text_err == doc_err
        if text is not None:
            _same_index(text, doc)
            _same_index(text, str_idx)
        outcomes.add("ok" if text is not None else text_err.split(":")[0])
        if text is not None:
            outcomes.add(f"bad:{len(text.bad) > 0}")
    assert outcomes >= {"ok", "AnnotationError", "JSONDecodeError", "bad:True", "bad:False"}, outcomes


def test_real_annotations_index_the_same_as_text_and_document():
    for split in ("val2017", "train2017"):
        path = shared_path("coco-real", "annotations", f"instances_{split}.json")
        raw = path.read_bytes()
        _same_index(CocoIndex.from_json(raw), CocoIndex.from_json(json.loads(raw)))


def test_indexing_text_needs_a_fraction_of_the_documents_memory():
    """Indexing text allocates about twice the coordinates' float64 bytes, not the whole document's Python
    objects (a float object and its list slot per coordinate: at train2017 size 5.7 GB against 1.2 GB)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    images = [{"id": i, "file_name": f"{i}.jpg", "height": 480, "width": 640} for i in range(200)]
    anns = [{"id": k, "image_id": int(rng.integers(200)), "category_id": 1, "iscrowd": 0, "area": 1.0,
             "segmentation": [np.round(rng.uniform(0, 480, 100), 2).tolist() for _ in range(2)]}
            for k in range(5000)]
    text = json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES})
    del anns
    tracemalloc.start()
    try:
        idx = CocoIndex.from_json(text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert idx.coords.size == 5000 * 200 and len(idx.bad) == 0
    assert peak < 4 * len(text), f"indexing {len(text) / 1e6:.1f} MB of text allocated {peak / 1e6:.1f} MB at its peak"
