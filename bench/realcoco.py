"""The real COCO sample (../shared/data/coco-real) in a store, repeated to any size, for the benchmarks."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

DEFAULT_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def require_sample(shared: Path) -> bool:
    """True when the real COCO sample is there; else says so on stderr."""
    if (shared / "coco-real").exists():
        return True
    print(f"no real COCO sample at {shared / 'coco-real'}", file=sys.stderr)
    return False


def put_repeated(store, shared: Path, copies: int) -> int:
    """val2017's 50 images and annotations, `copies` times under new names and ids, into datasets/coco/.
    Returns the number of images."""
    raw = json.loads((shared / "coco-real" / "annotations" / "instances_val2017.json").read_text())
    ims, anns = [], []
    for k in range(copies):
        for im in raw["images"]:
            new = dict(im, id=im["id"] * 100 + k, file_name=f"{k:02d}_{im['file_name']}")
            ims.append(new)
            store.put_file(f"datasets/coco/val2017/{new['file_name']}",
                           shared / "coco-real" / "val2017" / im["file_name"])
        anns += [dict(a, id=a["id"] * 100 + k, image_id=a["image_id"] * 100 + k) for a in raw["annotations"]]
    store.put_bytes("datasets/coco/annotations/instances_val2017.json",
                    json.dumps(dict(raw, images=ims, annotations=anns)).encode())
    return len(ims)


@contextlib.contextmanager
def coco_on_seaweed(shared: Path, images: int, prefix: str = "mllib-bench-"):
    """A SeaweedFS server of its own (in a temporary folder, removed after) with its environment set, and bucket
    `coco` holding the real sample repeated to about `images` images, its COCO index cached by a first small
    conversion. Yields (server, store, number of images, the conversion entries of val2017)."""
    from mllib import store as mstore
    from mllib.records.convert import Conversion, Entry
    from mllib.testing.seaweed import SeaweedS3

    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    server = SeaweedS3(tmp / "weed").start()
    try:
        with server.environment():
            server.create_bucket("coco")
            store = mstore.connect("s3://coco")
            n = put_repeated(store, shared, max(1, images // 50))
            entries = [Entry("annotations/instances_val2017.json", "val2017", "val")]
            Conversion(store, "warm", entries, jobs=1, bar=False, max_images=5).run()  # the index, cached in the store
            yield server, store, n, entries
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def shard_sha256s(store, name: str, set_name: str = "val") -> list[str]:
    """The sha256 of each shard of a records set, in order (equal lists: byte-identical records)."""
    from mllib.records import read

    return [x["sha256"] for x in read.description(store, name)["sets"][set_name]["shards"]]


def _server_pids(server) -> list[int]:
    """The server's processes: its process group (SeaweedS3 starts it in a session of its own)."""
    group, out = server.proc.pid, []
    for p in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(p) == group:
                out.append(p)
    return out


def _tasks(pids) -> list[int]:
    """The thread ids of these processes."""
    out = []
    for p in pids:
        with contextlib.suppress(OSError):  # a process that ended meanwhile
            out += [int(t) for t in os.listdir(f"/proc/{p}/task")]
    return out


def _pin(tids, cpus) -> None:
    for t in tids:
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(t, cpus)


def server_cpu_s(server) -> float:
    """CPU seconds (user + system) the server's processes have used so far."""
    total = 0
    for p in _server_pids(server):
        with contextlib.suppress(OSError, IndexError):
            f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
    return total / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def store_cpu(server, placement: str):
    """Where the S3 server runs while the block runs. "own": its threads on the last CPU, this process's threads
    (and so the workers and commands started from here) on the others, as a store on machines of its own would be:
    its CPU is not the readers'. "shared": everything on every CPU (the server takes the readers' CPU: on a 2-core
    machine each GET's server work is the readers' loss). Yields the placement in words."""
    cpus = sorted(os.sched_getaffinity(0))
    if placement == "shared" or len(cpus) < 2:
        yield f"S3 server and readers share {len(cpus)} CPUs"
        return
    _pin(_tasks(_server_pids(server)), {cpus[-1]})
    _pin(_tasks([os.getpid()]), set(cpus[:-1]))
    try:
        yield f"S3 server on CPU {cpus[-1]}, readers on {len(cpus) - 1} CPU(s) of their own"
    finally:
        _pin(_tasks(_server_pids(server) + [os.getpid()]), set(cpus))


def cold_cache() -> bool:
    """Write back and drop the kernel's page cache (root only), so that what runs next reads the store's volumes
    from disk whichever dataset was written last: without it, the dataset written last is read from memory and the
    one written before it, pushed out of the cache, from disk. False when not allowed (then nothing is dropped)."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False
