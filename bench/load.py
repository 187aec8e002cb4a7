"""Load on one SeaweedFS: 8 DataLoader workers read real COCO samples (CocoDataset, one GET an image) for a fixed
time alone, then for the same time beside a conversion (cocorecord's Conversion, --jobs 2) of the same images from
the same server; alternating rounds, medians. Prints the loader's samples/s (= GETs/s) in each case, the ratio
held under load, the conversion's own rate, and that every sample read under load equals the sample read alone.

    python3 bench/load.py [--images 200] [--seconds 15] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from realcoco import DEFAULT_SHARED, coco_on_seaweed, require_sample  # noqa: E402


def read_for(make_loader, want, seconds: float) -> tuple[int, float, int]:
    """Read passes over the set for `seconds`; (samples, seconds, samples that differ from `want`)."""
    loader = make_loader()
    seen = bad = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for k, (img, lab, _, _) in enumerate(loader):
            for j in range(len(img)):
                i = 8 * k + j
                bad += int(not (img[j].equal(want[i][0]) and lab[j].equal(want[i][1])))
                seen += 1
            if time.perf_counter() - t0 >= seconds:
                break
    took = time.perf_counter() - t0
    it = getattr(loader, "_iterator", None)
    if it is not None:
        it._shutdown_workers()
    return seen, took, bad


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args(argv)
    if not require_sample(a.shared):
        return 1
    import torch

    from mllib import layout
    from mllib import store as mstore
    from mllib.loaders.cocodataset import CocoDataset
    from mllib.records.convert import Conversion

    with coco_on_seaweed(a.shared, a.images, "mllib-bench-load-") as (_, _, n, e):
        def ds():
            return CocoDataset(mstore.connect("s3://coco"), dataset_desc=layout.coco_instances("coco", "val2017"),
                               image_paths=layout.coco_images("coco", "val2017"), astype="uint8", normalize="none",
                               label_dtype="uint8", height=256, width=256, seed=5)

        alone = ds()
        want = [tuple(t.clone() for t in alone[i][:2]) for i in range(len(alone))]

        def loader():
            return torch.utils.data.DataLoader(ds(), batch_size=8, num_workers=8, shuffle=False,
                                               persistent_workers=True)

        rates = {"alone": [], "beside a conversion": []}
        conv_rates, bad_total, converted = [], 0, 0
        for r in range(a.rounds):
            seen, took, bad = read_for(loader, want, a.seconds)
            rates["alone"].append(seen / took)
            bad_total += bad
            stop = threading.Event()
            done = []

            def convert(r=r, stop=stop, done=done):
                k = 0
                while not stop.is_set():  # whole conversions, one after another, while the loader reads
                    t0 = time.perf_counter()
                    Conversion(mstore.connect("s3://coco"), f"load-{r}-{k}", e, shard_images=50, jobs=2,
                               bar=False).run()
                    done.append((n, time.perf_counter() - t0))
                    k += 1

            th = threading.Thread(target=convert)
            th.start()
            seen, took, bad = read_for(loader, want, a.seconds)
            stop.set()
            th.join()
            rates["beside a conversion"].append(seen / took)
            bad_total += bad
            converted += sum(x for x, _ in done)
            conv_rates += [x / t for x, t in done]
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"one SeaweedFS, {n} real COCO images, 8 DataLoader workers (CocoDataset, 256x256, one GET a sample), "
          f"{a.seconds:g} s a case, {a.rounds} rounds, medians:")
    for k, v in med.items():
        print(f"  {k:>22}: {v:7.1f} samples/s (= GETs/s)")
    print(f"  held under load: {med['beside a conversion'] / med['alone']:.2f}x of the rate alone; the conversion "
          f"beside it: {statistics.median(conv_rates) if conv_rates else 0:.1f} images/s ({converted} images)")
    print(f"  samples that differed from the sample read alone: {bad_total}")
    return 0 if bad_total == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
