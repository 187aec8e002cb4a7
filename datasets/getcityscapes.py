"""Download Cityscapes (needs an account), verify each package's md5, and store the extracted dataset.

    export CITYSCAPES_USERNAME=me CITYSCAPES_PASSWORD=...     # or a chmod-600 credentials file, or a prompt
    python3 datasets/getcityscapes.py --store s3://coco        # gtFine_trainvaltest + leftImg8bit_trainvaltest

stores datasets/cityscapes/leftImg8bit/..., datasets/cityscapes/gtFine/... and ends with

    Cityscapes in s3://coco/datasets/cityscapes
    2 files (0 already done), 11.9 GB downloaded, 30,000 objects stored in s3://coco/datasets/cityscapes, 25m10s

Same behaviour as getcoco.py: resumable downloads, verification, extraction overlapping the next download,
re-runs that skip finished packages.
"""

from __future__ import annotations

import sys

from mllib import cityscapes, cli, download


def parse_args(argv=None):
    p = cli.parser(__doc__)
    cli.add_store_args(p)
    p.add_argument("--dataset", "-dataset", default="cityscapes", help="store folder: datasets/<dataset>/")
    p.add_argument("--packages", default="1,3",
                   help="package ids: " + ", ".join(f"{k} {v}" for k, v in cityscapes.KNOWN_PACKAGES.items()))
    p.add_argument("--base_url", default=cityscapes.BASE_URL, help="site or mirror")
    p.add_argument("--credentials_file", default=str(cityscapes.DEFAULT_CREDENTIALS),
                   help='JSON {"username", "password"}, mode 600; used when CITYSCAPES_USERNAME/PASSWORD are unset')
    p.add_argument("--workdir", "-path", default="downloads", help="where zips are downloaded")
    p.add_argument("--keep_zips", action="store_true", help="keep the zips after a verified extraction")
    p.add_argument("--jobs", type=int, default=16, help="concurrent uploads into the store")
    p.add_argument("--retries", type=int, default=8, help="retries per file on resets, timeouts and 5xx")
    p.add_argument("--no_progress", action="store_true", help="no progress bars (logs only)")
    cli.add_log_args(p)
    return p.parse_args(argv)


def run(args) -> int:
    import requests

    try:
        packages = [int(x) for x in args.packages.split(",") if x.strip()]
    except ValueError:
        raise cityscapes.CityscapesError(f"--packages takes ids like 1,3, got {args.packages!r}") from None
    store = cli.open_store(args)  # fail on the store before asking for a password
    session = requests.Session()
    user, password = cityscapes.credentials(args.credentials_file)
    cityscapes.login(session, args.base_url, user, password)
    specs = cityscapes.specs(session, args.base_url, packages)
    prefix = f"datasets/{args.dataset}"
    job = download.Job(specs, store, prefix, args.workdir, jobs=args.jobs, keep_zips=args.keep_zips,
                       session=session, bar=not args.no_progress, retries=args.retries)
    summary = job.run()
    print(f"Cityscapes in {store.url_for(prefix)}")
    print(summary.line())
    return 0


def main(argv=None) -> int:
    return cli.main(parse_args, run, argv, "getcityscapes.py")


if __name__ == "__main__":
    sys.exit(main())
