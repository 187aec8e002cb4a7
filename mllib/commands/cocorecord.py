"""Convert the datasets in the store into a sharded TFRecord training set.

    python3 datasets/cocorecord.py -trainingset_name coco --store s3://coco

reads datasets/coco/annotations/instances_{train,val}2017.json (+ stuff_*.json when present) and the images
beside them, renders one PNG label of trainIds per image (mllib/datasets/coco.json), and writes

    trainingsets/coco/train-00000-of-00119.tfrecord ... val-00000-of-00005.tfrecord, description.json

ending with a line like "wrote 123,287 records to 124 shards, 19.52 GB, 0 skipped, in 2051.3 s -> s3://...".
Any source (mllib/sources: coco, cityscapes, folder, cvat) with --datasets; your own images and label PNGs:

    --datasets '[{"type": "folder", "imagepath": "datasets/own/images", "labelpath": "datasets/own/masks",
                  "classes_file": "datasets/own/own.json", "set": "train"}]'

Entries with the same "set" are combined, e.g. COCO val and Cityscapes val into one 4-class set:

    --datasets '[{"jsonpath": "annotations/instances_val2017.json", "imagepath": "val2017", "set": "val"},
                 {"type": "cityscapes", "dataset": "cityscapes", "imagepath": "leftImg8bit/val",
                  "labelpath": "gtFine/val", "set": "val"}]'

A registered dataset by name, with its own dictionary, or several combined onto one class list:

    python3 datasets/cocorecord.py -trainingset_name ade --dataset ade20k
    python3 datasets/cocorecord.py -trainingset_name pva --dataset coco,cityscapes,ade20k,voc2012-aug --classes_file coco

An interrupted run, re-run with the same command, skips the shards already written. On a Ray cluster (one task per
shard, the same bytes; pip install 'mllib[ray]'):

    python3 datasets/cocorecord.py -trainingset_name coco --store s3://coco --engine ray --ray_address HEAD:6379
"""

from __future__ import annotations

import getpass
import sys

from mllib import checks, cli
from mllib.records import convert as trainingset


def dataset_names(v: str) -> str:
    """--dataset: one or more comma-separated folder names."""
    return ",".join(checks.NAME(x.strip()) for x in v.split(","))


def parse_args(argv=None):
    p = cli.parser(__doc__)
    cli.add_store_args(p)
    p.add_argument("--trainingset_name", "-trainingset_name", type=checks.NAME, required=True,
                   help="name of the training set: trainingsets/<name>/ in the store")
    p.add_argument("--dataset", "-dataset", type=dataset_names, default="coco",
                   help="registered dataset(s) to convert, with their own class dictionary (ade20k, voc2012-aug, "
                        "cocostuff, ...; comma-separated: combined through their maps onto --classes_file's classes, "
                        "else the first's; datasets/getdataset.py --list), or the store folder of COCO entries "
                        "(default coco)")
    p.add_argument("--datasets", "-datasets", default=None,
                   help="JSON list of source entries {type, set, imagepath, labelpath, jsonpath, stuffpath, "
                        "classes_file, image_suffix, label_suffix, split_file, label_format, dataset, "
                        "name_decoration} (README: 'Sources'), or a registered name (coco, cityscapes); default: "
                        "COCO train2017 and val2017 instances, + stuff when present")
    p.add_argument("--classes_file", "-classes_file", default=None,
                   help="class dictionary of the set: a name in mllib/datasets, a local path or a key in the store "
                        "(default: coco; for a folder or cvat first entry, its classes_file or a CVAT export's labelmap)")
    p.add_argument("--shard_images", "-shard_images", type=checks.Range(1), default=1000, help="images per shard")
    p.add_argument("--jobs", type=checks.Range(1, 256), default=1, help="worker processes (a local Ray's CPUs)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: --jobs processes on this machine; ray: one Ray task per shard (pip install "
                        "'mllib[ray]'), on --ray_address or a local Ray started for the run")
    p.add_argument("--ray_address", default=None,
                   help="HOST:PORT of an existing Ray cluster's head (ray start --head; KubeRay) for --engine ray")
    p.add_argument("--crowd", choices=("class", "ignore"), default="class",
                   help="crowd regions get their class, or the ignore value 255")
    p.add_argument("--max_images", "-max_images", type=checks.Range(1), default=None, help="at most this many images per set")
    p.add_argument("--seed", type=checks.SEED, default=0, help="shuffle seed (recorded in description.json)")
    p.add_argument("--author", default=getpass.getuser(), help="recorded in description.json")
    p.add_argument("--description", default="", help="recorded in description.json")
    p.add_argument("--skip_bad", action="store_true",
                   help="skip images with bad annotations (listed in description.json) instead of failing")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    cli.add_log_args(p)
    return p.parse_args(argv)


def run(args) -> int:
    if args.ray_address and args.engine != "ray":
        raise cli.UsageError("--ray_address goes with --engine ray")
    if args.engine == "ray":
        from mllib.records.rayengine import _ray, check_address

        _ray()  # installed, and the cluster answers, before the store is opened
        if args.ray_address:
            check_address(args.ray_address)
    store = cli.open_store(args)
    entries = (trainingset.parse_entries(args.datasets, store, args.classes_file) if args.datasets
               else trainingset.default_entries(store, args.dataset, args.classes_file))
    conv = trainingset.Conversion(
        store, args.trainingset_name, entries, classes_file=args.classes_file, shard_images=args.shard_images,
        jobs=args.jobs, crowd=args.crowd, max_images=args.max_images, seed=args.seed, author=args.author,
        description=args.description, skip_bad=args.skip_bad, bar=not args.no_progress, engine=args.engine,
        ray_address=args.ray_address)
    desc = conv.run()
    for name, s in desc["sets"].items():
        for sk in s["skipped"]:
            print(f"skipped {sk['key']}: {sk['reason']}")
        print(f"{name}: {s['length']:,d} records in {len(s['shards'])} shards")
    print(conv.summary_line())
    return 0


def main(argv=None) -> int:
    return cli.main(parse_args, run, argv, "mllib-cocorecord")


if __name__ == "__main__":
    sys.exit(main())
