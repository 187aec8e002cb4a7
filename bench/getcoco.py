"""Benchmark: getcoco's whole job (download + verify + extract into S3) against the download alone.

    python3 bench/getcoco.py [--images 1500] [--kb 160] [--rate_mb 20]

Builds COCO-layout zips (JPEG-sized incompressible members, like real JPEGs) served by `python3 -m
mllib.testing.mirror` in its own process, throttled to --rate_mb MB/s per connection (an internet link; 0 = as fast as
loopback goes), starts SeaweedFS, then in one run measures
  1. the download alone (fetch + verify of every zip), and
  2. the whole job (datasets/getcoco.py's Job: download, verify, extract into the S3 server),
and prints their ratio (goal <= 1.3: extraction hides behind downloading) and objects/s into the store.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from mllib import store as mstore
from mllib.get import download
from mllib.get import fetch as fetching
from mllib.testing.seaweed import SeaweedS3, free_port


def build_site(root: Path, images: int, kb: int) -> list[fetching.FileSpec]:
    layout = {
        "zips/train2017.zip": [f"train2017/{i:012d}.jpg" for i in range(images * 2 // 3)],
        "zips/val2017.zip": [f"val2017/{i:012d}.jpg" for i in range(images * 2 // 3, images)],
        "annotations/annotations_trainval2017.zip": ["annotations/instances_val2017.json"],
    }
    specs = []
    for rel, members in layout.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
            for k, m in enumerate(members):
                size = int(kb * 1024 * (0.5 + (k % 11) / 10))
                z.writestr(m, os.urandom(size) if m.endswith(".jpg") else b'{"images": []}' * 200_000)
        data = p.read_bytes()
        specs.append(fetching.FileSpec(p.name, rel, len(data), hashlib.sha256(data).hexdigest(), None))
    return specs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1500)
    ap.add_argument("--kb", type=int, default=160, help="mean image size (COCO's is ~160 KB)")
    ap.add_argument("--rate_mb", type=float, default=20.0, help="mirror speed per connection, MB/s (0: unthrottled)")
    ap.add_argument("--jobs", type=int, default=16)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="mllib-bench-getcoco-"))
    mirror = None
    try:
        specs = build_site(tmp / "site", a.images, a.kb)
        total = sum(s.size for s in specs)
        print(f"{len(specs)} zips, {total / 1e6:.0f} MB, {a.images} images; mirror at "
              f"{a.rate_mb or 'unthrottled'} MB/s")
        port = free_port()
        cmd = [sys.executable, "-m", "mllib.testing.mirror", str(tmp / "site"), "--port", str(port)]
        if a.rate_mb:
            cmd += ["--rate", str(int(a.rate_mb * 1e6))]
        mirror = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        specs = [fetching.FileSpec(s.name, f"http://127.0.0.1:{port}/{s.url}", s.size, s.sha256) for s in specs]

        t0 = time.perf_counter()
        for s in specs:
            fetching.fetch(s, tmp / "dl-only", bar=False)
        t_dl = time.perf_counter() - t0
        print(f"download alone : {t_dl:6.2f} s  ({total / 1e6 / t_dl:.1f} MB/s)")

        with SeaweedS3(tmp / "s3") as server:
            os.environ.update(server.env())
            server.create_bucket("coco")
            store = mstore.connect("s3://coco")
            job = download.Job(specs, store, "datasets/coco", tmp / "job", jobs=a.jobs, bar=False)
            t0 = time.perf_counter()
            summary = job.run()
            t_job = time.perf_counter() - t0
            print(f"whole job      : {t_job:6.2f} s  ({summary.objects} objects, {summary.objects / t_job:.0f} objects/s "
                  "into the store over the whole job)")
            print(f"ratio job / download: {t_job / t_dl:.2f} (goal <= 1.3)")
            t0 = time.perf_counter()
            download.Job(specs, store, "datasets/coco", tmp / "job", jobs=a.jobs, bar=False).run()
            print(f"re-run (nothing to do): {time.perf_counter() - t0:.2f} s")
    finally:
        if mirror:
            mirror.terminate()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
