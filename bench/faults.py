"""A conversion under an endpoint that throttles: cocorecord --jobs 2 of real COCO images from SeaweedFS through
mllib.testing.latency's proxy, with no faults, with 5% of requests answered 503 SlowDown (Retry-After: 0), and
with 5% 503s plus 1% connection resets; alternating rounds, medians. Prints the time overhead of each and whether
the records are byte for byte those of the fault-free run (shard sha256s).

    python3 bench/faults.py [--images 400] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from realcoco import DEFAULT_SHARED, coco_on_seaweed, require_sample, shard_sha256s  # noqa: E402

CASES = {"none": {}, "503 5%": {"503": 0.05}, "503 5% + reset 1%": {"503": 0.05, "reset": 0.01}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    if not require_sample(a.shared):
        return 1
    from mllib.records.convert import Conversion
    from mllib.store import S3Store
    from mllib.testing.latency import LatencyProxy

    with coco_on_seaweed(a.shared, a.images, "mllib-bench-faults-") as (server, s, n, e):
        host, port = server.endpoint.split("//")[1].split(":")
        times = {k: [] for k in CASES}
        sha, injected = {}, {k: {} for k in CASES}
        for r in range(a.rounds):
            for case, faults in CASES.items():
                with LatencyProxy((host, int(port)), 0.0, faults=faults, seed=r, retry_after=0,
                                  max_seconds=3600) as proxy:
                    name = f"f{list(CASES).index(case)}-{r}"
                    t0 = time.perf_counter()
                    Conversion(S3Store("s3://coco", endpoint_url=proxy.url), name, e, shard_images=100, jobs=2,
                               bar=False).run()
                    times[case].append(time.perf_counter() - t0)
                    for k, v in proxy.injected.items():
                        injected[case][k] = injected[case].get(k, 0) + v
                    requests = proxy.requests
                sha[name] = shard_sha256s(s, name)
                print(f"  round {r}, faults {case}: {n} images in {times[case][-1]:.2f} s, {requests} requests, "
                      f"injected {proxy.injected}", flush=True)
        base = statistics.median(times["none"])
        same = len({tuple(v) for v in sha.values()}) == 1  # every conversion completed with the same bytes
        print(f"cocorecord --jobs 2 of {n} real images through the proxy (medians of {a.rounds} alternating rounds):")
        for case in CASES:
            m = statistics.median(times[case])
            total = sum(injected[case].values())
            fate = f"{total} survived, 0 lost" if same else "records differ: see below"
            print(f"  faults {case:>18}: {m:.2f} s ({100 * (m / base - 1):+.0f}%), {total} faults injected "
                  f"{injected[case]}, {fate}")
        print(f"records byte for byte the fault-free run's in every round: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
