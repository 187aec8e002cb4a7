"""Download COCO 2017 (images, instance / stuff / panoptic annotations, image info), verify it, and store the
extracted dataset in an object store.

    python3 datasets/getcoco.py --store s3://coco
    python3 datasets/getcoco.py --files val2017.zip,annotations_trainval2017.zip    # a subset
    python3 datasets/getcoco.py --unpinned     # also the stuff annotations (md5 only) and unlabeled image info

prints a progress bar per file (bytes, rate, ETA), an estimate of the time left for the whole job, and ends with

    COCO in s3://coco/datasets/coco
    8 files (0 already done), 25.97 GB downloaded, 287,212 objects stored in s3://coco/datasets/coco, 1h12m

Downloads resume after an interruption (re-run the same command), each zip is checked against the official
size / sha256 / md5, and the next download overlaps extracting the previous one straight into the store
(datasets/<dataset>/<member path>, nested zips extracted in place). Zips are deleted after a verified
extraction unless --keep_zips.
"""

from __future__ import annotations

import logging
import sys

from mllib import UsageError, checks, cli, layout
from mllib.get import download
from mllib.get import fetch as fetching

log = logging.getLogger("getcoco")

BASE_URL = "https://images.cocodataset.org"
# Download order: a zip is extracted while the next ones download, so the zips with the most objects per
# downloaded byte (panoptic PNGs: ~123k objects in ~0.9 GB) come first, while the big image zips are still to
# download, and the last ones are zips of a few files, whose extraction adds little at the end.
# The default set is the files whose size and sha256 are pinned in mllib/datasets/coco2017-checksums.tsv.
COCO_FILES = [
    "panoptic_annotations_trainval2017.zip",
    "train2017.zip",
    "test2017.zip",
    "val2017.zip",
    "annotations_trainval2017.zip",
    "image_info_test2017.zip",
]
# Official files without a published size and sha256: only on request (--files or --unpinned), with a warning.
UNPINNED_FILES = ["stuff_annotations_trainval2017.zip", "image_info_unlabeled2017.zip"]
IMAGE_ZIPS = {"train2017.zip", "val2017.zip", "test2017.zip", "unlabeled2017.zip"}


def url_path(name: str) -> str:
    return f"/zips/{name}" if name in IMAGE_ZIPS else f"/annotations/{name}"


def parse_args(argv=None):
    p = cli.parser(__doc__)
    cli.add_store_args(p)
    p.add_argument("--dataset", "-dataset", type=checks.NAME, default="coco", help="store folder: datasets/<dataset>/")
    p.add_argument(
        "--files",
        default=",".join(COCO_FILES),
        help="comma-separated file names to fetch (also unlabeled2017.zip, stuff_annotations_trainval2017.zip and "
        "image_info_unlabeled2017.zip, not fetched by default)",
    )
    p.add_argument("--unpinned", action="store_true",
                   help="also fetch the official files with no published size + sha256: "
                   + ", ".join(UNPINNED_FILES) + " (stuff is checked by its md5 only)")
    p.add_argument("--base_url", type=cli.http_url, default=BASE_URL, help="site or mirror serving /zips/... and /annotations/...")
    p.add_argument(
        "--checksums",
        default=None,
        help="checksum table for a mirror (columns url size sha256 md5; rows matched by file name); "
        "default: the official COCO 2017 table shipped with mllib",
    )
    cli.add_download_args(p)
    cli.add_log_args(p)
    return p.parse_args(argv)


def specs_for(names: list[str], base_url: str, checksums: str | None) -> list[fetching.FileSpec]:
    """What to download, with the size and checksums to verify (the official table, or --checksums)."""
    table = download.read_checksums(checksums)
    known = set(download.read_checksums(None)) | set(table)
    out = []
    for name in names:
        if name not in known:
            raise UsageError(f"unknown COCO file {name!r}; known: {', '.join(sorted(known))}")
        row = table.get(name) or fetching.FileSpec(name, "")
        if row.size is None and row.sha256 is None and row.md5 is None:
            log.warning("%s: UNVERIFIED: no size or checksum known; only the zip's own CRCs will be checked", name)
        elif row.size is None or row.sha256 is None:
            log.warning("%s: not pinned (no published %s); verified by %s only", name,
                        " and ".join(k for k, v in (("size", row.size), ("sha256", row.sha256)) if v is None),
                        ", ".join(k for k, v in (("size", row.size), ("sha256", row.sha256), ("md5", row.md5)) if v))
        out.append(fetching.FileSpec(name, base_url.rstrip("/") + url_path(name), row.size, row.sha256, row.md5))
    return out


def file_names(args) -> list[str]:
    """The zips to get: --files, plus the unpinned ones with --unpinned."""
    names = [n.strip() for n in args.files.split(",") if n.strip()]
    if args.unpinned:
        names += [n for n in UNPINNED_FILES if n not in names]
    return names


def run(args) -> int:
    specs = specs_for(file_names(args), args.base_url, args.checksums)
    store = cli.open_store(args)
    prefix = layout.dataset(args.dataset)
    summary = download.Job.from_args(specs, store, prefix, args).run()
    print(f"COCO in {store.url_for(prefix)}")
    print(summary.line())
    return 0


def main(argv=None) -> int:
    return cli.main(parse_args, run, argv, "mllib-getcoco")


if __name__ == "__main__":
    sys.exit(main())
