"""Benchmark: CocoDataset samples/s against the floor and a reference pipeline; worker scaling; index memory.

    python3 bench/loader.py [--shared ../shared/data] [--repeat 4] [--full_index]

On real COCO JPEGs (../shared/data/coco-real, repeated) in a local store, 512x512 with full augmentation, in one
run:
  CocoDataset : store read, decode, label render, one warp of image and label, normalize (per worker process)
  floor       : decode + one warp of the image + one of the label (label given)
  reference   : pycocotools COCO + annToMask per annotation + per-class max, then the same augmentation done
                the way users run it today (scale, rotate, flip, crop/pad, normalize: one step at a time)
  reference1  : the same reference labels, but CocoDataset's single-warp augmentation (shows where the gain is)
Goals: >= 0.6x the floor, >= 1.5x the reference. Then DataLoader samples/s with 1 and 2 workers, and (--full_index,
default on) a generated index the size of instances_train2017 (118k images, 860k annotations): dataset
construction time from the cached index, and each of 2 workers' RSS growth over a full pass (goal <= 50 MB).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from realcoco import DEFAULT_SHARED, put_repeated, require_sample

from mllib import store as mstore
from mllib.augment import affine
from mllib.labels import classes
from mllib.labels.cocoindex import INDEX_VERSION, CocoIndex
from mllib.loaders.cocodataset import CocoDataset, keep_freed_memory


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def augment(ds, i, img, label, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
    """The same augmentation as users run it today: one step at a time, torchvision-style (random scale, rotate,
    flip, crop/pad, then float normalization), each step a pass over image and label, with the same random
    parameters CocoDataset would draw."""
    rng = np.random.default_rng([ds.seed, 0, i])
    fx, fy = rng.random() < 0.5, rng.random() < 0.5
    angle, s = rng.uniform(-ds.rotate, ds.rotate), rng.uniform(ds.scale_min, ds.scale_max)
    h, w = label.shape
    size = (max(1, round(w * s)), max(1, round(h * s)))
    img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
    rot = cv2.getRotationMatrix2D(((size[0] - 1) / 2, (size[1] - 1) / 2), angle, 1.0)
    img = cv2.warpAffine(img, rot, size, flags=cv2.INTER_LINEAR)
    label = cv2.warpAffine(label, rot, size, flags=cv2.INTER_NEAREST, borderValue=255)
    if fx:
        img, label = cv2.flip(img, 1), cv2.flip(label, 1)
    if fy:
        img, label = cv2.flip(img, 0), cv2.flip(label, 0)
    ph, pw = max(0, 512 - size[1]), max(0, 512 - size[0])
    img = np.pad(img, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    label = np.pad(label, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)), constant_values=255)
    y0 = int(rng.integers(0, img.shape[0] - 512 + 1))
    x0 = int(rng.integers(0, img.shape[1] - 512 + 1))
    img, label = img[y0 : y0 + 512, x0 : x0 + 512], label[y0 : y0 + 512, x0 : x0 + 512]
    x = (img.astype(np.float32) / 255.0 - np.float32(mean)) / np.float32(std)
    return np.ascontiguousarray(x.transpose(2, 0, 1)), label.astype(np.int64)


def reference(ds, coco, lut, datas, n, single_warp=False):
    from pycocotools.coco import COCO  # noqa: F401 - the reference users run

    ids = sorted(coco.imgs)
    for i in range(n):
        img_id = ids[i % len(ids)]
        info = coco.imgs[img_id]
        img = cv2.cvtColor(cv2.imdecode(np.frombuffer(datas[info["file_name"]], np.uint8), cv2.IMREAD_COLOR),
                           cv2.COLOR_BGR2RGB)
        label = np.zeros((info["height"], info["width"]), np.uint8)
        for a in coco.loadAnns(coco.getAnnIds(imgIds=[img_id])):
            label = np.maximum(label, coco.annToMask(a) * lut[a["category_id"]])
        if single_warp:
            ds.transform(i, img, label)
        else:
            augment(ds, i, img, label)


def floor(ds, datas_list, labels, n):
    for i in range(n):
        data = datas_list[i % len(datas_list)]
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        m = affine(img.shape[:2], (512, 512), scale=1.1, angle=7)
        cv2.warpAffine(img, m, (512, 512), flags=cv2.INTER_LINEAR)
        cv2.warpAffine(labels[i % len(labels)], m, (512, 512), flags=cv2.INTER_NEAREST, borderValue=255)


def rate(fn, n):
    """Samples per second of CPU time (this process, one thread): steadier than wall time on a shared VM."""
    t0 = time.process_time()
    fn()
    return n / (time.process_time() - t0)


def loader_rate(ds, workers, n_batches=None):
    dl = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=workers, shuffle=False,
                                     persistent_workers=False, prefetch_factor=4 if workers else None)
    it = iter(dl)
    next(it)  # start-up excluded
    t0 = time.perf_counter()
    n = 0
    for b in it:
        n += len(b[0])
    return n / (time.perf_counter() - t0)


class _Pass(torch.utils.data.Dataset):
    """A full pass over the index: every image's name and every annotation's segmentation."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        idx = self.ds.index
        n = len(idx.file_name(i))
        for a in idx.annotations(i):
            seg = idx.segmentation(a)
            n += len(seg)
        return os.getpid(), rss_mb(), n


