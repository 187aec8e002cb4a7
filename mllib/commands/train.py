"""Train a compact UNet segmentation network straight from the object store (SegmentationDataset).

    python3 networks/network2d.py --store s3://coco --epochs 10 --batch_size 16 --num_workers 8 --amp

trains on datasets/coco/annotations/instances_train2017.json (images datasets/coco/train2017), validates on
val2017 after each epoch (per-class IoU, mIoU), appends metrics to runs/<model_name>/metrics.jsonl and writes
checkpoints to models/<model_name>/checkpoint.pt in the store; a line per epoch like

    epoch 0: loss 0.4121, val mIoU 0.3817, 212.4 images/s, data wait 3%

Any source (mllib/sources): a registered name or a JSON list of entries; entries with "set": "val" validate:

    python3 networks/network2d.py --store s3://data --source '[{"type": "folder", "imagepath": "datasets/own/images",
        "labelpath": "datasets/own/masks", "classes_file": "datasets/own/own.json", "set": "train"}]'

Several GPUs or nodes: torchrun --nproc_per_node N networks/network2d.py ... (DistributedDataParallel).

Checkpoints also every --checkpoint_minutes (10) or --checkpoint_every N steps, with the data position: --resume
continues at exactly the next batch. SIGTERM or Ctrl-C: the step is finished, a checkpoint written, exit status 75.
"""

from __future__ import annotations

import sys

from mllib import cli


def parse_args(argv=None):
    from mllib.training.train import TrainConfig

    p = cli.parser(__doc__)
    cli.add_store_args(p)
    cli.add_settings(p, TrainConfig, "training (mllib.training.train.TrainConfig)")
    p.add_argument("--color", choices=("rgb", "gray"), default=None,
                   help="train on colour (rgb: 3 channels, the default) or grayscale (gray: 1 channel) images")
    cli.add_config_args(p)
    cli.add_log_args(p)
    args = cli.parse_with_config(p, argv)
    if args.color is not None:
        args.imflags = 1 if args.color == "rgb" else 0
    return args


def run(args) -> int:
    from dataclasses import fields

    from mllib.training import train

    cfg = train.TrainConfig(**{f.name: getattr(args, f.name) for f in fields(train.TrainConfig)})  # checks ranges
    if args.print_config:
        from dataclasses import asdict

        cli.print_config({"store": args.store, "endpoint_url": args.endpoint_url, **asdict(cfg)})
        return 0
    store = cli.open_store(args)
    try:
        last = train.fit(cfg, store)
    except train.Stopped as e:
        if e.rank == 0:
            print(f"mllib-train: {e}", file=sys.stderr)
        return train.EXIT_STOPPED
    if last:  # rank 0 only
        val = last.get("val") or {}
        print(f"{args.model_name}: epoch {last['epoch']}, step {last['step']}, loss {last['train_loss']:.4f}, "
              f"val mIoU {val.get('miou')}, {last['images_per_s']} images/s -> "
              f"{store.url_for(train.checkpoint_key(args.model_name))}")
    return 0


def main(argv=None) -> int:
    return cli.main(parse_args, run, argv, "mllib-train")


if __name__ == "__main__":
    sys.exit(main())
