"""Benchmark: a folder source against COCO on the same real images, the documented loader call behind latency, and
checkdataset's label rate; SeaweedFS on 127.0.0.1, ratios measured in one run (rounds in alternating order).

    python3 bench/sources.py [--shared ../shared/data] [--copies 4] [--rounds 3] [--latency_ms 30]
                             [--placement own,shared]

The real COCO val2017 sample (50 images) `copies` times into datasets/coco/ (COCO JSON) and, as a folder source,
the same images under datasets/own/images/ with their labels (rendered once from the annotations through coco.json)
as PNGs of trainIds (written as Pillow writes them) under datasets/own/masks/ (an identity dictionary). Then, in alternating rounds (medians):

Parts 1 and 2 run with SeaweedFS on a CPU of its own (`own`: the readers on the others, as a store on machines of
its own; the goals' setting) and sharing the readers' CPUs (`shared`). A folder source reads two objects per image
(image and label) where COCO reads one; on `shared` every GET's server work (about 1.5 ms of CPU on SeaweedFS) is
taken from the two readers, and part 1 prints the server's CPU per sample beside the ratio.

  1. SegmentationDataset over the folder vs CocoDataset over COCO: samples/s of ds.loader(batch 8, 2 workers),
     512x512, full augmentation, float32 (goal >= 0.95x)
  2. cocorecord's Conversion --jobs 2 of the folder vs of COCO: images/s (goal: no slower per image)
  3. the documented loader call (ds.loader(8, 2), float32) at +latency_ms per request vs +0 ms through
     mllib.testing.latency (both sides through the proxy), for CocoDataset and the folder (goal >= 0.85x); the plain
     DataLoader(ds, batch_size=8, num_workers=2, shuffle=True) beside it for reference
  4. checkdataset (--jobs 2, 16 threads) labels/s vs reading the same label objects alone (32 threads) (goal >= 0.8x)
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from realcoco import DEFAULT_SHARED, put_repeated, require_sample, server_cpu_s, store_cpu

from mllib import store as mstore
from mllib.labels import classes
from mllib.labels.cocoindex import CocoIndex
from mllib.labels.render import Renderer

IDENTITY = {"background": 0, "ignore": 255, "classes": 4, "names": ["void", "person", "vehicle", "animal"],
            "objects": [{"id": t, "name": n, "trainId": t, "color": c} for t, (n, c) in enumerate(
                [("void", [0, 0, 0]), ("person", [0, 255, 0]), ("vehicle", [255, 0, 0]), ("animal", [0, 0, 255])])]}
FOLDER = {"type": "folder", "imagepath": "datasets/own/images", "labelpath": "datasets/own/masks",
          "classes_file": "datasets/own/identity.json", "set": "val"}
COCO = {"type": "coco", "jsonpath": "annotations/instances_val2017.json", "imagepath": "val2017", "set": "val"}


def label_png(label) -> bytes:
    """A label PNG as a user's tools write it: Pillow's defaults (adaptive row filters, zlib level 6)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(label).save(buf, format="PNG")
    return buf.getvalue()


def make_folder(s) -> int:
    """The COCO set in the store as a folder source: same image bytes, rendered labels as PNGs (as Pillow writes
    them; mllib's own label PNGs, unfiltered, decode about twice as fast)."""
    idx = CocoIndex.from_json(s.get_bytes("datasets/coco/annotations/instances_val2017.json"))
    r = Renderer(classes.load("coco"))

    def one(i):
        name = idx.file_name(i)
        s.put_bytes(f"datasets/own/images/{name}", s.get_bytes(f"datasets/coco/val2017/{name}"))
        s.put_bytes(f"datasets/own/masks/{name.rsplit('.', 1)[0]}.png", label_png(r.render(idx, i)))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(idx.images)))
    s.put_bytes("datasets/own/identity.json", json.dumps(IDENTITY).encode())
    return idx.images