def generated_index(images: int, anns: int, coords: int = 24) -> CocoIndex:
    rng = np.random.default_rng(0)
    per = np.bincount(rng.integers(0, images, anns), minlength=images)
    ann_start = np.zeros(images, np.int64)
    ann_start[1:] = np.cumsum(per[:-1])
    names = [f"{i:012d}.jpg".encode() for i in range(images)]
    name_off = np.zeros(images + 1, np.int64)
    name_off[1:] = np.cumsum([len(b) for b in names])
    meta = json.dumps({"categories": [{"id": 1, "name": "person"}], "version": INDEX_VERSION,
                       "source": "generated"}).encode()
    arrays = dict(
        image_id=np.arange(images, dtype=np.int64), height=np.full(images, 480, np.int32),
        width=np.full(images, 640, np.int32), name_off=name_off, names=np.frombuffer(b"".join(names), np.uint8).copy(),
        ann_start=ann_start, ann_count=per.astype(np.int64), ann_id=np.arange(anns, dtype=np.int64),
        category=np.ones(anns, np.int32), iscrowd=np.zeros(anns, np.uint8), area=rng.random(anns) * 1000,
        kind=np.zeros(anns, np.uint8), seg_start=np.arange(anns, dtype=np.int64), seg_count=np.ones(anns, np.int32),
        poly_start=np.arange(anns + 1, dtype=np.int64) * coords, poly_len=np.full(anns, coords, np.int32),
        coords=rng.random(anns * coords) * 400, rle_off=np.zeros(1, np.int64), rle_h=np.zeros(0, np.int32),
        rle_w=np.zeros(0, np.int32), rle_bytes=np.zeros(0, np.uint8), meta=np.frombuffer(meta, np.uint8).copy(),
    )  # fmt: skip
    return CocoIndex(arrays, "generated")


