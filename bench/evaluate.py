"""Validation you can compare with papers, on the real COCO sample (../shared/data/coco-real: 50 train2017 and 50
val2017 images), in a local store:

1. network2d trains the old recipe (constant learning rate, plain cross-entropy, no photometric augmentation) and
   the new one (poly 0.9 with warm-up, inverse class weights, colour jitter) for the same steps and seed; both
   validate whole images each epoch.
2. The old recipe's checkpoint: network2d's last validation mIoU, networks/evaluate.py's on the same checkpoint, and
   an independent count from evaluate.py --save_predictions (the PNGs read with Pillow, per-class set operations
   against the labels) must agree to 1e-6.
3. Whole-image evaluation against the old centre-crop validation (the training crop, batch 8), per image, the same
   model and workers (best of --rounds alternating rounds).

    python3 bench/evaluate.py [--epochs 6] [--size 256] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from realcoco import DEFAULT_SHARED, require_sample  # noqa: E402

OLD = []
NEW = ["--lr_schedule", "poly", "--warmup_steps", "5", "--class_weights", "inverse", "--color_jitter",
       "0.4,0.4,0.4,0.1"]


def sh(args, cwd) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    p = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"{' '.join(args[:2])} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return p.stdout


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, default=Path(os.environ.get("MLLIB_SHARED_DATA", DEFAULT_SHARED)))
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args()
    if not require_sample(a.shared):
        return 1
    import torch

    from mllib import store as mstore
    from mllib.loaders.cocodataset import CocoDataset
    from mllib.loaders.gpu import BatchPrep
    from mllib.training import evaluate as ev
    from mllib.training import train

    with tempfile.TemporaryDirectory(prefix="bench-evaluate-") as tmp:
        tmp = Path(tmp)
        st = mstore.connect(str(tmp / "store"))
        real = a.shared / "coco-real"
        for split in ("train2017", "val2017"):
            for f in (real / split).glob("*.jpg"):
                st.put_file(f"datasets/coco/{split}/{f.name}", f)
            st.put_file(f"datasets/coco/annotations/instances_{split}.json",
                        real / "annotations" / f"instances_{split}.json")
        common = ["networks/network2d.py", "--store", str(tmp / "store"), "--epochs", str(a.epochs), "--height",
                  str(a.size), "--width", str(a.size), "--batch_size", "8", "--num_workers", str(a.workers),
                  "--no_progress", "--seed", "0", "--log-level", "WARNING"]
        runs = {}
        for name, flags in (("old", OLD), ("new", NEW)):
            t0 = time.perf_counter()
            sh([*common, "--model_name", name, "--metrics_file", str(tmp / "runs" / name / "metrics.jsonl"),
                *flags], ROOT)
            ck = train.load_checkpoint(st, name, "cpu")
            runs[name] = (ck["metrics"][-1]["val"], ck["step"], time.perf_counter() - t0)
        print(f"recipes, {a.epochs} epochs of the 50 real train2017 images at {a.size}x{a.size}, batch 8, seed 0; "
              f"validation: the 50 val2017 images whole")
        for name, (val, steps, seconds) in runs.items():
            print(f"  {name:>3}: {steps} steps, {seconds:.0f} s, val mIoU {val['miou']:.4f}, mAcc {val['macc']:.4f}, "
                  f"aAcc {val['pixel_accuracy']:.4f}, IoU {json.dumps(val['iou'])}")
        print(f"  new recipe vs old: mIoU {runs['new'][0]['miou']:.4f} vs {runs['old'][0]['miou']:.4f}")

        out = sh(["networks/evaluate.py", "--store", str(tmp / "store"), "--model_name", "old", "--save_predictions",
                  str(tmp / "pred"), "--out", str(tmp / "eval"), "--no_progress", "--num_workers",
                  str(a.workers)], ROOT)
        report = json.loads((tmp / "eval" / "report.json").read_text())
        ds = CocoDataset(st, dataset_desc="datasets/coco/annotations/instances_val2017.json",
                         image_paths="datasets/coco/val2017", astype="uint8", normalize="none", label_dtype="uint8")
        data = ev.FullImages(ds)
        from PIL import Image

        inter, union = np.zeros(4), np.zeros(4)
        for k in range(len(data)):
            label = ds.raw(k)[1]
            pred = np.asarray(Image.open(tmp / "pred" / f"{data.name(k)}.png"))
            valid = label != 255
            for c in range(4):
                inter[c] += np.sum((pred == c) & (label == c) & valid)
                union[c] += np.sum(((pred == c) | (label == c)) & valid)
        independent = float(np.mean(inter[union > 0] / union[union > 0]))
        trained = runs["old"][0]["miou"]
        print("same checkpoint ('old'), whole images:")
        print(f"  network2d validation {trained:.6f}, evaluate.py {report['miou']:.6f}, from the saved predictions "
              f"{independent:.6f}: max difference {max(abs(trained - report['miou']), abs(independent - report['miou'])):.2e}")
        print("  " + out.strip().splitlines()[0])

        model, _ = ev.load_model(st, "models/old/checkpoint.pt", torch.device("cpu"))
        dev = torch.device("cpu")
        whole_t, center_t = [], []
        crop_ds = CocoDataset(st, dataset_desc="datasets/coco/annotations/instances_val2017.json",
                              image_paths="datasets/coco/val2017", height=a.size, width=a.size, astype="uint8",
                              normalize="none", label_dtype="uint8", enable_transform=False, seed=0)
        for _ in range(a.rounds):
            t0 = time.perf_counter()
            cm_w, n_w = ev.evaluate(model, ev.eval_loader(data, a.workers), BatchPrep(dev), dev, 4, 255)
            whole_t.append((time.perf_counter() - t0) / n_w)
            loader = torch.utils.data.DataLoader(crop_ds, batch_size=8, num_workers=a.workers)
            t0 = time.perf_counter()
            cm_c, n_c = ev.evaluate(model, loader, BatchPrep(dev), dev, 4, 255, mode="center")
            center_t.append((time.perf_counter() - t0) / n_c)
        w, c = min(whole_t), min(center_t)
        print(f"evaluation per image, {a.workers} workers, CPU ({os.cpu_count()} cores), best of {a.rounds}:")
        print(f"  whole images {1000 * w:.1f} ms ({cm_w.matrix.sum():,} pixels counted, mIoU {cm_w.miou():.4f}) vs "
              f"centre crop {a.size}x{a.size} {1000 * c:.1f} ms ({cm_c.matrix.sum():,} pixels, mIoU "
              f"{cm_c.miou():.4f}): whole costs {w / c:.2f}x per image for {cm_w.matrix.sum() / cm_c.matrix.sum():.2f}x "
              f"the pixels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
