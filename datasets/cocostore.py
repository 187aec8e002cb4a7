"""CocoDataset and CocoStore: COCO straight from the object store, for PyTorch training and for looking at it.

    from cocostore import CocoDataset, CocoStore        # or: from mllib.loaders.cocodataset import ...
    trainingset = CocoDataset(s3=s3, bucket=bucket, dataset_desc=args.trainingset,
        image_paths=args.train_image_path, class_dictionary=class_dictionary,
        height=args.height, width=args.width, imflags=args.imflags, astype='float32')
    trainloader = torch.utils.data.DataLoader(trainingset)

Run as a script it writes N overlay PNGs of augmented samples for a quick look:

    python3 datasets/cocostore.py --store s3://coco --split val2017 -n 8 --out samples/
    # wrote 8 samples to samples/ (sample_000.png ...)
    python3 datasets/cocostore.py --store s3://data --source '[{"type": "cvat", "imagepath": "datasets/cvat"}]'
    # the same for any source (mllib/sources): a registered name or JSON entries
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from mllib import MllibError, checks, cli
from mllib.labels import display
from mllib.loaders.cocodataset import CocoDataset, CocoStore

__all__ = ["CocoDataset", "CocoStore", "main"]


def parse_args(argv=None):
    p = cli.parser(__doc__)
    cli.add_store_args(p)
    p.add_argument("--dataset", type=checks.NAME, default="coco", help="store folder datasets/<dataset>/")
    p.add_argument("--split", default="val2017", help="annotations/instances_<split>.json and images <split>/")
    p.add_argument("--class_dictionary", default=None,
                   help="class dictionary name or path (default: coco, or with --source the first entry's)")
    p.add_argument("--source", default=None,
                   help="any source instead of COCO's --dataset/--split: a registered name or JSON source entries")
    p.add_argument("-n", "--count", type=checks.Range(1), default=8, help="samples to write")
    p.add_argument("--height", type=checks.SIZE, default=512)
    p.add_argument("--width", type=checks.SIZE, default=512)
    p.add_argument("--no_transform", action="store_true", help="validation mode: center crop/pad, no augmentation")
    p.add_argument("--seed", type=checks.SEED, default=0, help="augmentation seed")
    p.add_argument("--out", default="samples", help="output folder")
    cli.add_log_args(p)
    return p.parse_args(argv)


def run(args) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise MllibError(f"--out {out} is a file, not a folder for the samples")
    store = cli.open_store(args)
    common = dict(height=args.height, width=args.width, enable_transform=not args.no_transform, seed=args.seed)
    if args.source:
        from mllib.loaders.segdataset import SegmentationDataset

        ds = SegmentationDataset.from_store(store, args.source, classes=args.class_dictionary, **common)
    else:
        ds = CocoDataset.from_store(store, split=args.split, classes=args.class_dictionary or "coco",
                                    dataset=args.dataset, **common)
    out.mkdir(parents=True, exist_ok=True)
    n = min(args.count, len(ds))
    for k in range(n):
        image, label, mean, std = ds[k]
        rgb = image.numpy().transpose(1, 2, 0) * std.numpy() + mean.numpy()
        rgb = np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
        if rgb.shape[2] == 1:
            rgb = np.repeat(rgb, 3, axis=2)
        lab = label.numpy().astype(np.uint8)
        display.write_png(out / f"sample_{k:03d}.png",
                          np.concatenate([rgb, ds.classes.overlay(rgb, lab), ds.classes.colorize(lab)], axis=1))
    print(f"wrote {n} samples to {out}/ (sample_000.png ...): image | overlay | label")
    return 0


def main(argv=None) -> int:
    return cli.main(parse_args, run, argv, "cocostore.py")


if __name__ == "__main__":
    sys.exit(main())
