"""Check a dataset in the store before training on it: every label read once, against its class dictionary.

    python3 datasets/checkdataset.py --store s3://data --datasets '[{"type": "folder",
        "imagepath": "datasets/own/images", "labelpath": "datasets/own/masks", "classes_file": "datasets/own/own.json"}]'
    python3 datasets/checkdataset.py coco --set val --store s3://coco      # a registered dataset
    python3 datasets/checkdataset.py ade20k --store s3://data              # (datasets/getdataset.py --list)

reports label values the class dictionary does not map (file, values, pixels), images without labels, labels
without images, image/label size mismatches, unreadable files, and per class its pixels, share and the images
that contain it; writes a JSON report (with inverse and median-frequency class weights) and a contact sheet of the
rarest classes, and ends with a line like

    checked 1,464 labels in 9.8 s (149 labels/s): 0 problems -> checkdataset_own.json, checkdataset_own.png

Exit status 0 when every label is usable, 1 when any label holds unmapped values or pairs are broken (the first
problems are printed; the report lists them all).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from mllib import checks, cli


def parse_args(argv=None):
    p = cli.parser(__doc__)
    cli.add_store_args(p)
    p.add_argument("name", nargs="?", default=None,
                   help="a registered dataset (coco, cityscapes, ade20k, voc2012, voc2012-aug, sbd, cocostuff, "
                        "mapillary, bdd100k; comma-separated: combined); or give --datasets")
    p.add_argument("--datasets", "--source", dest="datasets", default=None,
                   help="JSON list of source entries, as cocorecord.py --datasets takes them")
    p.add_argument("--set", default=None, help="check only the entries of this set (train, val)")
    p.add_argument("--classes_file", default=None,
                   help="class dictionary of the set (default: the first entry's, a CVAT export's labelmap, else coco)")
    p.add_argument("--crowd", choices=("class", "ignore"), default="class", help="COCO crowd regions")
    p.add_argument("--jobs", type=checks.Range(1, 256), default=min(8, os.cpu_count() or 1), help="worker processes")
    p.add_argument("--threads", type=checks.Range(1, 256), default=16, help="store reads in flight per process")
    p.add_argument("--no_image_sizes", action="store_true",
                   help="read only the labels (one request an item): no image/label size check")
    p.add_argument("--max_images", type=checks.Range(1), default=None, help="check only the first N items")
    p.add_argument("--report", default=None, help="JSON report to write (default: checkdataset_<name>.json)")
    p.add_argument("--sheet", default=None,
                   help="contact sheet PNG of the rarest classes (default: checkdataset_<name>.png; '' for none)")
    p.add_argument("--sheet_classes", type=checks.Range(1, 256), default=8, help="classes on the contact sheet")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    cli.add_log_args(p)
    return p.parse_args(argv)


def run(args) -> int:
    from mllib import sources
    from mllib.sources.check import Check, first_problems

    if not args.name and not args.datasets:
        raise cli.UsageError("give a registered dataset name (" + ", ".join(sources.names()) + ") or --datasets JSON")
    if args.name and args.datasets:
        raise cli.UsageError("give a dataset name or --datasets, not both")
    store = cli.open_store(args)
    specs = sources.resolve(args.name or args.datasets, store, args.set, what="--datasets",
                            classes_file=args.classes_file)
    first = specs[0].key(specs[0].imagepath or specs[0].jsonpath).split("/")
    label = args.name or (first[1] if first[0] == "datasets" and len(first) > 2 else first[-1]) or "source"
    label += f"_{args.set}" if args.set else ""
    check = Check(store, specs, args.classes_file, args.crowd, jobs=args.jobs, threads=args.threads,
                  bar=not args.no_progress, sizes=not args.no_image_sizes)
    report = check.run(args.max_images)
    report_path = Path(args.report or f"checkdataset_{label}.json")
    sheet_path = f"checkdataset_{label}.png" if args.sheet is None else args.sheet
    wrote = [str(report_path)]
    if sheet_path:
        from mllib.labels import display

        sheet = check.sheet(report, args.sheet_classes)
        if sheet is not None:
            display.write_png(sheet_path, sheet)
            wrote.append(sheet_path)
    tmp = report_path.with_name(report_path.name + ".part")
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, report_path)

    print(f"{'trainId':>7} {'class':<24} {'pixels':>14} {'share':>8} {'images':>7} {'w_inv':>9} {'w_med':>9}")
    w = report["class_weights"]
    for row in report["class_table"]:
        t = row["trainId"]
        print(f"{t:>7} {row['name'][:24]:<24} {row['pixels']:>14,d} {row['fraction']:>8.2%} {row['images']:>7,d} "
              f"{w['inverse'][t]:>9.3f} {w['median'][t]:>9.3f}")
    if report["binary_masks"]["count"]:
        print(f"warning: {report['binary_masks']['count']} label(s) hold only 0 and 255: {report['binary_masks']['why']}",
              file=sys.stderr)
    counts = {k: v for k, v in report["problems"].items() if v}
    n_prob = sum(counts.values())
    print(f"checked {report['labels_checked']:,d} of {report['items']:,d} labels in {report['seconds']:.1f} s "
          f"({report['labels_per_s']} labels/s): {n_prob} problem(s)"
          + (f" ({', '.join(f'{v} {k}' for k, v in counts.items())})" if counts else "")
          + f" -> {', '.join(wrote)}")
    if n_prob:
        for line in first_problems(report):
            print(f"checkdataset.py: {line}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    return cli.main(parse_args, run, argv, "mllib-checkdataset")


if __name__ == "__main__":
    sys.exit(main())
