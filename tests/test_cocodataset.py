"""CocoDataset: shapes, alignment under augmentation, determinism across workers, both stores, bad samples."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from mllib.labels import classes
from mllib.loaders.cocodataset import CocoDataset, CocoStore, SampleError

from .cocofake import put_coco
from .conftest import load_script, put_real_val2017

ROOT = Path(__file__).resolve().parents[1]


def dataset(store, **kw):
    kw.setdefault("height", 64)
    kw.setdefault("width", 72)
    return CocoDataset.from_store(store, split="val2017", **kw)


def test_item_shapes_dtypes_and_values(any_store, tmp_path):
    put_coco(any_store, tmp_path)
    ds = dataset(any_store)
    assert len(ds) == 6
    image, label, mean, std = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 64, 72)
    assert label.dtype == torch.int64 and label.shape == (64, 72)
    assert mean.shape == (3,) and std.shape == (3,) and (std > 0).all()
    assert set(label.unique().tolist()) <= {0, 1, 2, 3, 255}
    valid = label != 255
    assert abs(float(image[:, valid].mean())) < 1.0  # normalized per image
    gray, _, m1, _ = dataset(any_store, imflags=cv2.IMREAD_GRAYSCALE)[0]
    assert gray.shape == (1, 64, 72) and m1.shape == (1,)
    f64 = dataset(any_store, astype="float64", normalize=([100, 100, 100], [50, 50, 50]))[0]
    assert f64[0].dtype == torch.float64 and torch.allclose(f64[2], torch.tensor([100.0, 100, 100]))


PALETTE = np.array([[10, 10, 10], [200, 40, 40], [40, 200, 40], [40, 40, 200]], np.uint8)


def put_coded(store, tmp_path):
    """One PNG image whose pixels encode their label: big rectangles of person, car and dog on void."""
    h, w = 90, 120
    rects = {1: (5, 5, 60, 80), 3: (65, 10, 115, 50), 18: (70, 55, 110, 85)}  # x0, y0, x1, y1
    lut = classes.load("coco").lut
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = PALETTE[0]
    anns = []
    for k, (cat, (x0, y0, x1, y1)) in enumerate(rects.items()):
        img[y0:y1, x0:x1] = PALETTE[lut[cat]]
        anns.append({"id": k + 1, "image_id": 1, "category_id": cat, "iscrowd": 0, "area": float((x1 - x0) * (y1 - y0)),
                     "segmentation": [[x0 - 0.5, y0 - 0.5, x1 - 0.5, y0 - 0.5, x1 - 0.5, y1 - 0.5, x0 - 0.5, y1 - 0.5]]})
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    store.put_bytes("datasets/coco/val2017/coded.png", buf.tobytes())
    d = {"images": [{"id": 1, "file_name": "coded.png", "height": h, "width": w}], "annotations": anns,
         "categories": [{"id": c, "name": str(c)} for c in rects]}
    store.put_bytes("datasets/coco/annotations/instances_val2017.json", json.dumps(d).encode())
    return img


@pytest.mark.parametrize("params", [
    dict(),
    dict(flipX=True, flipY=True, rotate=0, scale_min=1, scale_max=1),
    dict(rotate=40, scale_min=0.5, scale_max=1.6, offset=0.3, flipY=True),
    dict(enable_transform=False),
    dict(enable_transform=False, resize="fit"),
])
def test_image_and_label_stay_aligned(local_store, tmp_path, params):
    src = put_coded(local_store, tmp_path)
    assert np.array_equal(CocoStore(local_store).ds.raw(0)[1][6:59, 6:59], np.ones((53, 53)))  # the coding holds
    for seed in range(12):
        ds = dataset(local_store, height=80, width=100, normalize="none", seed=seed, **params)
        image, label, _, _ = ds[0]
        img = image.numpy().transpose(1, 2, 0)
        lab = label.numpy()
        # compare where the label is uniform in a 5x5 neighbourhood (bilinear blends across edges)
        lab_u8 = lab.astype(np.uint8)
        uniform = cv2.erode(lab_u8, np.ones((5, 5))) == cv2.dilate(lab_u8, np.ones((5, 5)))
        uniform[:2], uniform[-2:], uniform[:, :2], uniform[:, -2:] = False, False, False, False  # output edge
        inside = uniform & (lab != 255)
        assert inside.sum() > 500
        want = PALETTE[lab[inside]].astype(np.float32)
        assert np.abs(img[inside] - want).max() < 2.0, (seed, params)
        assert (np.abs(img[uniform & (lab == 255)]) < 1e-3).all()  # padding: image border, label ignore
        if "enable_transform" in params:
            break
    assert src.shape == (90, 120, 3)


def test_fit_keeps_whole_image(local_store, tmp_path):
    put_coded(local_store, tmp_path)
    lab = dataset(local_store, height=60, width=60, enable_transform=False, resize="fit", seed=0)[0][1].numpy()
    assert (lab != 255).sum() == pytest.approx(60 * 45, rel=0.05)  # 120x90 scaled by 0.5, padded to 60x60


def _all(ds, workers):
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=workers, shuffle=False)
    return [b for b in loader]


def test_same_torch_seed_same_samples_with_0_and_2_workers(local_store, tmp_path):
    put_coco(local_store, tmp_path)
    torch.manual_seed(7)
    a = _all(dataset(local_store), 0)
    torch.manual_seed(7)
    ds = dataset(local_store)
    b = _all(ds, 2)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])
    ds.set_epoch(1)
    c = _all(ds, 2)
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(a, c, strict=True))  # a new epoch, new augmentation
    torch.manual_seed(8)
    d = _all(dataset(local_store), 0)
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(a, d, strict=True))


def test_s3_store_with_two_workers(s3_store, tmp_path):
    put_coco(s3_store, tmp_path)
    ds = dataset(s3_store, seed=3)
    batches = _all(ds, 2)
    assert sum(len(b[0]) for b in batches) == 6
    assert torch.equal(batches[0][1], torch.stack([ds[0][1], ds[1][1]]))


def test_seed_call_shape(s3_server, s3_bucket, tmp_path):
    """The seed's snippet, as written, with a store from mllib.store.connect and a bucket."""
    from mllib import store

    s3 = store.connect(f"s3://{s3_bucket}")
    put_coco(s3, tmp_path, n=2)
    other = store.connect("s3://" + s3_bucket)  # bucket given separately, as the seed does

    class Args:
        trainingset = "datasets/coco/annotations/instances_val2017.json"
        train_image_path = "datasets/coco/val2017"
        height, width, imflags = 32, 48, cv2.IMREAD_COLOR

    args, bucket, class_dictionary = Args, s3_bucket, classes.load("coco")
    trainingset = CocoDataset(s3=other, bucket=bucket, dataset_desc=args.trainingset,
                              image_paths=args.train_image_path, class_dictionary=class_dictionary,
                              height=args.height, width=args.width, imflags=args.imflags, astype='float32')
    trainloader = torch.utils.data.DataLoader(trainingset)
    image, label, mean, stdev = next(iter(trainloader))
    assert image.shape == (1, 3, 32, 48) and label.shape == (1, 32, 48) and mean.shape == (1, 3)


