"""Evaluate a network2d checkpoint the way papers report it: every image at its own resolution (or in sliding
windows), intersections and unions accumulated over the whole set, mIoU over the classes in the labels or the
predictions (the ignore value excluded), per-class IoU and accuracy, pixel accuracy, the confusion matrix.

    python3 networks/evaluate.py --store s3://coco --model_name unet2d        # the run's own validation images
    python3 networks/evaluate.py --store s3://data --model_name deeplab --source ade20k --set val \\
        --mode slide --crop 512 512 --stride 341
    python3 networks/evaluate.py --store s3://coco --checkpoint models/unet2d/checkpoint.pt --records coco
    torchrun --nproc_per_node 2 networks/evaluate.py ...      # each image once; the same numbers as one process

prints one summary line and the per-class table, and writes runs/<model>/eval/<set>/report.json (the figures,
the confusion matrix, the settings), confusion.png (the matrix as a heatmap) and samples.png (image | label |
prediction for --samples images). --save_predictions DIR writes one PNG of trainIds per image, at the image's
size, named by the image's file stem.
"""

from __future__ import annotations

import os
import sys

from mllib import UsageError, checks, cli


def parse_args(argv=None):
    p = cli.parser(__doc__)
    cli.add_store_args(p)
    m = p.add_argument_group("model")
    m.add_argument("--model_name", type=checks.NAME, default=None,
                   help="models/<model_name>/checkpoint.pt in the store (default: unet2d)")
    m.add_argument("--checkpoint", default=None, help="a checkpoint's key in the store (instead of --model_name)")
    d = p.add_argument_group("data (default: the validation data the checkpoint was trained with)")
    d.add_argument("--source", default=None, help="a registered name or JSON source entries")
    d.add_argument("--records", type=checks.NAME, default=None, help="a TFRecord set (trainingsets/NAME)")
    d.add_argument("--val_annotations", "--valset", default=None,
                   help="a COCO annotation JSON's key (with --val_image_path; --valset, the seed's name, too)")
    d.add_argument("--val_image_path", default=None, help="key prefix of --val_annotations' images")
    d.add_argument("--set", default="val", help="the set of --source or --records to evaluate ('' for every entry "
                   "of --source)")
    e = p.add_argument_group("evaluation")
    e.add_argument("--mode", choices=("whole", "slide"), default="whole", help="whole images, or sliding windows")
    e.add_argument("--crop", type=checks.SIZE, nargs=2, metavar=("H", "W"), default=None,
                   help="slide mode's window (default: the training crop)")
    e.add_argument("--stride", type=checks.SIZE, nargs="+", metavar="S", default=None,
                   help="slide mode's stride, one value or H W (default: two thirds of the crop)")
    e.add_argument("--save_predictions", metavar="DIR", default=None,
                   help="write one PNG of trainIds per image (DIR/<image stem>.png)")
    e.add_argument("--out", default=None, help="report folder (default: runs/<model>/eval/<set>/)")
    e.add_argument("--samples", type=checks.Range(0, 64), default=8, help="images on samples.png (0: none)")
    e.add_argument("--max_images", type=checks.Range(1), default=None, help="evaluate only the first N images")
    e.add_argument("--num_workers", type=checks.Range(0, 256), default=min(4, os.cpu_count() or 1),
                   help="DataLoader worker processes")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    e.add_argument("--precision", choices=("checkpoint", "fp32", "amp"), default="checkpoint",
                   help="fp32, or amp (bf16 autocast; the numbers can differ slightly); default: as the checkpoint "
                        "was trained (--amp), as its validation ran")
    e.add_argument("--no_progress", action="store_true", help="no progress bar")
    cli.add_log_args(p)
    return p.parse_args(argv)


def _data(args, store, cfg, class_dict, rank, world):
    """(full-resolution dataset, the set's name) as the flags ask, else the checkpoint's validation data."""
    from mllib import sources as msources
    from mllib.loaders.segdataset import SegmentationDataset
    from mllib.training import evaluate as ev

    given = [f for f in ("source", "records", "val_annotations") if getattr(args, f)]
    if len(given) > 1:
        raise UsageError(f"give one of --source, --records, --val_annotations (got {', '.join('--' + g for g in given)})")
    if args.records:
        return ev.FullRecords(store, args.records, args.set or "val", rank, world), f"{args.records}-{args.set}"
    if args.source:
        st = store.with_bucket(cfg.bucket) if cfg.bucket else store
        specs = msources.resolve(args.source, st, classes_file=cfg.class_dictionary)
        if args.set and any(s.set == args.set for s in specs):
            specs = [s for s in specs if s.set == args.set]
        ds = SegmentationDataset(st, specs, classes=class_dict, astype="uint8", normalize="none",
                                 label_dtype="uint8", imflags=cfg.imflags)
        return ev.FullImages(ds), (f"{args.source}-{args.set}" if args.set else args.source)
    if args.val_annotations:
        from dataclasses import replace

        cfg = replace(cfg, val_annotations=args.val_annotations, val_image_path=args.val_image_path or cfg.val_image_path,
                      source=None, records=None)
    data = ev.eval_data(cfg, store, cfg.class_dictionary, rank, world)
    if data is None:
        raise UsageError("the checkpoint's configuration has no validation data: give --source, --records or --val_annotations")
    name = f"{cfg.records}-val" if cfg.records else (f"{cfg.source}-val" if cfg.source else
                                                      (cfg.val_annotations.rsplit("/", 1)[-1].removesuffix(".json")
                                                       if cfg.val_annotations else "held-out"))
    return data, name