def json_comparison(tmp: Path, idx: CocoIndex) -> None:
    """The same generated annotations as a COCO JSON: first indexing (parse + cache) and pycocotools' COCO()."""
    from pycocotools.coco import COCO

    anns = []
    for i in range(idx.images):
        for a in idx.annotations(i):
            seg = [np.round(p, 2).tolist() for p in idx.segmentation(a)]
            anns.append({"id": int(idx.ann_id[a]), "image_id": int(idx.image_id[i]), "category_id": 1, "iscrowd": 0,
                         "area": float(idx.area[a]), "bbox": [0, 0, 1, 1], "segmentation": seg})
    d = {"images": [{"id": int(idx.image_id[i]), "file_name": idx.file_name(i), "height": 480, "width": 640}
                    for i in range(idx.images)], "annotations": anns, "categories": [{"id": 1, "name": "person"}]}
    path = tmp / "big.json"
    path.write_text(json.dumps(d))
    del d, anns
    s = mstore.connect(tmp / "json")
    s.put_file("a/instances.json", path)
    print(f"as JSON: {path.stat().st_size / 1e6:.0f} MB")
    t0 = time.perf_counter()
    CocoIndex.load(s, "a/instances.json")
    print(f"  first CocoIndex.load (parse, index, cache in the store): {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    CocoIndex.load(s, "a/instances.json")
    print(f"  cached CocoIndex.load: {time.perf_counter() - t0:.2f} s")
    t0 = time.perf_counter()
    COCO(str(path))
    print(f"  pycocotools COCO(): {time.perf_counter() - t0:.1f} s")


def index_memory(tmp: Path, compare_json: bool = False) -> None:
    s = mstore.connect(tmp / "big")
    t0 = time.perf_counter()
    idx = generated_index(118_287, 860_001)
    key = "datasets/coco/annotations/instances_train2017.json"
    s.put_bytes(key, b"{}")
    meta = json.loads(bytes(idx.meta).decode())
    meta["json_size"] = 2
    meta["json_version"] = s.version(next(i for i in s.list(key) if i.key == key))
    idx.meta = np.frombuffer(json.dumps(meta).encode(), np.uint8).copy()
    s.put_bytes(key + ".mllib-index.npz", idx.to_bytes())
    print(f"generated index: 118,287 images, 860,001 annotations, "
          f"{s.size(key + '.mllib-index.npz') / 1e6:.0f} MB cached ({time.perf_counter() - t0:.1f} s to make)")
    t0 = time.perf_counter()
    ds = CocoDataset(s3=s, dataset_desc=key, image_paths="datasets/coco/train2017", seed=0)
    print(f"CocoDataset construction from the cached index: {time.perf_counter() - t0:.2f} s")
    dl = torch.utils.data.DataLoader(_Pass(ds), batch_size=256, num_workers=2, shuffle=False,
                                     collate_fn=lambda b: b)
    first, last = {}, {}
    t0 = time.perf_counter()
    for batch in dl:
        for pid, rss, _ in batch:
            first.setdefault(pid, rss)
            last[pid] = rss
    for pid in first:
        print(f"worker {pid}: RSS {first[pid]:.0f} MB at start, {last[pid]:.0f} MB after the full pass: "
              f"growth {last[pid] - first[pid]:+.0f} MB (goal <= 50 MB)")
    print(f"full pass over the index with 2 workers: {time.perf_counter() - t0:.1f} s")
    if compare_json:
        json_comparison(tmp, idx)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(DEFAULT_SHARED))
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--no_full_index", action="store_true", help="skip the 118k-image index memory test")
    ap.add_argument("--compare_json", action="store_true",
                    help="also write that index as COCO JSON and time first indexing and pycocotools' COCO()")
    a = ap.parse_args(argv)
    shared = Path(a.shared)
    if not require_sample(shared):
        return 2
    torch.set_num_threads(1)
    # the malloc tuning DataLoader workers get from worker_init_fn, here too, so that one-process figures compare
    # like with like (without it each float32 sample's arrays are page-faulted in afresh: ~9 ms instead of ~5)
    keep_freed_memory()
    cv2.setNumThreads(1)
    tmp = Path(tempfile.mkdtemp(prefix="mllib-bench-loader-"))
    try:
        s = mstore.connect(tmp / "store")
        n = put_repeated(s, shared, a.repeat)
        ds = CocoDataset.from_store(s, split="val2017", height=512, width=512, seed=0, rotate=15, scale_min=0.75,
                                    scale_max=1.25, offset=0.1, flipX=True, flipY=True)
        from pycocotools.coco import COCO

        coco = COCO(str(shared / "coco-real" / "annotations" / "instances_val2017.json"))
        datas = {p.name: p.read_bytes() for p in (shared / "coco-real" / "val2017").glob("*.jpg")}
        lut = classes.load("coco").lut
        labels = [ds.raw(i)[1] for i in range(50)]
        datas_list = [s.get_bytes(ds.image_key(i)) for i in range(50)]
        for i in range(8):  # warm up
            ds[i]
        runs = {"ds": [], "floor": [], "ref": [], "ref1": []}
        for _ in range(5):  # interleaved repeats; the median of each (this VM's speed drifts between runs)
            runs["ds"].append(rate(lambda: [ds[i] and None for i in range(n)], n))  # results dropped, as the floor's
            runs["floor"].append(rate(lambda: floor(ds, datas_list, labels, n), n))
            runs["ref"].append(rate(lambda: reference(ds, coco, lut, datas, n), n))
            runs["ref1"].append(rate(lambda: reference(ds, coco, lut, datas, n, single_warp=True), n))
        r_ds, r_floor, r_ref, r_ref1 = (float(np.median(runs[k])) for k in ("ds", "floor", "ref", "ref1"))
        print(f"{n} samples, 512x512, full augmentation, one process (CPU time, median of 5 interleaved runs):")
        print(f"  CocoDataset : {r_ds:7.1f} samples/s  ({1000 / r_ds:.1f} ms)")
        print(f"  floor       : {r_floor:7.1f} samples/s  ({1000 / r_floor:.1f} ms)")
        print(f"  reference   : {r_ref:7.1f} samples/s  ({1000 / r_ref:.1f} ms)")
        print(f"  reference1  : {r_ref1:7.1f} samples/s  ({1000 / r_ref1:.1f} ms)  (single-warp augmentation)")
        print(f"  CocoDataset / floor: {r_ds / r_floor:.2f}x (goal >= 0.6); / reference: {r_ds / r_ref:.2f}x (goal >= 1.5); "
              f"/ reference1: {r_ds / r_ref1:.2f}x")
        r1 = loader_rate(ds, 1)
        r2 = loader_rate(ds, 2)
        print(f"DataLoader: 1 worker {r1:.1f} samples/s, 2 workers {r2:.1f} samples/s: {r2 / r1:.2f}x (2 cores)")
        if not a.no_full_index:
            index_memory(tmp, a.compare_json)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
