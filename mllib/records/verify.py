"""Is a TFRecord set still what cocorecord.py wrote? Every shard against description.json: present, its size, its
sha256, its record count, and every record's length and data CRCs (datasets/checkrecords.py; cocorecord.py re-runs
use check_shard to re-write shards whose bytes changed).

    report = check_set(store, "coco")          # {"ok": bool, "shards": [...], "bad": [shard keys], ...}
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from mllib import layout
from mllib.records.read import description, iter_serialized
from mllib.store import NotFound, Store


def check_shard(store: Store, key: str, expected: dict) -> dict:
    """One shard against its description entry ({"records", "bytes", "sha256"}): its figures and its problems (each
    naming the shard, and for a record the byte offset), as every reader checks them (iter_serialized)."""
    problems = []
    sha = {key: expected["sha256"]} if expected.get("sha256") else None
    count = {key: int(expected["records"])} if expected.get("records") is not None else None
    try:
        records = sum(r is not None for r in iter_serialized(store, [key], lambda e: problems.append(str(e)), sha,
                                                             count))
        size = store.size(key)
    except NotFound:
        return {"key": key, "records": 0, "bytes": 0, "problems": [f"{key}: missing"]}
    if expected.get("bytes") is not None and size != int(expected["bytes"]):
        problems.append(f"{key}: {size:,} bytes, description.json says {int(expected['bytes']):,}")
    return {"key": key, "records": records, "bytes": size, "problems": problems}


def check_set(store: Store, name: str, sets: list[str] | None = None, threads: int = 8, progress=None) -> dict:
    """Every shard of the set's `sets` (default all) checked, `threads` at once; progress(shard report) after each."""
    t0 = time.perf_counter()
    desc = description(store, name)
    todo = [(set_name, s) for set_name, st in desc.get("sets", {}).items() if not sets or set_name in sets
            for s in st.get("shards", [])]
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="mllib-checkrecords") as pool:
        futures = [pool.submit(check_shard, store, layout.shard(name, s["name"]), s) for _, s in todo]
        shards = []
        for (set_name, _), fut in zip(todo, futures, strict=True):
            r = dict(fut.result(), set=set_name)
            shards.append(r)
            if progress is not None:
                progress(r)
    bad = [r for r in shards if r["problems"]]
    seconds = time.perf_counter() - t0
    return {"name": name, "ok": not bad, "shards": shards, "bad": [r["key"] for r in bad],
            "records": sum(r["records"] for r in shards), "bytes": sum(r["bytes"] for r in shards),
            "seconds": round(seconds, 3), "config": desc.get("config")}
