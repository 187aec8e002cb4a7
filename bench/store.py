"""Benchmark: mllib.store put_dir against `aws s3 cp --recursive`, same files, same SeaweedFS server, one run.

    python3 bench/store.py [--files 2000] [--kb 150] [--jobs 32] [--gets 2000] [--get_kb 5] [--list_keys 20000]

Prints objects/s and MB/s for both and their ratio (goal: put_dir >= 1.5x awscli's objects/s), then the
time of a second put_dir that skips every unchanged object, then the small-object fast PUT (mllib.store.fastput)
against boto3's put_object alone: the same put_dir with the fast path switched off (goal: the fast path keeps
its ~2x; it is dropped if the gain does not hold); then the client CPU of one GET of a --get_kb KB object (a label
PNG's size), --gets of them one after another in one thread: the fast GET (its own keep-alive HTTP/1.1
connection) against boto3's get_object (S3Store(fast_put=False)), and the wall time of each; then the client CPU
and wall time of listing --list_keys keys (an ADE20K-sized folder source lists 44,000), the fast path's own LIST
against boto3's list_objects_v2.
"""

from __future__ import annotations

import argparse
import os
import resource
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


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def fast_vs_boto3(fast, work, warm=None) -> tuple[tuple[float, float], tuple[float, float]]:
    """((client CPU, wall) seconds of work(store) through the fast path, the same through boto3 alone
    (S3Store(fast_put=False))): best of 3 rounds, the two alternating; warm(store) before each, untimed."""
    plain = mstore.S3Store(f"s3://{fast.bucket}", fast_put=False)
    best: dict[int, tuple[float, float]] = {}
    for _ in range(3):
        for i, st in enumerate((fast, plain)):
            if warm is not None:
                warm(st)
            c0, w0 = cpu_s(), time.perf_counter()
            work(st)
            t = (cpu_s() - c0, time.perf_counter() - w0)
            best[i] = min(best.get(i, t), t)
    return best[0], best[1]


def get_cpu(fast, n: int, kb: int) -> None:
    """Client CPU (user + system) and wall time per GET, one thread, the fast GET vs boto3's get_object."""
    keys = [f"gets/{i:06d}.png" for i in range(min(n, 500))]
    blob = os.urandom(kb * 1024)
    for k in keys:
        fast.put_bytes(k, blob)

    def gets(st):
        for i in range(n):
            assert len(st.get_bytes(keys[i % len(keys)])) == len(blob)

    def warm(st):  # connections open
        for k in keys[:50]:
            st.get_bytes(k)

    (fc, fw), (bc, bw) = (tuple(x / n for x in t) for t in fast_vs_boto3(fast, gets, warm))
    print(f"GET of {kb} KB, one thread, {n} GETs, best of 3: fast GET {1000 * fc:.3f} ms client CPU ({1000 * fw:.3f} "
          f"ms wall), boto3 get_object {1000 * bc:.3f} ms ({1000 * bw:.3f} ms wall): {bc / fc:.1f}x less CPU")


def list_cpu(fast, n: int, jobs: int) -> None:
    """Client CPU and wall time of listing n keys, the fast LIST vs boto3's."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(lambda i: fast.put_bytes(f"list/{i // 1000:03d}/{i:08d}.png", b"x"), range(n)))

    def listing(st):
        assert sum(1 for _ in st.list("list/")) == n

    (fc, fw), (bc, bw) = fast_vs_boto3(fast, listing)
    print(f"listing {n:,} keys, best of 3: fast LIST {fc:.2f} s client CPU ({fw:.2f} s wall), boto3 list_objects_v2 "
          f"{bc:.2f} s ({bw:.2f} s wall): {bc / fc:.1f}x less CPU")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--kb", type=int, default=150)
    p.add_argument("--jobs", type=int, default=32)
    p.add_argument("--gets", type=int, default=2000, help="GETs timed for the client CPU of one (0: skip)")
    p.add_argument("--get_kb", type=int, default=5)
    p.add_argument("--list_keys", type=int, default=20000, help="keys listed for the CPU of a listing (0: skip)")
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
            if a.gets:
                get_cpu(s, a.gets, a.get_kb)
            if a.list_keys:
                list_cpu(s, a.list_keys, a.jobs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
