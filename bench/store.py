"""Benchmark: mllib.store put_dir against `aws s3 cp --recursive`, same files, same SeaweedFS server, one run.

    python3 bench/store.py [--files 2000] [--kb 150] [--jobs 32]

Prints objects/s and MB/s for both and their ratio (goal: put_dir >= 1.5x awscli's objects/s), then the
time of a second put_dir that skips every unchanged object, then the small-object fast PUT (mllib.store.fastput)
against boto3's put_object alone: the same put_dir with the fast path switched off (goal: the fast path keeps
its ~2x; it is dropped if the gain does not hold).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mllib import store as mstore
from mllib.testing.seaweed import SeaweedS3


def make_files(root: Path, n: int, kb: int) -> int:
    total = 0
    for i in range(n):
        p = root / f"d{i % 20:02d}" / f"{i:012d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        size = int(kb * 1024 * (0.5 + (i % 11) / 10))  # 0.5x .. 1.5x, mean ~kb
        p.write_bytes(os.urandom(size))
        total += size
    return total


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--kb", type=int, default=150)
    p.add_argument("--jobs", type=int, default=32)
    a = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="mllib-bench-store-"))
    try:
        total = make_files(tmp / "src", a.files, a.kb)
        print(f"{a.files} files, {total / 1e6:.1f} MB in {tmp / 'src'}")
        with SeaweedS3(tmp / "s3") as server, server.environment():
            server.create_bucket("mllib")
            server.create_bucket("awscli")
            s = mstore.connect("s3://mllib")
            r = s.put_dir(tmp / "src", "bench", jobs=a.jobs)
            ours = r.transferred / r.seconds
            print(f"put_dir      : {r.seconds:6.2f} s  {ours:8.1f} objects/s  {r.bytes / 1e6 / r.seconds:7.1f} MB/s")

            aws = shutil.which("aws") or str(Path(sys.executable).with_name("aws"))
            t0 = time.perf_counter()
            subprocess.run(
                [aws, "s3", "cp", "--recursive", "--only-show-errors", str(tmp / "src"), "s3://awscli/bench"],
                check=True,
                env=dict(os.environ),
            )
            t = time.perf_counter() - t0
            n_aws = sum(1 for _ in mstore.connect("s3://awscli").list("bench/"))
            assert n_aws == a.files, n_aws
            theirs = a.files / t
            print(f"aws s3 cp    : {t:6.2f} s  {theirs:8.1f} objects/s  {total / 1e6 / t:7.1f} MB/s")
            print(f"ratio put_dir / awscli objects/s: {ours / theirs:.2f}x (goal >= 1.5x)")

            r2 = s.put_dir(tmp / "src", "bench", jobs=a.jobs)
            print(f"re-run put_dir: {r2.seconds:.2f} s, {r2.transferred} transferred, {r2.skipped} skipped")

            server.create_bucket("boto3")
            plain = mstore.S3Store("s3://boto3", fast_put=False)
            r3 = plain.put_dir(tmp / "src", "bench", jobs=a.jobs)
            boto = r3.transferred / r3.seconds
            print(f"put_dir, boto3 put_object only: {r3.seconds:6.2f} s  {boto:8.1f} objects/s")
            print(f"ratio fast PUT / boto3 put_object objects/s: {ours / boto:.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
