"""Benchmark: cocorecord's per-image work against the seed's original method and the floor, one process.

    python3 bench/cocorecord.py [--shared ../shared/data] [--repeat 4] [--latency_images 400] [--latency_ms 30]

On the real COCO sample (../shared/data/coco-real, val2017 + train2017, repeated), with image bytes in memory:
  ours  : cocorecord's work (header check, original JPEG bytes, render label, label PNG, Example, framing)
  seed  : decode JPEG, re-encode the image as PNG (level 3), render, label PNG, Example
  floor : decode JPEG + render + label PNG encode
prints ms/image and images/s of each, ours/seed (goal >= 5x), record bytes / (source JPEG + label PNG)
(goal <= 1.15), then the whole conversion (datasets/cocorecord.py logic, local store) with --jobs 1 and 2, then
the conversion (--jobs 2) of --latency_images images from SeaweedFS on 127.0.0.1 through a proxy adding 0 ms, then
--latency_ms ms to every request (mllib.testing.latency), in alternating rounds: the time the latency adds (goal
<= 15%) and whether the records are the same.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from realcoco import DEFAULT_SHARED, coco_on_seaweed, put_repeated, require_sample, shard_sha256s

from mllib import images
from mllib import store as mstore
from mllib.labels import classes
from mllib.labels import render as labels
from mllib.labels.cocoindex import CocoIndex
from mllib.records import schema, tfrecord
from mllib.records.convert import Conversion, Entry


def load(shared: Path):
    items = []
    for split in ("val2017", "train2017"):
        raw = (shared / "coco-real" / "annotations" / f"instances_{split}.json").read_bytes()
        idx = CocoIndex.from_json(raw)
        for i in range(idx.images):
            items.append((idx, i, (shared / "coco-real" / split / idx.file_name(i)).read_bytes()))
    return items


def example(img, fmt, h, w, label, d):
    return tfrecord.frame(tfrecord.encode_example(schema.example(
        image=img, fmt=fmt, height=h, width=w, label_png=images.encode_label_png(label),
        classes=labels.presence(label, d.classes).tolist(), filename="x.jpg", source_id="1")))


def ours(items, r, d):
    out = 0
    for idx, i, data in items:
        img, fmt, h, w = images.uniform_rgb(data)
        label = r.render(idx, i)
        out += len(example(img, fmt, h, w, label, d))
    return out


def seed(items, r, d):
    for idx, i, data in items:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        ok, png = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
        label = r.render(idx, i)
        example(png.tobytes(), "png", bgr.shape[0], bgr.shape[1], label, d)


def floor(items, r, d):
    for idx, i, data in items:
        cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        images.encode_label_png(r.render(idx, i))


def timed(fn, *a):
    t0 = time.perf_counter()
    v = fn(*a)
    return time.perf_counter() - t0, v


def conversion_scaling(shared: Path, repeat: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="mllib-bench-rec-"))
    try:
        s = mstore.connect(tmp / "store")
        n = put_repeated(s, shared, repeat * 12)
        e = [Entry("annotations/instances_val2017.json", "val2017", "val")]
        Conversion(s, "warm", e, shard_images=1000, jobs=1, bar=False, max_images=5).run()  # caches the index
        rates = {}
        for jobs in (1, 2):
            c = Conversion(s, f"j{jobs}", e, shard_images=50, jobs=jobs, bar=False)
            t, _ = timed(c.run)
            rates[jobs] = n / t
            print(f"conversion --jobs {jobs}: {n} images in {t:.2f} s = {rates[jobs]:.0f} images/s")
        print(f"scaling 1 -> 2 jobs: {rates[2] / rates[1]:.2f}x (2 cores; process start-up included)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def latency(shared: Path, images: int, delay_ms: float, rounds: int = 3) -> None:
    import statistics

    from mllib.store import S3Store
    from mllib.testing.latency import LatencyProxy

    with coco_on_seaweed(shared, images, "mllib-bench-rec-lat-") as (server, s, n, e):
        host, port = server.endpoint.split("//")[1].split(":")
        times: dict[float, list[float]] = {0.0: [], delay_ms: []}
        sha = {}
        for r in range(rounds):
            for ms in (0.0, delay_ms):
                with LatencyProxy((host, int(port)), ms / 1000, max_seconds=3600) as proxy:
                    far = S3Store("s3://coco", endpoint_url=proxy.url)
                    name = f"lat{int(ms)}-{r}"
                    t, _ = timed(Conversion(far, name, e, shard_images=100, jobs=2, bar=False).run)
                    times[ms].append(t)
                    sha[name] = shard_sha256s(s, name)
                    print(f"  round {r}: +{ms:g} ms per request: {n} images in {t:.2f} s (peak {proxy.peak} "
                          f"requests in flight)")
        base, slow = statistics.median(times[0.0]), statistics.median(times[delay_ms])
        same = len({tuple(v) for v in sha.values()}) == 1
        print(f"conversion --jobs 2 through the proxy: {base:.2f} s at +0 ms, {slow:.2f} s at +{delay_ms:g} ms "
              f"(medians of {rounds} alternating rounds): +{100 * (slow / base - 1):.0f}% (goal <= 15%); records identical: {same}")

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(DEFAULT_SHARED))
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--latency_images", type=int, default=400, help="0: skip the latency part")
    ap.add_argument("--latency_ms", type=float, default=30.0)
    ap.add_argument("--only_latency", action="store_true", help="only the latency part")
    a = ap.parse_args(argv)
    shared = Path(a.shared)
    if not require_sample(shared):
        return 2
    cv2.setNumThreads(1)
    if a.only_latency:
        latency(shared, a.latency_images, a.latency_ms)
        return 0
    items = load(shared) * a.repeat
    d = classes.load("coco")
    r = labels.Renderer(d)
    n = len(items)
    ours(items[:10], r, d)  # warm up
    t_ours, rec_bytes = timed(ours, items, r, d)
    t_seed, _ = timed(seed, items, r, d)
    t_floor, _ = timed(floor, items, r, d)
    for name, t in (("ours (cocorecord)", t_ours), ("seed's method", t_seed), ("floor", t_floor)):
        print(f"{name:18s}: {1000 * t / n:6.2f} ms/image  {n / t:7.1f} images/s")
    print(f"ours / seed images/s: {t_seed / t_ours:.1f}x (goal >= 5x); ours / floor: {t_floor / t_ours:.1f}x")
    src = sum(len(x[2]) for x in items)
    lab = sum(len(images.encode_label_png(r.render(idx, i))) for idx, i, _ in items)
    print(f"record bytes / (source JPEG + label PNG): {rec_bytes / (src + lab):.3f} (goal <= 1.15)")
    conversion_scaling(shared, a.repeat)
    if a.latency_images:
        latency(shared, a.latency_images, a.latency_ms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
