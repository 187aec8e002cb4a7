"""Write a contact sheet of N records of a training set, or N items of any source: each image with its colored
label and class names.

    python3 datasets/viewdataset.py -trainingset_name coco --set val -n 16 --out coco_val.png
    python3 datasets/viewdataset.py --source voc2012-aug --set train -n 16 --out aug.png   # a registered dataset
    python3 datasets/viewdataset.py --source '[{"type": "folder", "imagepath": "datasets/own/images",
        "labelpath": "datasets/own/masks", "classes_file": "datasets/own/own.json"}]' -n 16 --out own.png

prints "wrote coco_val.png: 16 records of trainingsets/coco (val)".
"""

from __future__ import annotations

import itertools
import sys

from mllib import MllibError, UsageError, checks, cli, layout
from mllib.labels import classes, display
from mllib.records import read as records


def parse_args(argv=None):
    p = cli.parser(__doc__)
    cli.add_store_args(p)
    p.add_argument("--trainingset_name", "-trainingset_name", type=checks.NAME, default=None,
                   help="training set name (or give --source)")
    p.add_argument("--source", default=None,
                   help="show a source's items instead of records: a registered name or JSON source entries")
    p.add_argument("--set", default="val", help="which set (with --source: the entries of this set, if it has any)")
    p.add_argument("-n", "--count", type=checks.Range(1), default=16, help="records to show")
    p.add_argument("--cols", type=checks.Range(1, 64), default=4, help="tiles per row")
    p.add_argument("--size", type=checks.Range(16, 4096), default=256, help="tile size in pixels")
    p.add_argument("--out", default=None, help="PNG to write (default: <name>_<set>.png)")
    cli.add_log_args(p)
    return p.parse_args(argv)


def run(args) -> int:
    if bool(args.trainingset_name) == bool(args.source):
        raise UsageError("give --trainingset_name (a records set) or --source (a dataset in the store)")
    store = cli.open_store(args)
    if args.source:
        return _source_sheet(args, store)
    desc = records.description(store, args.trainingset_name)
    d = classes.load(desc["classes"])
    keys = records.shard_keys(store, args.trainingset_name, args.set)
    samples = []
    for rec in itertools.islice(records.iter_serialized(store, keys), args.count):
        r = records.parse(rec)
        samples.append((r["image"], r["label"], r["source_id"]))
    if not samples:
        raise MllibError(f"set {args.set} of {args.trainingset_name} has no records")
    out = args.out or f"{args.trainingset_name}_{args.set}.png"
    display.write_png(out, display.contact_sheet(samples, d, cols=args.cols, size=args.size))
    print(f"wrote {out}: {len(samples)} records of {store.url_for(layout.trainingset(args.trainingset_name))} "
          f"({args.set})")
    return 0


def _source_sheet(args, store) -> int:
    from mllib import images, sources

    specs = sources.resolve(args.source, store)
    specs = [s for s in specs if s.set == args.set] or specs
    src = sources.open_sources(store, specs)
    samples = []
    for row in range(min(args.count, len(src))):
        got = src.fetch(row)
        if got.get("image") is None:
            continue
        img = images.decode(got["image"])
        key, sid, where = src.item(row)
        samples.append((img, src.label(row, img.shape[0], img.shape[1], where, got), sid))
    if not samples:
        raise MllibError("the source has no items with an image in the store")
    out = args.out or "source.png"
    display.write_png(out, display.contact_sheet(samples, src.classes, cols=args.cols, size=args.size))
    print(f"wrote {out}: {len(samples)} items of {src.describe()}")
    return 0


def main(argv=None) -> int:
    return cli.main(parse_args, run, argv, "mllib-viewdataset")


if __name__ == "__main__":
    sys.exit(main())
