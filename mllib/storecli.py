"""Look into a store from the shell: list, copy in and out, show where things are.

    python3 -m mllib.storecli --store s3://coco ls datasets/coco/annotations/
    python3 -m mllib.storecli --store s3://coco put_dir ./local_dir datasets/mine
    python3 -m mllib.storecli --store s3://coco get_dir trainingsets/coco ./coco_records
"""

from __future__ import annotations

import sys

from mllib import checks, cli


def parse_args(argv=None):
    p = cli.parser(__doc__)
    cli.add_store_args(p)
    cli.add_log_args(p)
    p.add_argument("--jobs", type=checks.Range(1, 256), default=32, help="concurrent transfers for put_dir / get_dir")
    sub = p.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("ls", help="list objects with sizes under a prefix")
    ls.add_argument("prefix", nargs="?", default="")
    for name, a, b in (("put_dir", "local_dir", "prefix"), ("get_dir", "prefix", "local_dir")):
        sp = sub.add_parser(name, help=f"copy {a} to {b}, skipping unchanged files")
        sp.add_argument(a)
        sp.add_argument(b)
    return p.parse_args(argv)


def run(args) -> int:
    s = cli.open_store(args)
    if args.cmd == "ls":
        n = total = 0
        for info in s.list(args.prefix):
            print(f"{info.size:>14,d}  {info.key}")
            n += 1
            total += info.size
        print(f"{n:,d} objects, {total / 1e6:,.1f} MB under {s.url_for(args.prefix)}")
    elif args.cmd == "put_dir":
        print(f"{s.put_dir(args.local_dir, args.prefix, jobs=args.jobs)} -> {s.url_for(args.prefix)}")
    else:
        print(f"{s.get_dir(args.prefix, args.local_dir, jobs=args.jobs)} -> {args.local_dir}")
    return 0


def main(argv=None) -> int:
    return cli.main(parse_args, run, argv, "mllib-store")


if __name__ == "__main__":
    sys.exit(main())
