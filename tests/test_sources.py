"""mllib.sources: every source type from data in its real layout, into records and PyTorch samples, pixel for pixel
against labels computed independently (Pillow palette indices, the ids the data was made from); clear errors naming
the file for unmapped values, size mismatches, unpaired files and unknown colours."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from mllib import images, sources
from mllib.loaders import SegmentationDataset
from mllib.records import read as records

from .cocofake import jpeg, put_coco
from .conftest import load_script
from .segfake import LABELMAP, OWN, expected, png, put_cvat, put_folder

cocorecord = load_script("datasets/cocorecord.py")
checkdataset = load_script("datasets/checkdataset.py")


def put_own(store, mode="P", n=5, **kw):
    truth = put_folder(store, "datasets/own", n=n, mode=mode, **kw)
    store.put_bytes("datasets/own/own.json", json.dumps(OWN).encode())
    return truth


FOLDER = {"type": "folder", "imagepath": "datasets/own/images", "labelpath": "datasets/own/masks",
          "classes_file": "datasets/own/own.json", "set": "train"}


def record_labels(store, name, set_name="train") -> dict[str, np.ndarray]:
    out = {}
    for rec in records.iter_serialized(store, records.shard_keys(store, name, set_name)):
        r = records.parse(rec)
        out[r["source_id"]] = r["label"]
    return out


def convert(store, spec, *extra):
    return cocorecord.main(["-trainingset_name", "t", "--store", store.url, "--no_progress", "--shard_images", "2",
                            "--datasets", json.dumps(spec), *extra])


@pytest.mark.parametrize("mode", ["P", "L", "I;16", "RGB"])
def test_folder_labels_exact_in_records_and_samples(any_store, mode):
    from PIL import Image

    truth = put_own(any_store, mode)
    if mode == "P":  # the stored palette PNG's indices, read independently, are the ids (never its colours)
        for stem, ids in truth.items():
            import io
            got = np.array(Image.open(io.BytesIO(any_store.get_bytes(f"datasets/own/masks/{stem}.png"))))
            assert np.array_equal(got, ids)
    assert convert(any_store, [FOLDER]) == 0
    labels = record_labels(any_store, "t")
    assert set(labels) == set(truth)
    for stem, ids in truth.items():
        assert np.array_equal(labels[stem], expected(ids)), stem
    # the description's pixels per trainId (counted from each label's value histogram) match a count of the truth
    want = np.bincount(np.concatenate([expected(ids).ravel() for ids in truth.values()]), minlength=256)
    desc = records.description(any_store, "t")
    assert desc["sets"]["train"]["pixels"] == {str(k): int(v) for k, v in enumerate(want) if v}
    ds = SegmentationDataset(any_store, FOLDER, height=40, width=56, enable_transform=False, seed=0)
    assert len(ds) == 5 and ds.classes.classes == 3
    for i in range(len(ds)):
        image, label, _, _ = ds[i]
        stem = ds.source.item(i)[1]
        assert image.shape == (3, 40, 56) and np.array_equal(label.numpy(), expected(truth[stem]))


def test_folder_one_prefix_by_suffixes_and_split_list(local_store):
    truth = put_folder(local_store, "datasets/one", n=4, label_dir="images", label_suffix="_mask.png", mode="L")
    local_store.put_bytes("datasets/one/images/notes.txt", b"not an image")
    local_store.put_bytes("datasets/one/train.txt", b"img_00_001\nimg_00_003\n\n# a comment\n")
    spec = {"type": "folder", "dataset": "one", "imagepath": "images", "image_suffix": ".jpg",
            "label_suffix": "_mask.png", "classes_file": json.dumps(OWN) and None}
    spec["classes_file"] = None
    src = sources.open_source(local_store, spec, sources.load_classes(None, OWN))
    assert len(src) == 4 and all(src.label_key(i).endswith("_mask.png") for i in range(4))
    src = sources.open_source(local_store, {**spec, "split_file": "train.txt"}, sources.load_classes(None, OWN))
    assert [src.item(i)[1] for i in range(len(src))] == ["img_00_001", "img_00_003"]
    lab = src.label(0, 40, 56, "x")
    assert np.array_equal(lab, expected(truth["img_00_001"]))
    with pytest.raises(sources.SourceError, match="do not tell them apart"):
        sources.open_source(local_store, {**spec, "image_suffix": ".png", "label_suffix": "_mask.png"})


def test_cvat_export_into_records_with_its_labelmap(any_store):
    truth = put_cvat(any_store, "datasets/cvat", {"train": 3, "val": 2})
    spec = {"type": "cvat", "imagepath": "datasets/cvat", "set": "train",
            "split_file": "datasets/cvat/ImageSets/Segmentation/train.txt"}
    assert convert(any_store, [spec, {**spec, "set": "val", "split_file": "datasets/cvat/ImageSets/Segmentation/val.txt"}]) == 0
    desc = records.description(any_store, "t")
    assert desc["class_names"] == [n for n, _ in LABELMAP] and desc["classes"]["classes"] == 3
    assert desc["sets"]["train"]["length"] == 3 and desc["sets"]["val"]["length"] == 2
    got = {**record_labels(any_store, "t", "train"), **record_labels(any_store, "t", "val")}
    assert set(got) == set(truth)
    for name, ids in truth.items():
        assert np.array_equal(got[name], ids), name  # labelmap line k is class k, trainId k
    # every subset when no split_file is given; labelmap.txt read once; a classes_file maps labelmap ids into
    # another class space
    reads = []
    get_bytes = any_store.get_bytes
    any_store.get_bytes = lambda key: reads.append(key) or get_bytes(key)
    src = sources.open_source(any_store, {"type": "cvat", "imagepath": "datasets/cvat"})
    del any_store.get_bytes
    assert len(src) == 5 and reads.count("datasets/cvat/labelmap.txt") == 1
    two = {"background": 0, "ignore": 255, "classes": 2, "objects": [
        {"id": 0, "name": "background", "trainId": 0, "color": [0, 0, 0]},
        {"id": 1, "name": "cat", "trainId": 1, "color": [1, 1, 1]}]}  # car (id 2) not listed: unmapped -> ignore
    any_store.put_bytes("datasets/cvat/two.json", json.dumps(two).encode())
    src = sources.open_source(any_store, {"type": "cvat", "imagepath": "datasets/cvat", "classes_file": "datasets/cvat/two.json"})
    assert src.classes.classes == 2
    name = src.item(0)[1]
    h, w = truth[name].shape
    assert np.array_equal(src.label(0, h, w, "x"), expected(truth[name], {0: 0, 1: 1}))


def test_sources_of_different_types_combine_into_one_set(local_store, tmp_path):
    put_coco(local_store, tmp_path, "val2017", 3, seed=1, hw=(48, 64))
    put_own(local_store, "P", n=2)
    four = {**OWN, "classes": 4, "names": ["void", "person", "vehicle", "animal"], "objects": [
        {"id": 0, "name": "background", "trainId": 0, "color": [0, 0, 0]},
        {"id": 1, "name": "cat", "trainId": 3, "color": [1, 0, 0]},
        {"id": 2, "name": "dog", "trainId": 3, "color": [2, 0, 0]},
        {"id": 5, "name": "car", "trainId": 2, "color": [3, 0, 0]}]}
    local_store.put_bytes("datasets/own/own_coco.json", json.dumps(four).encode())
    specs = [{"jsonpath": "annotations/instances_val2017.json", "imagepath": "val2017", "set": "val"},
             {**FOLDER, "classes_file": "datasets/own/own_coco.json", "set": "val"}]
    assert cocorecord.main(["-trainingset_name", "mix", "--store", local_store.url, "--no_progress",
                            "--classes_file", "coco", "--datasets", json.dumps(specs)]) == 0
    desc = records.description(local_store, "mix")
    assert desc["sets"]["val"]["length"] == 5 and desc["class_names"] == ["void", "person", "vehicle", "animal"]
    ds = SegmentationDataset(local_store, specs, classes="coco", height=48, width=64, enable_transform=False, seed=0)
    assert len(ds) == 5 and len({ds.source.item(i)[0] for i in range(5)}) == 5
    with pytest.raises(sources.SourceError, match="entry 0 uses class dictionary own with 3 classes; the set's coco"):
        SegmentationDataset(local_store, FOLDER, classes="coco", height=48, width=64)  # one entry is checked too


def test_unmapped_values_are_errors_naming_the_file(any_store, tmp_path, capsys):
    put_own(any_store, "L", n=3)
    bad = np.zeros((40, 56), np.uint8)
    bad[:4, :5] = 7  # a stray 7: in no dictionary entry
    any_store.put_bytes("datasets/own/masks/img_00_001.png", png(bad, "L"))
    assert convert(any_store, [FOLDER]) == 1
    err = capsys.readouterr().err
    assert "datasets/own/masks/img_00_001.png" in err and "7 (20 px)" in err and "own" in err
    assert convert(any_store, [FOLDER], "--skip_bad") == 0  # skipped and listed
    skipped = records.description(any_store, "t")["sets"]["train"]["skipped"]
    assert len(skipped) == 1 and "img_00_001.png" in skipped[0]["reason"]
    ds = SegmentationDataset(any_store, FOLDER, height=40, width=56, seed=0)
    row = [ds.source.item(i)[1] for i in range(3)].index("img_00_001")
    with pytest.raises(Exception, match=r"img_00_001\.png holds values .* 7 \(20 px\)"):
        ds[row]
    report = tmp_path / "r.json"
    assert checkdataset.main(["--store", any_store.url, "--datasets", json.dumps([FOLDER]), "--report", str(report),
                              "--sheet", "", "--no_progress", "--jobs", "1"]) == 1
    r = json.loads(report.read_text())
    assert r["problems"]["unmapped"] == 1 and r["details"]["unmapped"][0]["values"] == {"7": 20}
    assert r["details"]["unmapped"][0]["key"].endswith("masks/img_00_001.png")
    assert "img_00_001.png" in capsys.readouterr().err


def test_unknown_colour_size_mismatch_and_unpaired_files(local_store, tmp_path, capsys):
    put_own(local_store, "RGB", n=4)
    rgb_bad = np.zeros((40, 56, 3), np.uint8)
    rgb_bad[0, 0] = (9, 9, 9)  # a colour of no dictionary entry
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(rgb_bad).save(buf, format="PNG")
    local_store.put_bytes("datasets/own/masks/img_00_000.png", buf.getvalue())
    local_store.put_bytes("datasets/own/masks/img_00_001.png", png(np.zeros((20, 56), np.uint8), "RGB"))
    local_store.delete("datasets/own/masks/img_00_002.png")  # an image without a label
    local_store.put_bytes("datasets/own/masks/orphan.png", png(np.zeros((40, 56), np.uint8), "RGB"))
    src = sources.open_source(local_store, FOLDER)
    assert src.unpaired == [{"key": "datasets/own/masks/orphan.png", "reason": "label without an image"}]
    with pytest.raises(sources.SourceError, match="orphan.png: label without an image"):
        SegmentationDataset(local_store, FOLDER, height=40, width=56)
    with pytest.raises(sources.UnmappedLabel, match=r"img_00_000.png holds colours .* #090909 \(1 px\)"):
        src.label(0, 40, 56, "x")
    with pytest.raises(sources.LabelError, match=r"img_00_001.png is 20x56 but its image is 40x56"):
        src.label(1, 40, 56, "x")
    with pytest.raises(sources.MissingLabel, match="img_00_002.jpg: no label"):
        src.label(2, 40, 56, "x")
    assert convert(local_store, [FOLDER]) == 1
    assert "orphan.png" in capsys.readouterr().err
    report = tmp_path / "r.json"
    assert checkdataset.main(["--store", local_store.url, "--datasets", json.dumps([FOLDER]), "--report",
                              str(report), "--sheet", "", "--no_progress", "--jobs", "1"]) == 1
    r = json.loads(report.read_text())
    assert {k: v for k, v in r["problems"].items() if v} == {"unmapped": 1, "size_mismatch": 1, "missing_label": 1,
                                                              "unpaired": 1}
    assert r["details"]["unmapped"][0]["values"] == {"#090909": 1} and r["labels_checked"] == 1


def test_binary_mask_warns_why(local_store, caplog):
    put_own(local_store, "L", n=1)
    mask = np.zeros((40, 56), np.uint8)
    mask[5:20, 5:30] = 255
    local_store.put_bytes("datasets/own/masks/img_00_000.png", png(mask, "L"))
    src = sources.open_source(local_store, FOLDER)
    with caplog.at_level(logging.WARNING):
        lab = src.label(0, 40, 56, "x")
    assert (lab[5:20, 5:30] == 255).all()
    assert "holds only 0 and 255" in caplog.text and "ignore value of class dictionary own" in caplog.text


def test_checkdataset_counts_weights_and_sheet(s3_store, tmp_path, capsys, monkeypatch):
    import mllib.sources.check

    monkeypatch.setattr(mllib.sources.check, "PROCESS_ITEMS", 1)  # two pool processes even for 6 labels
    truth = put_own(s3_store, "P", n=6)
    report, sheet = tmp_path / "r.json", tmp_path / "s.png"
    assert checkdataset.main(["--store", s3_store.url, "--datasets", json.dumps([FOLDER]), "--report", str(report),
                              "--sheet", str(sheet), "--no_progress", "--jobs", "2"]) == 0
    r = json.loads(report.read_text())
    want = np.zeros(256, np.int64)
    images_with = np.zeros(256, np.int64)
    for ids in truth.values():
        t = np.bincount(expected(ids).ravel(), minlength=256)
        want += t
        images_with += t > 0
    assert [c["pixels"] for c in r["class_table"]] == want[:3].tolist()
    assert [c["images"] for c in r["class_table"]] == images_with[:3].tolist()
    assert r["ignore_pixels"] == int(want[255]) and r["ok"] and r["labels_checked"] == 6
    f = want[:3] / want[:3].sum()
    assert np.allclose(r["class_weights"]["inverse"], 1 / (3 * f), rtol=1e-5)
    assert np.isclose(np.sum(f * np.array(r["class_weights"]["inverse"])), 1.0, rtol=1e-5)
    assert r["rarest"][0]["pixels"] == int(want[:3].min())
    assert images.info(sheet.read_bytes())[0] == "png"
    assert "checked 6 of 6 labels" in capsys.readouterr().out


def test_checkdataset_on_coco_and_classes_from_the_store(local_store, tmp_path):
    put_coco(local_store, tmp_path, "val2017", 4, seed=1, hw=(48, 64))
    report = tmp_path / "r.json"
    assert checkdataset.main(["coco", "--set", "val", "--store", local_store.url, "--report", str(report), "--sheet",
                              "", "--no_progress", "--jobs", "1"]) == 0
    r = json.loads(report.read_text())
    assert r["labels_checked"] == 4 and r["classes"] == "coco"
    assert all(c["images"] == 4 for c in r["class_table"])  # person, car, dog and background in every image


def test_loader_is_the_read_ahead_path_and_deterministic(local_store):
    from mllib.loaders.ahead import ReadAheadBatches
    from mllib.loaders.slots import SlotCollate

    put_own(local_store, "P", n=6)
    ds = SegmentationDataset(local_store, FOLDER, height=32, width=32, seed=4)
    dl = ds.loader(batch_size=4, num_workers=2)
    assert isinstance(dl.batch_sampler, ReadAheadBatches) and isinstance(dl.collate_fn, SlotCollate)

    def epoch(e):
        ds.set_epoch(e)
        return [(img.clone(), lab.clone()) for img, lab, _, _ in dl]

    a, b, a2 = epoch(0), epoch(1), epoch(0)
    assert [x[0].shape[0] for x in a] == [4, 2]
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, a2, strict=True))
    assert not torch.equal(a[0][0], b[0][0])  # another order and augmentation in another epoch
    ref = [ds[i] for i in np.random.default_rng([4, 0, 0x5EED]).permutation(6)[:4].tolist()]
    ds.set_epoch(0)
    assert torch.equal(a[0][1], torch.stack([r[1] for r in ref]))


def test_registered_names_and_spec_errors(local_store):
    assert sources.types() == ["cityscapes", "coco", "cvat", "folder"]
    assert [s.set for s in sources.resolve("coco")] == ["train", "val"]
    with pytest.raises(sources.SourceError, match="no registered dataset 'ade'"):
        sources.resolve("ade")
    for spec, says in [({"type": "zip"}, "type must be one of"), ({"type": "folder"}, "needs 'imagepath'"),
                       ({"type": "folder", "imagepath": "x", "label_format": "rgb"}, "label_format must be"),
                       ({"type": "folder", "imagepath": "x", "colour": "y"}, "unknown field")]:
        with pytest.raises(sources.SourceError, match=says):
            sources.parse_specs(spec)
    local_store.put_bytes("datasets/own/images/a.jpg", jpeg(8, 8, 0))
    with pytest.raises(Exception, match="class dictionary 'nope.json' not found"):
        sources.open_source(local_store, {**FOLDER, "classes_file": "nope.json"})


def test_network2d_trains_from_a_folder_source(local_store, tmp_path, capsys):
    put_own(local_store, "P", n=6)
    net = load_script("networks/network2d.py")
    metrics = tmp_path / "m.jsonl"
    assert net.main(["--store", local_store.url, "--source", json.dumps([FOLDER]), "--height", "32", "--width", "32",
                     "--batch_size", "2", "--model_width", "4", "--model_depth", "2", "--num_workers", "0",
                     "--no_progress", "--metrics_file", str(metrics), "--model_name", "own", "--epochs", "1"]) == 0
    line = json.loads(metrics.read_text().splitlines()[0])
    assert set(line["val"]["iou"]) == {"background", "animal", "vehicle"}  # the source's own 3 classes
    assert "own: epoch 0" in capsys.readouterr().out


def test_conversion_workers_take_the_folder_listing_instead_of_listing_again(local_store):
    import pickle

    from mllib.records.sources import Worker

    put_own(local_store, "L", n=4)
    specs = sources.resolve([FOLDER])
    main = Worker(local_store, specs, None, "class", False)
    assert main.items(0) == 4
    shipped = pickle.loads(pickle.dumps(main.shippable()))  # what the spawned processes receive
    assert set(shipped) == {0}
    # a listing taken once: an object added afterwards is not in the workers' items (they did not list again)
    first = main.source(0)
    local_store.put_bytes("datasets/own/images/zz.jpg", local_store.get_bytes(first.image_keys[0]))
    local_store.put_bytes("datasets/own/masks/zz.png", local_store.get_bytes(first.label_keys[0]))
    assert Worker(local_store, specs, None, "class", False, shipped).items(0) == 4
    assert Worker(local_store, specs, None, "class", False).items(0) == 5
    w = Worker(local_store, specs, None, "class", False, shipped)
    rec, counts, skipped = w.example(0, 0)
    assert rec is not None and skipped is None


@pytest.mark.parametrize("mode, offset", [("P", 0), ("L", 1), ("I;16", 1), ("I;16", 0), ("RGB", 0)])
def test_label_counts_from_the_value_histogram_equal_a_count_of_the_trainids(mode, offset):
    """What a conversion counts per trainId, taken from the histogram the unmapped check made (shifted for
    COCO-Stuff-style "id - 1" labels), equals a count of the trainIds' pixels."""
    from mllib.labels import classes
    from mllib.sources.base import ColorTable, LabelReader

    d = classes.ClassDictionary(OWN)
    rng = np.random.default_rng(7)
    ids = rng.choice([o["id"] for o in OWN["objects"] if o["id"] >= offset], size=(37, 53)).astype(np.uint8)
    if offset:  # stored as id - 1, 255 for unlabeled (ignore, kept)
        ids = np.where(rng.random(ids.shape) < 0.1, 255, ids.astype(np.int64) - 1).astype(np.uint8)
    reader = LabelReader(d, "color" if mode == "RGB" else "index", ColorTable.of_dictionary(d), offset=offset)
    train, counts = reader.train_ids_counts(png(ids, mode), "k.png", ids.shape)
    assert np.array_equal(train, reader.train_ids(png(ids, mode), "k.png", ids.shape))
    assert np.array_equal(counts, np.bincount(train.ravel(), minlength=256))
    assert counts.sum() == ids.size and len(counts) == 256


