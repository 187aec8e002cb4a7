"""Evaluate a model trained by segment/train.py on a set of the training set: per-class IoU and accuracy, mIoU
(mllib.training.metrics: one confusion matrix over the set, as networks/evaluate.py), each image whole at its own
size (--mode whole) or center-cropped to the training size (--mode center, not comparable with published numbers).

    python3 segment/test.py --records coco --model_name unet --store s3://coco

writes models/<model>/eval/<trainingset>-<set>.json in the store and runs/<model>/eval/<trainingset>-<set>/
(report.json, confusion.png) locally, one per model and set, and prints
"unet on coco/val (whole): mIoU 0.412 (void 0.91, person 0.38, ...)".
"""

from __future__ import annotations

import sys

from mllib import checks, cli, layout


def parse_args(argv=None):
    p = cli.parser(__doc__)
    cli.add_store_args(p)
    p.add_argument("--records", "--trainingset", "-trainingset", dest="records", metavar="NAME", type=checks.NAME, required=True,
                   help="the TFRecord training set (trainingsets/<name>; --trainingset, the seed's spelling, too)")
    p.add_argument("--model_name", "--model", "-model", dest="model_name", metavar="NAME", type=checks.NAME, default="unet",
                   help="models/<model_name>/ in the store (--model, the seed's spelling, too)")
    p.add_argument("--set", default="val", help="which set to evaluate")
    p.add_argument("--mode", choices=("whole", "center"), default="whole", help="whole images or center crops")
    p.add_argument("--batch_size", type=checks.Range(1), default=8, help="batch size of --mode center")
    p.add_argument("--max_images", type=checks.Range(0), default=0, help="evaluate at most this many images (0: all)")
    p.add_argument("--out", default=None, help="report folder (default: runs/<model>/eval/<trainingset>-<set>/)")
    cli.add_log_args(p)
    return p.parse_args(argv)


def run(args) -> int:
    from pathlib import Path

    from mllib.labels import classes
    from mllib.records.read import description
    from mllib.training import evaluate as ev
    from mllib.training import tfseg

    store = cli.open_store(args)
    r = tfseg.test(store, args.records, args.model_name, set_name=args.set, batch_size=args.batch_size,
                   max_images=args.max_images, mode=args.mode)
    cm = r.pop("_cm")
    what = f"{args.records}-{args.set}"
    out = Path(args.out) if args.out else Path(layout.RUNS) / args.model_name / "eval" / ev.set_name(what)
    ev.write_report(out, r, cm, classes.load(description(store, args.records)["classes"]))
    per = ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} -" for k, v in r["iou"].items())
    miou = f"{r['miou']:.3f}" if r["miou"] is not None else "-"
    print(f"{args.model_name} on {args.records}/{args.set} ({args.mode}): mIoU {miou} ({per}); {r['images']} images "
          f"-> {store.url_for(layout.model_eval(args.model_name, what))}, {out / 'report.json'}")
    return 0


def main(argv=None) -> int:
    return cli.main(parse_args, run, argv, "mllib-segment-test")


if __name__ == "__main__":
    sys.exit(main())
