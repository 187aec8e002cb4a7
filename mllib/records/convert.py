"""Convert datasets in the store (any mllib.sources type: COCO, Cityscapes, folders, CVAT exports) into a sharded TFRecord training set.

    conv = Conversion(store, "coco", entries, classes="coco", shard_images=1000, jobs=2, seed=0)
    description = conv.run()

Shards `trainingsets/NAME/{set}-{i:05d}-of-{n:05d}.tfrecord`, each written by one of `jobs` processes (the next
images read ahead, the shard uploaded while it grows) and stored under its final name only when complete, with a
small stats object beside it
(`.shards/<shard>.json`). Records are in a seeded shuffled order, so a re-run of an interrupted conversion
skips the finished shards and produces exactly the records an uninterrupted run would. `description.json`
is written last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import zlib
from dataclasses import asdict, dataclass, field

import numpy as np

from mllib import MllibError, layout
from mllib import sources as msources
from mllib.records import tfrecord
from mllib.records.sources import Entry, Worker
from mllib.store import Store
from mllib.store.streams import StreamingPut, read_ahead

log = logging.getLogger(__name__)



def parse_entries(spec: str | list, store: Store | None = None, classes_file: str | None = None) -> list[Entry]:
    """--datasets: a JSON list of source entries (mllib.sources.Spec), or registered datasets' names
    (comma-separated: combined, each through its map onto classes_file's class list, else the first's)."""
    return msources.resolve(spec, store, what="--datasets", classes_file=classes_file)


def default_entries(store: Store, dataset: str = "coco", classes_file: str | None = None) -> list[Entry]:
    """--dataset: registered datasets by name (ade20k, voc2012-aug, ...; comma-separated: combined), else the COCO
    folder datasets/<dataset>: train2017 and val2017 instances, plus the matching stuff annotations when stored."""
    names = [n.strip() for n in dataset.split(",") if n.strip()]
    if len(names) > 1 or (names and names[0] != "coco" and names[0] in msources.names()):
        return msources.resolve(",".join(names), store, what="--dataset", classes_file=classes_file)
    out = [msources.Spec(**e) for e in msources.NAMED["coco"](dataset, store)]
    if not out:
        raise MllibError(
            f"no COCO annotations in {store.url_for(layout.dataset(dataset) + '/annotations/')}: run "
            "datasets/getcoco.py first, or give --datasets"
        )
    return out


_worker: Worker | None = None


def _init_worker(store, entries, main_classes, crowd, skip_bad, preloaded=None):
    global _worker
    _worker = Worker(store, entries, main_classes, crowd, skip_bad, preloaded)


READ_AHEAD = 16  # items whose store reads are in flight ahead of the one being converted (S3 only)


def _write_shard(task: dict) -> dict:
    """Write one shard and its stats object. The next items' images (and label images) are read ahead while this
    one is converted, and the shard is uploaded part by part as it grows, stored under its final name only when
    whole; so a store's latency overlaps the work. The records are the same, in the same order, either way."""
    w = _worker
    store = w.store
    t0 = time.perf_counter()
    pixels = np.zeros(256, np.int64)
    skipped, records = [], 0
    sha = hashlib.sha256()
    depth = READ_AHEAD if store.local_path() is None else 0  # a local read takes microseconds
    items = [(int(k), int(row)) for k, row in task["items"]]
    with StreamingPut(store, task["key"]) as out:
        for (k, row), fetched in read_ahead(lambda item: w.fetch(*item), items, depth):
            rec, counts, skip = w.example(k, row, fetched)
            if skip is not None:
                skipped.append(skip)
                continue
            framed = tfrecord.frame(rec)
            out.write(framed)
            sha.update(framed)
            pixels += counts
            records += 1
    stats = {"name": task["key"].rsplit("/", 1)[-1], "records": records, "bytes": out.size,
             "sha256": sha.hexdigest(), "pixels": pixels.tolist(), "skipped": skipped, "config": task["config"],
             "items": len(task["items"]), "seconds": round(time.perf_counter() - t0, 3)}
    store.put_bytes(task["stats_key"], json.dumps(stats).encode())
    return stats