@pytest.mark.parametrize("name, offset", [("ade20k", 0), ("cocostuff", 1), ("voc", 0), ("coco", 0)])
def test_labels_that_map_by_one_step_equal_the_table(name, offset):
    """ADE20K's maps hold id - 1 with 0 ignore, so every value maps to value - 1 modulo 256 and the reader adds
    instead of looking up each pixel. With the ignore value 255 present (it stays 255, not 254), or values that map
    by different steps, it looks them up: the trainIds equal the dictionary's table applied pixel by pixel in
    every case."""
    from mllib.labels import classes
    from mllib.sources.base import LabelReader

    d = classes.load(name)
    reader = LabelReader(d, "index", None, offset=offset)
    table = d.lut if not offset else d.lut[np.minimum(sources.base.shift_table(256, offset, d.ignore), 255)]
    allowed = np.flatnonzero(d.mapped) if not offset else np.flatnonzero(table != 255)
    rng = np.random.default_rng(11)
    cases = {"regions": np.kron(rng.choice(allowed[allowed != d.ignore], (6, 8)), np.ones((7, 9))),
             "with ignore": np.pad(np.kron(rng.choice(allowed[allowed != d.ignore], (6, 8)), np.ones((7, 9))), 2,
                                   constant_values=d.ignore),
             "one value": np.full((5, 5), allowed[allowed != d.ignore][-1])}
    for what, ids in cases.items():
        ids = ids.astype(np.uint8)
        train, counts = reader.train_ids_counts(png(ids, "L"), "k.png", ids.shape)
        assert np.array_equal(train, table[ids]), (name, what)
        assert np.array_equal(counts, np.bincount(train.ravel(), minlength=256)), (name, what)
    if name == "ade20k":  # the case the addition is for: 0 -> 255 and v -> v - 1 in one step
        ids = np.arange(151, dtype=np.uint8).reshape(1, 151)
        assert np.array_equal(reader.train_ids(png(ids, "L"), "k.png", None),
                              np.concatenate([[255], np.arange(150)]).astype(np.uint8)[None])