def test_missing_and_corrupt_images(local_store, tmp_path, caplog):
    d = put_coco(local_store, tmp_path)
    name = d["images"][1]["file_name"]
    good = local_store.get_bytes(f"datasets/coco/val2017/{name}")
    local_store.put_bytes(f"datasets/coco/val2017/{name}", good[: len(good) // 2])
    local_store.delete(f"datasets/coco/val2017/{d['images'][2]['file_name']}")
    ds = dataset(local_store, seed=1)
    with pytest.raises(SampleError) as e:
        ds[1]
    assert name in str(e.value) and "corrupt" in str(e.value)
    with pytest.raises(SampleError) as e:
        ds[2]
    assert "missing" in str(e.value)
    ds = dataset(local_store, seed=1, skip_bad=True)
    batches = _all(ds, 0)
    assert sum(len(b[0]) for b in batches) == 6  # replaced, never None
    assert ds.bad_count() == 3  # index 1 (corrupt, 2 missing), then index 2 (missing)


def test_distributed_sampler_partitions(local_store, tmp_path):
    put_coco(local_store, tmp_path)
    ds = dataset(local_store, seed=0)
    parts = [list(torch.utils.data.DistributedSampler(ds, num_replicas=2, rank=r, shuffle=False)) for r in (0, 1)]
    assert sorted(parts[0] + parts[1]) == list(range(6))


def test_cocostore_and_script(local_store, tmp_path):
    put_coco(local_store, tmp_path, n=3)
    cs = CocoStore(local_store)
    img, label, present = cs[0]
    assert img.shape == (60, 80, 3) and label.shape == (60, 80) and present.tolist()[1] == 1.0
    assert cs.colorize(label).shape == (60, 80, 3) and cs.merge(img, label).dtype == np.uint8
    mod = load_script("datasets/cocostore.py")
    assert mod.CocoDataset is CocoDataset
    assert mod.main(["--store", local_store.url, "-n", "2", "--out", str(tmp_path / "s"), "--height", "40",
                     "--width", "50"]) == 0
    pics = sorted((tmp_path / "s").glob("*.png"))
    assert len(pics) == 2 and cv2.imread(str(pics[0])).shape == (40, 150, 3)


def test_real_coco_sample(local_store):
    put_real_val2017(local_store)
    ds = CocoDataset.from_store(local_store, split="val2017", height=256, width=256, seed=0)
    seen = set()
    for b in _all(ds, 2):
        seen |= set(b[1].unique().tolist())
    assert {0, 1, 2, 3, 255} <= seen
