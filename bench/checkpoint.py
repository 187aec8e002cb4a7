"""Benchmark: what mid-epoch checkpoints and a preemption stop cost network2d's default model.

    python3 bench/checkpoint.py [--shared ../shared/data] [--copies 4] [--steps 40] [--every 5] [--rounds 3]

On the real COCO sample (val2017, repeated --copies times) in a local store, network2d's default UNet (width 16,
depth 4) at a --height x --width crop, batch --batch_size, --workers DataLoader workers; prints:
  write   : seconds per checkpoint write (model, AdamW state, data position; torch.save + an atomic store put) and
            its size
  steady  : images/s over --steps steps without mid-epoch checkpoints and with one every --every steps, measured
            in --rounds interleaved rounds (medians); the overhead per checkpoint that follows, and the overhead
            at the default interval (--checkpoint_minutes 10: one write per 600 s; goal <= 1%)
  sigterm : seconds from SIGTERM to exit of a network2d.py process mid-epoch (exit status 75 expected)
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from realcoco import DEFAULT_SHARED, put_repeated, require_sample

from mllib import store as mstore
from mllib.training import train

ROOT = Path(__file__).resolve().parents[1]


def config(args, name: str, **kw) -> train.TrainConfig:
    return train.TrainConfig(train_annotations="datasets/coco/annotations/instances_val2017.json",
                             train_image_path="datasets/coco/val2017", val_annotations="", val_fraction=0.02,
                             height=args.height, width=args.width, batch_size=args.batch_size,
                             num_workers=args.workers, epochs=1000, max_steps=args.steps, model_name=name,
                             no_progress=True, checkpoint_minutes=0, metrics_file=str(args.tmp / f"{name}.jsonl"),
                             **kw)


def steady(args, store, every: int, writes: list) -> float:
    """images/s of one run of --steps steps (the first epoch's figure: the run is one epoch or less)."""
    real = train.save_checkpoint

    def timed(*a, **kw):
        t0 = time.perf_counter()
        real(*a, **kw)
        writes.append(time.perf_counter() - t0)

    train.save_checkpoint = timed
    try:
        last = train.fit(config(args, f"steady{every}", checkpoint_every=every), store)
    finally:
        train.save_checkpoint = real
    return last["images_per_s"]


def sigterm(args, store) -> tuple[float, int, int]:
    """(seconds from SIGTERM to exit, exit status, the checkpoint's step) of network2d.py stopped mid-epoch."""
    cmd = [sys.executable, str(ROOT / "networks" / "network2d.py"), "--store", store.url, "--train_annotations",
           "datasets/coco/annotations/instances_val2017.json", "--train_image_path", "datasets/coco/val2017",
           "--val_annotations", "", "--height", str(args.height), "--width", str(args.width), "--batch_size",
           str(args.batch_size), "--num_workers", str(args.workers), "--no_progress", "--model_name", "term",
           "--checkpoint_every", "2", "--metrics_file", str(args.tmp / "term.jsonl"), "--log-level", "WARNING"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ck = store.local_path(train.checkpoint_key("term"))
    try:
        deadline = time.monotonic() + 600
        while not ck.exists():  # training: the step-2 checkpoint is there
            if p.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"network2d.py did not start training: {p.communicate()[1][-2000:]}")
            time.sleep(0.05)
        time.sleep(1.0)  # mid-step
        t0 = time.perf_counter()
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=120)
        took = time.perf_counter() - t0
    finally:
        p.kill()
    return took, p.returncode, train.load_checkpoint(store, "term", "cpu")["step"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    ap.add_argument("--copies", type=int, default=4, help="copies of the 50 real val2017 images")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--every", type=int, default=5, help="mid-epoch checkpoint interval (steps) to measure")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--batch_size", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    if not require_sample(args.shared):
        return 1
    with tempfile.TemporaryDirectory(prefix="mllib-bench-ck-") as tmp:
        args.tmp = Path(tmp)
        store = mstore.connect(args.tmp / "store")
        n = put_repeated(store, args.shared, args.copies)
        print(f"{n} real images, crop {args.height}x{args.width}, batch {args.batch_size}, {args.workers} workers, "
              f"{os.cpu_count()} cores, UNet width 16 depth 4")
        plain, with_ck, writes = [], [], []
        for r in range(args.rounds):
            plain.append(steady(args, store, 0, []))
            with_ck.append(steady(args, store, args.every, writes))
            print(f"  round {r}: {plain[-1]:.2f} images/s without, {with_ck[-1]:.2f} with a checkpoint every "
                  f"{args.every} steps")
        size = store.local_path(train.checkpoint_key(f"steady{args.every}")).stat().st_size
        write = statistics.median(writes)
        print(f"write   : {write * 1000:.0f} ms per checkpoint (median of {len(writes)}), {size / 1e6:.1f} MB")
        a, b = statistics.median(plain), statistics.median(with_ck)
        step_s = args.batch_size / a
        per = (1 / b - 1 / a) * args.batch_size * args.every  # seconds each checkpoint added
        print(f"steady  : {a:.2f} images/s without, {b:.2f} with one every {args.every} steps ({b / a:.3f}x); "
              f"{per * 1000:.0f} ms added per checkpoint, a step {step_s * 1000:.0f} ms")
        print(f"default : one checkpoint per 600 s (--checkpoint_minutes 10): {100 * write / 600:.3f}% of the time "
              f"(goal <= 1%)")
        took, rc, step = sigterm(args, store)
        print(f"sigterm : exit {rc} (75 expected) {took:.2f} s after SIGTERM, checkpoint at step {step}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