# ---------------------------------------------------------------------------------------------------------------
# the conversion
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Conversion:
    store: Store
    name: str
    entries: list[Entry]
    classes_file: str | None = None  # the set's dictionary; None: the first entry's own, else coco.json
    shard_images: int = 1000
    jobs: int = 1
    crowd: str = "class"
    max_images: int | None = None
    seed: int = 0
    author: str = ""
    description: str = ""
    skip_bad: bool = False
    bar: bool = True
    engine: str = "local"  # "local": --jobs processes here; "ray": Ray tasks (mllib.records.rayengine)
    ray_address: str | None = None
    summary: dict = field(default_factory=dict)
    unpaired: dict = field(default_factory=dict)  # set -> files without a partner (listed with skip_bad)

    @property
    def prefix(self) -> str:
        return layout.trainingset(self.name)

    def config(self) -> dict:
        return {"entries": [asdict(e) for e in self.entries], "classes_file": self.classes_file,
                "shard_images": self.shard_images, "crowd": self.crowd, "max_images": self.max_images,
                "seed": self.seed, "skip_bad": self.skip_bad}

    def plan(self, worker: Worker) -> dict[str, list[dict]]:
        msources.check_class_space(worker.classes, worker.open_all())
        sets: dict[str, list[tuple[int, int]]] = {}
        self.unpaired = {}
        for k, e in enumerate(self.entries):
            n = worker.items(k)
            # files without a partner: an error naming them, or with skip_bad listed with the set's skipped items
            self.unpaired.setdefault(e.set, []).extend(worker.source(k).check_pairs(self.skip_bad))
            sets.setdefault(e.set, []).extend((k, r) for r in range(n))
        config = hashlib.sha256(json.dumps(self.config(), sort_keys=True).encode()).hexdigest()[:16]
        plan: dict[str, list[dict]] = {}
        for set_name, items in sets.items():
            arr = np.array(items, dtype=np.int64).reshape(-1, 2)
            rng = np.random.default_rng([self.seed, zlib.crc32(set_name.encode())])
            arr = arr[rng.permutation(len(arr))]
            if self.max_images is not None:
                arr = arr[: self.max_images]
            n = max(1, math.ceil(len(arr) / self.shard_images))
            tasks = []
            for i in range(n):
                shard = f"{set_name}-{i:05d}-of-{n:05d}.tfrecord"
                tasks.append({"key": layout.shard(self.name, shard), "stats_key": layout.shard_stats(self.name, shard),
                              "items": arr[i * self.shard_images : (i + 1) * self.shard_images].tolist(),
                              "config": config, "set": set_name})
            plan[set_name] = tasks
        return plan

    def _done(self, task: dict, sizes: dict[str, int]) -> dict | None:
        """The stats of a shard already written by this same configuration, else None."""
        if task["stats_key"] not in sizes or task["key"] not in sizes:
            return None
        stats = json.loads(self.store.get_bytes(task["stats_key"]))
        if stats.get("config") != task["config"] or sizes[task["key"]] != stats.get("bytes"):
            return None
        return stats

    def run(self) -> dict:
        from tqdm import tqdm

        t0 = time.perf_counter()
        main_worker = Worker(self.store, self.entries, self.classes_file, self.crowd, self.skip_bad)
        plan = self.plan(main_worker)  # builds / caches the annotation indexes once, before any worker starts
        tasks = [t for ts in plan.values() for t in ts]
        results: dict[str, dict] = {}
        todo = []
        sizes = {i.key: i.size for i in self.store.list(self.prefix + "/")}
        for t in tasks:
            s = self._done(t, sizes)
            if s is not None:
                results[t["key"]] = s
            else:
                todo.append(t)
        if results:  # a shard is skipped only when its bytes still hash to what was written
            from concurrent.futures import ThreadPoolExecutor

            from mllib.records.verify import check_shard

            with ThreadPoolExecutor(8, thread_name_prefix="mllib-verify") as pool:
                checked = list(pool.map(lambda k: check_shard(self.store, k, results[k]), list(results)))
            by_key = {t["key"]: t for t in tasks}
            for r in checked:
                if r["problems"]:
                    log.warning("re-writing %s: %s", r["key"], r["problems"][0])
                    todo.append(by_key[r["key"]])
                    del results[r["key"]]
            log.info("%d of %d shards already written and intact (sha256), skipping them", len(results), len(tasks))
        total = sum(len(t["items"]) for t in todo)
        bar = tqdm(total=total, unit="img", desc=f"cocorecord {self.name}", disable=not self.bar, dynamic_ncols=True)
        self._preloaded = main_worker.shippable()  # listings the worker processes take instead of listing again
        if self.engine == "ray" or (self.jobs > 1 and len(todo) > 1):
            main_worker.release()  # the shards are written by other processes: this one needs no index
        try:
            if self.engine == "ray" and todo:
                from mllib.records.rayengine import run_shards

                for stats in run_shards(self, todo):
                    results[f"{self.prefix}/{stats['name']}"] = stats
                    bar.update(stats["items"])
            elif self.jobs <= 1 or len(todo) <= 1:
                global _worker
                _worker = main_worker
                for t in todo:
                    results[t["key"]] = _write_shard(t)
                    bar.update(len(t["items"]))
            else:
                for stats in self._parallel(todo):
                    results[f"{self.prefix}/{stats['name']}"] = stats
                    bar.update(stats["items"])
        finally:
            bar.close()
        self._remove_stale(tasks)
        desc = self._describe(plan, results, main_worker)
        self.store.put_bytes(layout.description(self.name), json.dumps(desc, indent=1).encode())
        n_rec = sum(s["length"] for s in desc["sets"].values())
        n_shards = sum(len(s["shards"]) for s in desc["sets"].values())
        n_bytes = sum(sh["bytes"] for s in desc["sets"].values() for sh in s["shards"])
        n_skip = sum(len(s["skipped"]) for s in desc["sets"].values())
        self.summary = {"records": n_rec, "shards": n_shards, "bytes": n_bytes, "skipped": n_skip,
                        "seconds": time.perf_counter() - t0}
        return desc

    def _parallel(self, todo: list[dict]):
        """Shards written by `jobs` spawned processes, yielded as they finish. A worker that dies (the OOM killer,
        a crash in native code) is an error naming the shards that were in progress, never a hang."""
        import multiprocessing as mp
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
        from concurrent.futures.process import BrokenProcessPool

        ctx = mp.get_context("spawn")  # fork after boto3/TF threads is unsafe; workers load cached indexes
        with ProcessPoolExecutor(self.jobs, mp_context=ctx, initializer=_init_worker,
                                 initargs=(self.store, self.entries, self.classes_file, self.crowd,
                                           self.skip_bad, getattr(self, "_preloaded", None))) as pool:
            # the largest shards first: the last ones to finish, alone on a worker, are the smallest
            futures = {pool.submit(_write_shard, t): t for t in sorted(todo, key=lambda t: -len(t["items"]))}
            pending = set(futures)
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        try:
                            yield f.result()
                        except BrokenProcessPool:
                            lost = sorted(futures[g]["key"].rsplit("/", 1)[-1] for g in futures
                                          if not g.done() or g.exception() is not None)
                            raise MllibError(
                                f"a conversion worker process died (killed, e.g. by the OOM killer, or crashed in "
                                f"native code) while writing {', '.join(lost[:3])}{' ...' if len(lost) > 3 else ''};"
                                " finished shards are kept: re-run the same command to resume (fewer --jobs if "
                                "memory ran out)") from None
            finally:
                for f in pending:
                    f.cancel()

    def _remove_stale(self, tasks: list[dict]) -> None:
        """Delete shards and stats of an earlier, different conversion under this name: only this set's own
        folder level (trainingsets/NAME/*.tfrecord and .shards/*), never a set nested below it (NAME/small)."""
        planned = {t["key"] for t in tasks} | {t["stats_key"] for t in tasks}
        base = self.prefix + "/"
        for info in list(self.store.list(base)):
            rel = info.key[len(base):]
            own = layout.is_own_shard_key(rel)
            if own and (rel.endswith(".tfrecord") or rel.endswith(".tfrecord.json")) and info.key not in planned:
                log.info("removing stale %s", info.key)
                self.store.delete(info.key)

    def _describe(self, plan, results, worker: Worker) -> dict:
        main = worker.classes
        sets = {}
        for set_name, tasks in plan.items():
            stats = [results[t["key"]] for t in tasks]
            pixels = np.sum([np.array(s["pixels"], np.int64) for s in stats], axis=0)
            present = {str(i): int(pixels[i]) for i in list(range(main.classes)) + [main.ignore] if pixels[i]}
            sets[set_name] = {
                "length": sum(s["records"] for s in stats),
                "shards": [{k: s[k] for k in ("name", "records", "bytes", "sha256")} for s in stats],
                "pixels": present,
                "skipped": [x for s in stats for x in s["skipped"]] + self.unpaired.get(set_name, []),
            }
        return {
            "name": self.name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "author": self.author,
            "description": self.description,
            "seed": self.seed,
            "classes": main.to_dict(),
            "class_names": main.names,
            "crowd": self.crowd,
            "config": self.config(),
            "format": {
                "image/encoded": "original JPEG bytes (3-channel) or converted RGB; PNG sources stay PNG",
                "label/encoded": "PNG, uint8 trainIds, 255 = ignore",
                "label/classes": f"float presence vector of length {main.classes}",
            },
            "sets": sets,
        }

    def summary_line(self) -> str:
        s = self.summary
        return (f"wrote {s['records']:,d} records to {s['shards']} shards, {s['bytes'] / 1e9:,.2f} GB, "
                f"{s['skipped']} skipped, in {s['seconds']:.1f} s -> {self.store.url_for(self.prefix)}")
