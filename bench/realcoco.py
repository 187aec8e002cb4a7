"""The real COCO sample (../shared/data/coco-real) in a store, repeated to any size, for the benchmarks."""

from __future__ import annotations

import contextlib
import json
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