@pytest.mark.parametrize("spng", [True, False])
def test_grey_labels_read_the_same_through_libspng_and_opencv(spng, monkeypatch):
    """8-bit grey label PNGs (as Pillow writes them, with row filters, and as mllib writes them) are read through
    libspng where it is installed and through OpenCV otherwise: the same values as Pillow reads, and a damaged file is
    a LabelError naming it on either path."""
    import io

    from PIL import Image

    from mllib.labels.render import LabelError
    from mllib.sources import base

    monkeypatch.setattr(base, "_SPNG", [] if spng else [None])
    rng = np.random.default_rng(3)
    ids = np.repeat(np.repeat(rng.integers(0, 151, (12, 17)), 9, 0), 7, 1).astype(np.uint8)
    ids[::5] = rng.integers(0, 256, ids.shape[1])  # rows that Pillow's filters treat differently
    for data in (png(ids, "L"), images.encode_label_png(ids)):
        got, colour = base.read_label(data, "x/a.png", "index")
        assert not colour and got.dtype == np.uint8
        assert np.array_equal(got, np.array(Image.open(io.BytesIO(data)))) and np.array_equal(got, ids)
    assert (base._spng() is not None) == spng
    data = png(ids, "L")
    idat = data.index(b"IDAT")
    for bad in (data[: len(data) // 2], data[:idat + 10] + bytes([data[idat + 10] ^ 0xFF]) + data[idat + 11:]):
        with pytest.raises(LabelError, match="x/a.png"):
            base.read_label(bad, "x/a.png", "index")


@pytest.mark.parametrize("spng", [True, False])
def test_a_label_png_with_a_flipped_bit_is_refused_not_read_as_other_values(spng, monkeypatch):
    """A bit flipped anywhere in a grey label PNG's image data, its Adler-32 or a chunk's CRC (a disk or transfer
    fault) is a LabelError naming the file on either decoder path: libspng ignores CRCs and Adler-32 and would return
    other values for most of these, libpng checks the CRCs."""
    import struct

    from mllib.labels.render import LabelError
    from mllib.sources import base

    monkeypatch.setattr(base, "_SPNG", [] if spng else [None])
    rng = np.random.default_rng(5)
    ids = np.repeat(np.repeat(rng.integers(0, 151, (12, 17)), 9, 0), 7, 1).astype(np.uint8)
    data = png(ids, "L")
    p = data.index(b"IDAT") - 4
    n = struct.unpack(">I", data[p:p + 4])[0]
    positions = sorted(set(rng.integers(p + 8, p + 12 + n, 60).tolist()) | {p + 8 + n - 1, p + 8 + n + 2})
    for i in positions:  # the compressed rows, the Adler-32 (the data's last 4 bytes) and the CRC
        bad = data[:i] + bytes([data[i] ^ (1 << int(rng.integers(0, 8)))]) + data[i + 1:]
        with pytest.raises(LabelError, match="x/a.png"):
            base.read_label(bad, "x/a.png", "index")
    assert np.array_equal(base.read_label(data, "x/a.png", "index")[0], ids)


def test_a_conversion_lists_every_folder_at_once(local_store, monkeypatch):
    """Two folder entries (train, val), images and labels under prefixes of their own: the four listings are read at
    once, not one after the other (each waits here until all four have started; in turn, the first never ends)."""
    import threading

    from mllib.records.sources import Worker

    put_own(local_store, "L", n=3)
    put_folder(local_store, "datasets/other", n=2, mode="L")
    val = dict(FOLDER, imagepath="datasets/other/images", labelpath="datasets/other/masks", set="val")
    started, barrier, real = [], threading.Barrier(4, timeout=20), local_store.list

    def listing(prefix, *a, **kw):
        started.append(prefix)
        if len(started) <= 4:
            barrier.wait()  # BrokenBarrierError after 20 s unless the four are in flight together
        return real(prefix, *a, **kw)

    monkeypatch.setattr(local_store, "list", listing)
    w = Worker(local_store, sources.resolve([FOLDER, val]), None, "class", False)
    assert [len(s) for s in w.open_all()] == [3, 2]
    assert sorted(started) == ["datasets/other/images/", "datasets/other/masks/", "datasets/own/images/",
                               "datasets/own/masks/"]


def test_one_folder_of_images_and_labels_is_listed_once(local_store, monkeypatch):
    """Images and labels under one prefix, told apart by suffix: one listing serves both."""
    put_folder(local_store, "datasets/one", n=3, label_dir="images", label_suffix="_mask.png", mode="L")
    calls, real = [], local_store.list
    monkeypatch.setattr(local_store, "list", lambda prefix, *a, **kw: calls.append(prefix) or real(prefix, *a, **kw))
    spec = {"type": "folder", "dataset": "one", "imagepath": "images", "image_suffix": ".jpg",
            "label_suffix": "_mask.png"}
    src = sources.open_source(local_store, spec, sources.load_classes(None, OWN))
    assert len(src) == 3 and all(src.label_key(i).endswith("_mask.png") for i in range(3))
    assert calls == ["datasets/one/images/"]


def test_an_items_image_and_label_are_read_at_once(local_store, monkeypatch):
    """From a remote store an item's image and label are read at the same time (one round trip's wait, not two):
    here each read waits until the other has started (in turn, the image's would never end). A label's read error
    is raised at its item, as before; a label not in the store is None."""
    import threading

    from mllib.store import StoreError

    put_own(local_store, "L", n=2)
    src = sources.resolve([FOLDER])[0]
    src = sources.get(src.type)(local_store, src, sources.entry_classes(local_store, src, None))
    image, label = src.item(0)[0], src.label_key(0)
    want = {"image": local_store.get_bytes(image), "label": local_store.get_bytes(label)}
    barrier, real, seen = threading.Barrier(2, timeout=20), local_store.get_bytes, []

    def get(key, *a, **kw):
        seen.append(key)
        if key in (image, label) and len(seen) <= 2:
            barrier.wait()  # BrokenBarrierError after 20 s unless both reads are in flight together
        if key == "broken":
            raise StoreError("broken: connection reset")
        return real(key, *a, **kw)

    monkeypatch.setattr(local_store, "get_bytes", get)
    monkeypatch.setattr(local_store, "local_path", lambda key="": None)  # as an S3 store
    assert src.fetch(0) == want and sorted(seen) == sorted([image, label])
    monkeypatch.setattr(src, "label_keys", ["broken", "datasets/own/masks/gone.png"])
    with pytest.raises(StoreError, match="broken"):
        src.fetch(0)
    assert src.fetch(1)["label"] is None and src.fetch(1)["image"] == real(src.item(1)[0])