def coco_ds(s, **kw):
    from mllib.loaders.cocodataset import CocoDataset

    return CocoDataset.from_store(s, split="val2017", height=512, width=512, seed=0, **kw)


def folder_ds(s, **kw):
    from mllib.loaders.segdataset import SegmentationDataset

    return SegmentationDataset(s, FOLDER, 512, 512, seed=0, **kw)


EPOCHS = 2  # measured, after one warm-up epoch


def epoch_rate(ds, loader) -> float:
    """samples/s over EPOCHS epochs after one warm-up epoch (workers started, connections open)."""
    n = 0
    for e in range(EPOCHS + 1):
        if e == 1:
            t0 = time.perf_counter()
        ds.set_epoch(e)
        for batch in loader:
            if e >= 1:
                n += batch[0].shape[0]
    return n / (time.perf_counter() - t0)


def loader_rate(ds, plain: bool = False) -> float:
    import torch

    if plain:
        dl = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2, shuffle=True, persistent_workers=True)
    else:
        dl = ds.loader(batch_size=8, num_workers=2)
    try:
        return epoch_rate(ds, dl)
    finally:
        del dl


def conversion_rate(s, spec: dict, name: str) -> float:
    from mllib.records.convert import Conversion, parse_entries

    conv = Conversion(s, name, parse_entries([spec]), classes_file="coco", shard_images=100, jobs=2, bar=False)
    conv.run()
    return conv.summary["records"] / conv.summary["seconds"]


def _read_keys(keys: list[str]) -> int:
    s = mstore.connect("s3://data")
    with ThreadPoolExecutor(16) as pool:
        return sum(len(b) for b in pool.map(s.get_bytes, keys))


