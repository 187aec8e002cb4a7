"""Evaluate a model trained by segment/train.py on a set of the training set; write per-class IoU and mIoU.

    python3 segment/test.py -trainingset coco -model unet --store s3://coco

writes trainingsets/coco/tests.json and prints "unet on coco/val: mIoU 0.412 (void 0.91, person 0.38, ...)".
"""

from __future__ import annotations

import sys

from mllib import checks, cli, layout


def parse_args(argv=None):
    p = cli.parser(__doc__)
    cli.add_store_args(p)
    p.add_argument("--trainingset", "-trainingset", type=checks.NAME, required=True, help="training set name (trainingsets/<name>)")
    p.add_argument("--model", "-model", type=checks.NAME, default="unet", help="models/<model>/ in the store")
    p.add_argument("--set", default="val", help="which set to evaluate")
    p.add_argument("--batch_size", type=checks.Range(1), default=8)
    p.add_argument("--max_images", type=checks.Range(0), default=0, help="evaluate at most this many images (0: all)")
    cli.add_log_args(p)
    return p.parse_args(argv)


def run(args) -> int:
    from mllib.training import tfseg

    store = cli.open_store(args)
    r = tfseg.test(store, args.trainingset, args.model, set_name=args.set, batch_size=args.batch_size,
                   max_images=args.max_images)
    per = ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} -" for k, v in r["iou"].items())
    miou = f"{r['miou']:.3f}" if r["miou"] is not None else "-"
    print(f"{args.model} on {args.trainingset}/{args.set}: mIoU {miou} ({per}); {r['images']} images -> "
          f"{store.url_for(layout.tests(args.trainingset))}")
    return 0


def main(argv=None) -> int:
    return cli.main(parse_args, run, argv, "segment/test.py")


if __name__ == "__main__":
    sys.exit(main())