def run(args) -> int:
    import time
    from pathlib import Path

    import torch
    from tqdm import tqdm

    from mllib import MllibError, layout
    from mllib.loaders.gpu import BatchPrep
    from mllib.training import evaluate as ev
    from mllib.training import train

    if args.model_name and args.checkpoint:
        raise UsageError("give --model_name or --checkpoint, not both")
    store = cli.open_store(args)
    key = args.checkpoint or layout.checkpoint(args.model_name or "unet2d")
    model_name = args.model_name or (key.rsplit("/", 2)[-2] if key.count("/") >= 2 else "model")
    with train.process_group() as (rank, world, local_rank):
        device = train.pick_device(args.device, local_rank)
        model, ck = ev.load_model(store, key, device)
        cfg, class_dict = ev.checkpoint_settings(ck)
        data, what = _data(args, store, cfg, class_dict, rank, world)
        if getattr(data, "classes", class_dict).names != class_dict.names:
            raise MllibError(f"the checkpoint predicts {class_dict.names}; the data's labels are "
                             f"{data.classes.names}: give a source in the checkpoint's classes")
        if args.max_images:
            if not isinstance(data, ev.FullImages):
                raise UsageError("--max_images takes the first images of a source or COCO set; a records set is "
                                 "evaluated whole")
            data = ev.FullImages(data.ds, data.rows[: args.max_images])
        crop = tuple(args.crop) if args.crop else (cfg.height, cfg.width)
        stride = (tuple(args.stride) * 2)[:2] if args.stride and len(args.stride) == 1 else \
            (tuple(args.stride[:2]) if args.stride else ev.stride_for(crop))
        pred_dir = Path(args.save_predictions) if args.save_predictions else None
        if pred_dir is not None:
            pred_dir.mkdir(parents=True, exist_ok=True)
            if isinstance(data, ev.FullImages):
                from collections import Counter

                dup = sorted(n for n, c in Counter(data.names()).items() if c > 1)
                if dup:
                    raise MllibError(f"--save_predictions names files by image stem, and {len(dup)} stems repeat "
                                     f"(first {dup[0]!r}): evaluate the sources one at a time")
        out = Path(args.out) if args.out else Path(layout.RUNS) / model_name / "eval" / ev.set_name(what)
        shown, seen = [], set()
        bar = tqdm(total=len(data), unit="image", desc="evaluate", disable=rank != 0 or args.no_progress,
                   dynamic_ncols=True)

        def each(k, name, image, label, pred):
            bar.update(1)
            if pred_dir is not None:
                if name in seen:
                    raise MllibError(f"--save_predictions: two images with the stem {name!r}")
                seen.add(name)
                from mllib.atomic import atomic_write
                from mllib.images import encode_label_png

                with atomic_write(pred_dir / f"{name}.png") as f:
                    f.write(encode_label_png(pred.numpy()))
            if rank == 0 and len(shown) < args.samples:
                shown.append((name, image, label, pred))

        use_amp = cfg.amp if args.precision == "checkpoint" else args.precision == "amp"
        amp = (torch.bfloat16 if device.type != "cuda" or torch.cuda.is_bf16_supported() else torch.float16) \
            if use_amp else None
        t0 = time.perf_counter()
        cm, n = ev.evaluate(model, ev.eval_loader(data, args.num_workers, rank, world), BatchPrep(device, cfg.normalize),
                            device, class_dict.classes, class_dict.ignore, mode=args.mode, crop=crop, stride=stride,
                            amp_dtype=amp, world=world, each=each)
        seconds = time.perf_counter() - t0
        bar.close()
        if rank != 0:
            return 0
        report = {"model": model_name, "checkpoint": store.url_for(key), "step": ck.get("step"),
                  "epoch": ck.get("epoch"), "set": what, "mode": args.mode,
                  **({"crop": list(crop), "stride": list(stride)} if args.mode == "slide" else {}),
                  "amp": bool(use_amp), "world_size": world, "images": n, "seconds": round(seconds, 3),
                  "images_per_s": round(n / seconds, 3) if seconds > 0 else None,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "classes": class_dict.names,
                  "ignore": class_dict.ignore, **cm.report(class_dict.names, matrix=True)}
        paths = ev.write_report(out, report, cm, class_dict, shown)
        miou = "-" if report["miou"] is None else f"{report['miou']:.4f}"
        print(f"{model_name} on {what} ({args.mode}): mIoU {miou} over {report['classes_counted']} classes, "
              f"mAcc {report['macc']}, aAcc {report['pixel_accuracy']}, {n} images, "
              f"{report['images_per_s']} images/s -> {paths[0]}")
        print(ev.table(report))
    return 0


def main(argv=None) -> int:
    return cli.main(parse_args, run, argv, "mllib-evaluate")


if __name__ == "__main__":
    sys.exit(main())