def check_vs_read(s) -> tuple[float, float, float]:
    """(checkdataset labels/s, with --no_image_sizes, reading the label objects alone) with the same layout: 2
    spawned processes x 16 threads, pool start-up included on both sides."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from mllib.sources import parse_specs
    from mllib.sources.check import CHUNK, Check

    rates = []
    for sizes in (True, False):
        rep = Check(s, parse_specs([FOLDER]), jobs=2, threads=16, bar=False, sizes=sizes).run()
        assert rep["ok"], rep["problems"]
        rates.append(rep["labels_per_s"])
    keys = [i.key for i in s.list("datasets/own/masks/")]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as pool:
        list(pool.map(_read_keys, [keys[i:i + CHUNK] for i in range(0, len(keys), CHUNK)]))
    return rates[0], rates[1], len(keys) / (time.perf_counter() - t0)


def med(xs):
    return statistics.median(xs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    p.add_argument("--copies", type=int, default=8, help="copies of the 50 real val2017 images")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--latency_ms", type=float, default=30.0)
    p.add_argument("--skip", default="", help="comma-separated parts to leave out: dataset,convert,latency,check")
    p.add_argument("--placement", default="own,shared",
                   help="where SeaweedFS runs for parts 1 and 2: own (its own CPU, the readers on the others, as a "
                        "store on its own machines), shared (the readers' CPUs), or both in turn")
    args = p.parse_args(argv)
    if not require_sample(args.shared):
        return 1
    skip = set(filter(None, args.skip.split(",")))
    from mllib.store import S3Store
    from mllib.testing.latency import LatencyProxy
    from mllib.testing.seaweed import SeaweedS3

    tmp = Path(tempfile.mkdtemp(prefix="mllib-bench-sources-"))
    server = SeaweedS3(tmp / "weed").start()
    try:
        with server.environment():
            server.create_bucket("data")
            s = mstore.connect("s3://data")
            n = put_repeated(s, args.shared, args.copies)
            make_folder(s)
            print(f"{n} real images as COCO JSON and as a folder source in SeaweedFS (127.0.0.1)")
            for placement in args.placement.split(","):
                with store_cpu(server, placement) as where:
                    print(f"placement {placement}: {where}")
                    if "dataset" not in skip:
                        rates, cpu = {"coco": [], "folder": []}, {"coco": [], "folder": []}
                        for r in range(args.rounds):  # the order alternates: a drift favours neither side
                            for kind, make in (("coco", coco_ds), ("folder", folder_ds))[::1 if r % 2 == 0 else -1]:
                                ds, c0 = make(s), server_cpu_s(server)
                                rates[kind].append(loader_rate(ds))
                                cpu[kind].append((server_cpu_s(server) - c0) / ((EPOCHS + 1) * len(ds)))
                                print(f"  round {r}: {kind}: {rates[kind][-1]:.1f} samples/s, S3 server "
                                      f"{1000 * cpu[kind][-1]:.2f} ms CPU per sample")
                        ratio = med(rates["folder"]) / med(rates["coco"])
                        print(f"1. [{placement}] SegmentationDataset(folder) vs CocoDataset, loader(8, 2), 512x512, "
                              f"augmented, float32: {med(rates['folder']):.1f} vs {med(rates['coco']):.1f} samples/s "
                              f"= {ratio:.2f}x (goal >= 0.95); the S3 server's CPU per sample (its 2 GETs vs 1): "
                              f"{1000 * med(cpu['folder']):.2f} vs {1000 * med(cpu['coco']):.2f} ms")
                    if "convert" not in skip:
                        rates = {"coco": [], "folder": []}
                        for r in range(args.rounds):
                            for kind, spec in (("coco", COCO), ("folder", FOLDER))[::1 if r % 2 == 0 else -1]:
                                rates[kind].append(conversion_rate(s, spec, f"{kind}{placement}{r}"))
                                print(f"  round {r}: {kind}: {rates[kind][-1]:.1f} images/s")
                        ratio = med(rates["folder"]) / med(rates["coco"])
                        print(f"2. [{placement}] conversion --jobs 2 of the folder vs COCO: {med(rates['folder']):.1f} "
                              f"vs {med(rates['coco']):.1f} images/s = {ratio:.2f}x (goal >= 1.0 within noise)")
            if "latency" not in skip:
                host, port = server.endpoint.split("//")[1].split(":")
                rates: dict[tuple, list[float]] = {}
                for r in range(args.rounds):
                    for ms in (0.0, args.latency_ms):
                        with LatencyProxy((host, int(port)), ms / 1000, max_seconds=3600) as proxy:
                            far = S3Store("s3://data", endpoint_url=proxy.url)
                            for kind, make, plain in (("coco", coco_ds, False), ("folder", folder_ds, False),
                                                      ("coco plain DataLoader", coco_ds, True)):
                                v = loader_rate(make(far), plain)
                                rates.setdefault((kind, ms), []).append(v)
                                print(f"  round {r}: +{ms:g} ms: {kind}: {v:.1f} samples/s (peak {proxy.peak} "
                                      "requests in flight)")
                for kind in ("coco", "folder", "coco plain DataLoader"):
                    a, b = med(rates[(kind, 0.0)]), med(rates[(kind, args.latency_ms)])
                    goal = " (goal >= 0.85)" if "plain" not in kind else " (reference)"
                    print(f"3. {kind}{'' if 'plain' in kind else ' ds.loader(8, 2)'}, float32: +{args.latency_ms:g} "
                          f"ms vs +0 ms: {b:.1f} vs {a:.1f} samples/s = {b / a:.2f}x{goal}")
            if "check" not in skip:
                got = [check_vs_read(s) for _ in range(args.rounds)]
                c, c_ns, rd = (med([g[k] for g in got]) for k in range(3))
                print(f"4. checkdataset --jobs 2 vs reading the label objects alone (2 processes x 16 threads): "
                      f"{c_ns:.1f} vs {rd:.1f} labels/s = {c_ns / rd:.2f}x with --no_image_sizes (goal >= 0.8); with "
                      f"the image size check (a ranged GET of each image's header too): {c:.1f} = {c / rd:.2f}x")
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
