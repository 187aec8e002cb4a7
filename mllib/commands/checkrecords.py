"""Verify a TFRecord training set against its description.json: every shard present, its size, its sha256, its
record count, and every record's length and data CRCs.

    python3 datasets/checkrecords.py coco --store s3://coco
    python3 datasets/checkrecords.py coco --set val --report check.json

ends with a line like

    checked 119 shards, 123,287 records, 19.8 GB in 61.2 s (324 MB/s): 0 bad shards

or names each bad shard with what is wrong (a record's byte offset where the bytes changed) and the command that
re-writes them: a cocorecord.py re-run with the set's own settings re-writes exactly the shards whose bytes no
longer match. Exit status 0 when the set is intact, 1 when any shard is bad.
"""

from __future__ import annotations

import json
import sys

from mllib import checks, cli


def parse_args(argv=None):
    p = cli.parser(__doc__)
    cli.add_store_args(p)
    p.add_argument("name", type=checks.NAME, help="the training set (trainingsets/NAME)")
    p.add_argument("--set", action="append", default=None, help="check only this set (repeatable)")
    p.add_argument("--threads", type=checks.Range(1, 256), default=8, help="shards read at once")
    p.add_argument("--report", default=None, help="write the JSON report here")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    cli.add_log_args(p)
    return p.parse_args(argv)


def rerun_command(name: str, config: dict | None) -> str:
    """The cocorecord.py command that re-writes the bad shards of the set (its recorded settings)."""
    c = config or {}
    parts = ["python3 datasets/cocorecord.py", f"-trainingset_name {name}"]
    if c.get("entries"):
        parts.append("--datasets '" + json.dumps(c["entries"]) + "'")
    for flag in ("classes_file", "shard_images", "seed", "crowd", "max_images"):
        if c.get(flag) is not None:
            parts.append(f"--{flag} {c[flag]}")
    if c.get("skip_bad"):
        parts.append("--skip_bad")
    return " ".join(parts) + " --store ..."


def run(args) -> int:
    from tqdm import tqdm

    from mllib.atomic import atomic_write
    from mllib.records.read import description
    from mllib.records.verify import check_set

    store = cli.open_store(args)
    desc = description(store, args.name)
    total = sum(len(st.get("shards", [])) for k, st in desc.get("sets", {}).items() if not args.set or k in args.set)
    bar = tqdm(total=total, unit="shard", desc=f"checkrecords {args.name}", disable=args.no_progress,
               dynamic_ncols=True)
    report = check_set(store, args.name, args.set, args.threads, progress=lambda r: bar.update(1))
    bar.close()
    if args.report:
        with atomic_write(args.report, "w") as f:
            json.dump(report, f, indent=1)
    for r in report["shards"]:
        for p in r["problems"]:
            print(f"bad: {p}")
    rate = report["bytes"] / 1e6 / report["seconds"] if report["seconds"] > 0 else 0.0
    print(f"checked {len(report['shards'])} shards, {report['records']:,} records, {report['bytes'] / 1e9:.2f} GB in "
          f"{report['seconds']:.1f} s ({rate:.0f} MB/s): {len(report['bad'])} bad shards")
    if report["bad"]:
        print(f"re-convert them ({', '.join(k.rsplit('/', 1)[-1] for k in report['bad'][:5])}"
              f"{', ...' if len(report['bad']) > 5 else ''}): {rerun_command(args.name, report['config'])}")
        return 1
    return 0


def main(argv=None) -> int:
    return cli.main(parse_args, run, argv, "mllib-checkrecords")


if __name__ == "__main__":
    sys.exit(main())
