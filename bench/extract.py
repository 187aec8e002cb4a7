"""Benchmark: zip extraction into S3 at any zip size, against put_dir of the same objects, one run.

    python3 bench/extract.py [--members 10000,118287] [--kb 20] [--jobs 16] [--unbounded 10000] [--put_dir 10000]
                             [--tar 10000]

Starts SeaweedFS on 127.0.0.1, builds zips of N members of --kb KB (incompressible, stored: like JPEGs in
train2017.zip) and prints, per member count:
  extract   : objects/s of mllib.get.extract (getcoco's extraction) into a fresh bucket
  unbounded : the same with every member submitted to the pool at once (the code before the bounded window), at
              the --unbounded counts only (it slows down as the zip grows)
  put_dir   : objects/s of Store.put_dir of the same objects from a folder, at the --put_dir counts
  tar, tgz  : objects/s of the same members as a plain tar and a tar.gz (VOC's and SBD's formats), at the --tar
              counts, medians of --rounds alternating zip / tar / tgz rounds (goal: >= 0.8x the zip's)
and the ratios: extraction at the largest count vs the smallest (goal: within 15%), extraction vs put_dir (goal
>= 0.6x).
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
import uuid
import zipfile
from pathlib import Path

from mllib import store as mstore
from mllib.get import extract
from mllib.store import base
from mllib.testing.seaweed import SeaweedS3


def build_zip(path: Path, n: int, kb: int) -> None:
    blob = os.urandom(kb * 1024 + 4096)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i in range(n):
            k = i % 4096  # members differ, as images do
            zf.writestr(f"train2017/{i:012d}.jpg", blob[k:k + kb * 1024])


def build_tar(zip_path: Path, path: Path, mode: str) -> None:
    """The zip's members, in its order, as a tar (mode "w") or tar.gz ("w:gz")."""
    with zipfile.ZipFile(zip_path) as zf, tarfile.open(path, mode) as tf:
        for info in zf.infolist():
            ti = tarfile.TarInfo(info.filename)
            ti.size = info.file_size
            with zf.open(info) as f:
                tf.addfile(ti, f)


def extraction(server, zip_path: Path, jobs: int, unbounded: bool) -> float:
    bucket = "x-" + uuid.uuid4().hex[:10]
    server.create_bucket(bucket)
    store = mstore.connect(f"s3://{bucket}")
    real = extract.run_all
    if unbounded:  # the whole list submitted at once
        extract.run_all = functools.partial(base.run_all, window=1 << 40)
    try:
        t0 = time.perf_counter()
        report = extract.extract_to_store(zip_path, store, "datasets/coco", jobs=jobs, bar=False)
        seconds = time.perf_counter() - t0
    finally:
        extract.run_all = real
    return report.stored / seconds


def put_dir(server, zip_path: Path, tmp: Path, jobs: int) -> float:
    folder = tmp / "files"
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(folder)
    bucket = "p-" + uuid.uuid4().hex[:10]
    server.create_bucket(bucket)
    report = mstore.connect(f"s3://{bucket}").put_dir(folder, "datasets/coco", jobs=jobs)
    shutil.rmtree(folder)
    return report.transferred / report.seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", default="10000,118287")
    ap.add_argument("--kb", type=int, default=20)
    ap.add_argument("--jobs", type=int, default=16, help="upload threads (getcoco's --jobs default)")
    ap.add_argument("--unbounded", default="10000", help="counts at which to measure the unbounded pool too")
    ap.add_argument("--put_dir", default="10000", help="counts at which to measure put_dir too")
    ap.add_argument("--tar", default="10000", help="counts at which to measure tar and tar.gz too")
    ap.add_argument("--rounds", type=int, default=5, help="alternating zip / tar / tgz rounds at the --tar counts")
    args = ap.parse_args()
    counts = [int(c) for c in args.members.split(",")]
    also_unbounded = {int(c) for c in args.unbounded.split(",") if c}
    also_put = {int(c) for c in args.put_dir.split(",") if c}
    also_tar = {int(c) for c in args.tar.split(",") if c}
    with tempfile.TemporaryDirectory(prefix="mllib-bench-extract-") as tmp:
        tmp = Path(tmp)
        server = SeaweedS3(tmp / "weed").start()  # 200 volumes of 64 MB: 12.8 GB
        rates = {}
        try:
            with server.environment():
                print(f"{args.kb} KB members, {args.jobs} upload threads, {os.cpu_count()} cores, SeaweedFS on "
                      f"127.0.0.1")
                for n in counts:
                    zip_path = tmp / f"train2017-{n}.zip"
                    build_zip(zip_path, n, args.kb)
                    rates[n] = extraction(server, zip_path, args.jobs, unbounded=False)
                    line = f"{n:>7,} members: extract {rates[n]:6.1f} objects/s"
                    if n in also_unbounded:
                        old = extraction(server, zip_path, args.jobs, unbounded=True)
                        line += f", unbounded {old:6.1f} ({rates[n] / old:.2f}x)"
                    if n in also_put:
                        pd = put_dir(server, zip_path, tmp, args.jobs)
                        line += f", put_dir {pd:6.1f} (extract / put_dir {rates[n] / pd:.2f}x, goal >= 0.6)"
                    if n in also_tar:  # alternating rounds, medians: the server's rate drifts as it fills
                        paths = {"zip": zip_path}
                        for fmt, mode in (("tar", "w"), ("tgz", "w:gz")):
                            paths[fmt] = tmp / f"train2017-{n}.{fmt}"
                            build_tar(zip_path, paths[fmt], mode)
                        got: dict[str, list[float]] = {f: [] for f in paths}
                        for _ in range(args.rounds):
                            for fmt, path in paths.items():
                                got[fmt].append(extraction(server, path, args.jobs, unbounded=False))
                        med = {f: statistics.median(v) for f, v in got.items()}
                        line += f"; medians of {args.rounds} rounds: zip {med['zip']:6.1f}"
                        for fmt in ("tar", "tgz"):
                            line += f", {fmt} {med[fmt]:6.1f} ({fmt} / zip {med[fmt] / med['zip']:.2f}x, goal >= 0.8)"
                            paths[fmt].unlink()
                    print(line, flush=True)
                    zip_path.unlink()
        finally:
            server.stop()
        lo, hi = min(counts), max(counts)
        if lo != hi:
            print(f"extract at {hi:,} / at {lo:,} members: {rates[hi] / rates[lo]:.2f}x (goal 0.85-1.15)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
