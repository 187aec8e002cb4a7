"""Train a compact UNet segmentation network on COCO straight from the object store (CocoDataset).

    python3 networks/network2d.py --store s3://coco --epochs 10 --batch_size 16 --num_workers 8 --amp

trains on datasets/coco/annotations/instances_train2017.json (images datasets/coco/train2017), validates on
val2017 after each epoch (per-class IoU, mIoU), appends metrics to runs/<model_name>/metrics.jsonl and writes
checkpoints to models/<model_name>/checkpoint.pt in the store; a line per epoch like

    epoch 0: loss 0.4121, val mIoU 0.3817, 212.4 images/s, data wait 3%

Several GPUs or nodes: torchrun --nproc_per_node N networks/network2d.py ... (DistributedDataParallel).

Checkpoints also every --checkpoint_minutes (10) or --checkpoint_every N steps, with the data position: --resume
continues at exactly the next batch. SIGTERM or Ctrl-C: the step is finished, a checkpoint written, exit status 75.
"""

from __future__ import annotations

import sys

import cv2

from mllib import cli, layout


def parse_args(argv=None):
    p = cli.parser(__doc__)
    cli.add_store_args(p)
    p.add_argument("--bucket", "-bucket", default=None, help="bucket overriding the store's (as in the seed)")
    p.add_argument("--trainingset", "-trainingset", default=layout.coco_instances("coco", "train2017"),
                   help="key of the training annotation JSON in the store")
    p.add_argument("--train_image_path", "-train_image_path", default=layout.coco_images("coco", "train2017"),
                   help="key prefix of the training images")
    p.add_argument("--valset", "-valset", default=layout.coco_instances("coco", "val2017"),
                   help="key of the validation annotation JSON ('' = hold out --val_fraction of the training set)")
    p.add_argument("--val_image_path", "-val_image_path", default=layout.coco_images("coco", "val2017"),
                   help="key prefix of the validation images")
    p.add_argument("--val_fraction", type=float, default=0.1, help="held-out fraction when --valset is ''")
    p.add_argument("--class_dictionary", "-class_dictionary", default="coco", help="class dictionary name or path")
    p.add_argument("--height", "-height", type=int, default=512, help="training crop height")
    p.add_argument("--width", "-width", type=int, default=512, help="training crop width")
    p.add_argument("--imflags", "-imflags", type=int, default=cv2.IMREAD_COLOR, help="cv2 imread flags (1 color, 0 gray)")
    p.add_argument("--batch_size", "-batch_size", type=int, default=8)
    p.add_argument("--epochs", "-epochs", type=int, default=10)
    p.add_argument("--max_steps", "-max_steps", type=int, default=0, help="stop after this many steps (0: no limit)")
    p.add_argument("--learning_rate", "-learning_rate", type=float, default=1e-3)
    p.add_argument("--num_workers", "-num_workers", type=int, default=4, help="DataLoader worker processes")
    p.add_argument("--prefetch", type=int, default=4, help="batches prefetched per worker")
    p.add_argument("--unordered", action="store_true",
                   help="take training batches as the workers finish them (DataLoader in_order=False): a worker that "
                        "is ahead is not held back by a slower one; the same batches, in an order that can differ "
                        "between runs")
    p.add_argument("--device", "-device", default="auto", help="cuda when available, else cpu")
    p.add_argument("--amp", "-amp", action="store_true", help="mixed precision (bf16 where supported)")
    p.add_argument("--model_name", "-model_name", default="unet2d", help="models/<model_name>/ in the store")
    p.add_argument("--model_width", type=int, default=16, help="channels of the first UNet level")
    p.add_argument("--model_depth", type=int, default=4, help="UNet levels")
    p.add_argument("--resume", "-resume", action="store_true",
                   help="continue from models/<model_name>/checkpoint.pt at exactly the next batch")
    p.add_argument("--checkpoint_every", type=int, default=0,
                   help="also write a checkpoint every N steps (0: at epoch ends and by --checkpoint_minutes)")
    p.add_argument("--checkpoint_minutes", type=float, default=10.0,
                   help="also write a checkpoint when this many minutes have passed since the last one (0: never)")
    p.add_argument("--stop_grace_s", type=float, default=60.0,
                   help="on SIGTERM / SIGINT: finish the step, write a checkpoint and exit (status 75) within this "
                        "many seconds, else exit 143 keeping the last whole checkpoint")
    p.add_argument("--metrics_file", default=None, help="JSON lines file (default runs/<model_name>/metrics.jsonl)")
    p.add_argument("--skip_bad", action="store_true", help="replace missing/corrupt images by other samples")
    p.add_argument("--records", default=None,
                   help="train from this TFRecord set (trainingsets/NAME, cocorecord.py) instead of the COCO JSON")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--normalize", default="imagenet", choices=["imagenet", "image", "none"],
                   help="normalization applied on the device to the uint8 batches")
    p.add_argument("--fetch_threads", type=int, default=16, help="concurrent image reads per worker")
    p.add_argument("--log_every", type=int, default=50, help="read the loss (a host sync) every N steps")
    p.add_argument("--step_rate_steps", type=int, default=-1,
                   help="measure the GPU-only step rate over N steps before training (-1: 20 on CUDA, else 0)")
    p.add_argument("--seed", type=int, default=0, help="torch seed (augmentation and shuffling)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    cli.add_log_args(p)
    return p.parse_args(argv)


def run(args) -> int:
    from dataclasses import fields

    from mllib.training import train

    cfg = train.TrainConfig(**{f.name: getattr(args, f.name) for f in fields(train.TrainConfig)})  # checks ranges
    store = cli.open_store(args)
    try:
        last = train.fit(cfg, store)
    except train.Stopped as e:
        if e.rank == 0:
            print(f"network2d.py: {e}", file=sys.stderr)
        return train.EXIT_STOPPED
    if last:  # rank 0 only
        val = last.get("val") or {}
        print(f"{args.model_name}: epoch {last['epoch']}, step {last['step']}, loss {last['train_loss']:.4f}, "
              f"val mIoU {val.get('miou')}, {last['images_per_s']} images/s -> "
              f"{store.url_for(train.checkpoint_key(args.model_name))}")
    return 0


def main(argv=None) -> int:
    return cli.main(parse_args, run, argv, "network2d.py")


if __name__ == "__main__":
    sys.exit(main())
