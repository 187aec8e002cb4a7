"""The real COCO sample (../shared/data/coco-real) in a store, repeated to any size, for the benchmarks."""

from __future__ import annotations

import json
import sys
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
