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

from mllib import checks, cli, layout
from mllib.get import cityscapes, download


def parse_args(argv=None):
    p = cli.parser(__doc__)
    cli.add_store_args(p)
    p.add_argument("--dataset", "-dataset", type=checks.NAME, default="cityscapes", help="store folder: datasets/<dataset>/")
    p.add_argument("--packages", default="1,3",
                   help="package ids: " + ", ".join(f"{k} {v}" for k, v in cityscapes.KNOWN_PACKAGES.items()))
    p.add_argument("--base_url", type=cli.http_url, default=cityscapes.BASE_URL, help="site or mirror")
    p.add_argument("--credentials_file", default=str(cityscapes.DEFAULT_CREDENTIALS),
                   help='JSON {"username", "password"}, mode 600; used when CITYSCAPES_USERNAME/PASSWORD are unset')
    cli.add_download_args(p)
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
    prefix = layout.dataset(args.dataset)
    summary = download.Job.from_args(specs, store, prefix, args, session=session).run()
    print(f"Cityscapes in {store.url_for(prefix)}")
    print(summary.line())
    return 0


def main(argv=None) -> int:
    return cli.main(parse_args, run, argv, "mllib-getcityscapes")


if __name__ == "__main__":
    sys.exit(main())
