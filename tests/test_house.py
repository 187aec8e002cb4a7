"""Behaviour that had no test of its own: stuff annotations on generated data, the bucket override on both
backends, unsupported store URLs, zip members over the streaming threshold, the class-count check of a combined
set, and the store CLI's success paths."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest
from pycocotools import mask as maskutil

from mllib import store as mstore
from mllib.get import extract
from mllib.labels import classes
from mllib.labels.cocoindex import CocoIndex
from mllib.labels.render import Renderer
from mllib.loaders.cocodataset import CocoDataset
from mllib.store import PART_SIZE

from .cocofake import put_coco
from .conftest import load_script


def _rle(mask: np.ndarray) -> dict:
    r = maskutil.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(r["size"]), "counts": r["counts"].decode()}


def test_stuff_annotations_on_generated_data(local_store, tmp_path):
    """Stuff is painted first, things over it, 'other' (183) is left out; as pycocotools' masks say."""
    d = put_coco(local_store, tmp_path, n=2, hw=(40, 50))
    h, w = 40, 50
    sky = np.zeros((h, w), np.uint8)
    sky[:20] = 1
    other = np.zeros((h, w), np.uint8)
    other[20:] = 1
    stuff = {"images": d["images"], "categories": [{"id": 157, "name": "sky-other"}, {"id": 183, "name": "other"}],
             "annotations": [{"id": 900 + k, "image_id": im["id"], "category_id": c, "iscrowd": 0,
                              "segmentation": _rle(m), "area": float(m.sum())}
                             for k, im in enumerate(d["images"]) for c, m in ((157, sky), (183, other))]}
    local_store.put_bytes("datasets/coco/annotations/stuff_val2017.json", json.dumps(stuff).encode())
    coco = classes.load("coco").to_dict()
    for o in coco["objects"]:
        if o["id"] == 157:
            o["trainId"] = 2  # sky as "vehicle", so the test can see where stuff was painted
    things = CocoIndex.load(local_store, "datasets/coco/annotations/instances_val2017.json")
    st = CocoIndex.load(local_store, "datasets/coco/annotations/stuff_val2017.json")
    r = Renderer(classes.load(coco))
    no_stuff = Renderer(classes.load("coco")).render(things, 0)
    label = r.render(things, 0, st, st.row_of(int(things.image_id[0])))
    thing = no_stuff != 0
    assert (label[:20][~thing[:20]] == 2).all()  # stuff where no thing covers it
    assert (label[20:][~thing[20:]] == 0).all()  # 'other' is not painted
    assert np.array_equal(label[thing], no_stuff[thing])  # things over stuff
    ds = CocoDataset.from_store(local_store, split="val2017", classes=coco, stuff=True, enable_transform=False,
                                height=40, width=50, normalize="none")
    assert np.array_equal(ds[0][1].numpy(), label)


def test_bucket_override_local_store(tmp_path):
    root = mstore.connect(tmp_path / "root")
    other = root.with_bucket("other")
    assert other.local_path() == (tmp_path / "root" / "other").resolve()
    put_coco(other, tmp_path, n=2)
    ds = CocoDataset(s3=root, bucket="other", dataset_desc="datasets/coco/annotations/instances_val2017.json",
                     image_paths="datasets/coco/val2017", height=32, width=32, seed=0)
    assert len(ds) == 2 and ds[1][0].shape == (3, 32, 32)


@pytest.mark.s3
def test_bucket_override_another_s3_bucket(s3_server, s3_bucket, tmp_path):
    s3_server.create_bucket(s3_bucket + "-b")
    a = mstore.connect(f"s3://{s3_bucket}/pre")
    b = a.with_bucket(s3_bucket + "-b")
    assert b.url == f"s3://{s3_bucket}-b/pre" and b.endpoint_url == a.endpoint_url
    put_coco(b, tmp_path, n=2)
    ds = CocoDataset(s3=a, bucket=s3_bucket + "-b", dataset_desc="datasets/coco/annotations/instances_val2017.json",
                     image_paths="datasets/coco/val2017", height=32, width=32, seed=0)
    assert len(ds) == 2 and ds[0][0].shape == (3, 32, 32)
    assert not any(True for _ in a.list("datasets/"))  # nothing read from or written to bucket a


@pytest.mark.parametrize("url", ["gs://bucket/x", "http://host/bucket", "ftp://host/x", "s3://"])
def test_unsupported_store_urls(url):
    with pytest.raises(mstore.StoreError) as e:
        mstore.connect(url, check=False)
    assert "s3://bucket" in str(e.value)


@pytest.mark.parametrize("url", ["s3://b/../x", "s3://b/a/./c", "s3://b/a//c", "s3://b/.."])
def test_a_store_prefix_with_dot_segments_is_refused(url):
    with pytest.raises(mstore.StoreError, match="may not hold"):
        mstore.connect(url, check=False)
    assert mstore.connect("s3://b/a/c/", check=False).prefix == "a/c"


def test_zip_member_over_the_streaming_threshold(any_store, tmp_path):
    """A member over 4 parts is streamed (multipart on S3), not read into memory; it arrives whole."""
    size = PART_SIZE * 4 + 12345
    block = os.urandom(1 << 20)
    z = tmp_path / "big.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_STORED) as zf, zf.open("annotations/big.json", "w") as f:
        for i in range(0, size, len(block)):
            f.write(block[: min(len(block), size - i)])
    report = extract.extract_to_store(z, any_store, "datasets/coco", bar=False, jobs=2)
    assert report.stored == 1 and any_store.size("datasets/coco/annotations/big.json") == size
    with any_store.open("datasets/coco/annotations/big.json") as f:
        first = f.read(len(block))
    assert first == block
    if isinstance(any_store, mstore.S3Store):
        assert any_store.checksum(next(any_store.list("datasets/coco/annotations/big.json"))).endswith("-5")


def test_class_count_mismatch_is_a_clear_error(local_store, tmp_path, capsys):
    put_coco(local_store, tmp_path, n=2)
    rec = load_script("datasets/cocorecord.py")
    spec = json.dumps([{"jsonpath": "annotations/instances_val2017.json", "imagepath": "val2017", "set": "val",
                        "classes_file": "cityscapes"}])
    assert rec.main(["-trainingset_name", "t", "--store", local_store.url, "--no_progress", "--datasets", spec]) == 1
    err = capsys.readouterr().err
    assert "19 classes" in err and "4" in err and "classes_file" in err
    assert not local_store.exists("trainingsets/t/description.json")


def test_storecli_success_paths(local_store, tmp_path, capsys):
    cli = load_script("mllib/storecli.py")
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "x.txt").write_bytes(b"xx")
    (src / "y.bin").write_bytes(b"y" * 1000)
    assert cli.main(["--store", local_store.url, "put_dir", str(src), "up"]) == 0
    assert "2 transferred" in capsys.readouterr().out and local_store.get_bytes("up/a/x.txt") == b"xx"
    assert cli.main(["--store", local_store.url, "ls", "up/"]) == 0
    out = capsys.readouterr().out
    assert "up/a/x.txt" in out and "up/y.bin" in out and "2 objects" in out
    assert cli.main(["--store", local_store.url, "get_dir", "up", str(tmp_path / "down")]) == 0
    assert (tmp_path / "down" / "a" / "x.txt").read_bytes() == b"xx"
    assert cli.main(["--store", local_store.url, "get_dir", "up", str(tmp_path / "down")]) == 0
    assert "2 skipped" in capsys.readouterr().out  # unchanged files are not transferred again
