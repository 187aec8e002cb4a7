"""A real two-node Ray cluster on this machine, for the Ray engine's tests; run inside `unshare -n`:

    unshare -n -- python tests/raycluster.py [--kill_after N] -- COCORECORD FLAGS...

brings up the loopback interface of the (new, empty) network namespace, starts a Ray head that runs no tasks
(0 CPUs) and two worker nodes (1 CPU each) on 127.0.0.1, and runs datasets/cocorecord.py's main with
`--engine ray --ray_address <head>`. --kill_after N: once N shards are in the store, one worker node is killed
(its raylet and workers, SIGKILL), so the task that was running on it is lost and Ray retries it on the other. Prints `exit N` last. Ray listens on every interface and probes public addresses to find its own:
in the namespace there is only loopback, so it binds 127.0.0.1 and reaches nothing else.
"""

from __future__ import annotations

import argparse
import fcntl
import socket
import struct
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def loopback_up() -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:  # SIOCSIFFLAGS: IFF_UP | IFF_LOOPBACK | IFF_RUNNING on "lo" (what `ip link set lo up` does)
        fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", 0x1 | 0x8 | 0x40))
    finally:
        s.close()


def main() -> int:
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser()
    p.add_argument("--kill_after", type=int, default=0)
    args = p.parse_args(argv[:cut])
    rec_argv = argv[cut + 1:]
    loopback_up()

    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    node = cluster.add_node(num_cpus=1)
    cluster.add_node(num_cpus=1)
    try:
        store = Path(rec_argv[rec_argv.index("--store") + 1])
        name = rec_argv[rec_argv.index("-trainingset_name") + 1]
        if args.kill_after:
            def killer():
                folder = store / "trainingsets" / name
                while len(list(folder.glob("*.tfrecord"))) < args.kill_after:
                    time.sleep(0.05)
                cluster.remove_node(node, allow_graceful=False)
                print(f"killed a worker node after {args.kill_after} shards", flush=True)

            threading.Thread(target=killer, daemon=True).start()
        import importlib.util

        spec = importlib.util.spec_from_file_location("cocorecord", ROOT / "datasets" / "cocorecord.py")
        rec = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(rec)
        status = rec.main([*rec_argv, "--engine", "ray", "--ray_address", cluster.address])
    finally:
        cluster.shutdown()
    print(f"exit {status}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
