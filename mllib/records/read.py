"""Reading a TFRecord training set from either store: a tf.data pipeline and PyTorch IterableDatasets.

    desc = records.description(store, "coco")
    ds = records.tf_dataset(store, "coco", "train")          # (image uint8 HxWx3, label uint8 HxW)
    torch_ds = records.TorchRecords(store, "coco", "train")    # split across DataLoader workers and ranks
    train_ds = records.RecordsDataset(store, "coco", "train", height=512, width=512, seed=0)   # for training

RecordsDataset is the training path from the set cocorecord.py wrote: one sequential read per shard (labels
already rendered), shard order seeded per epoch, a seeded shuffle buffer, shards split over ranks and DataLoader
workers, and CocoDataset's single-warp augmentation drawn from (seed, epoch, shard, record), so a record gets the
same augmentation whatever the worker count. It yields (uint8 C x H x W image, uint8 H x W label).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging

import numpy as np

from mllib import MissingExtra, MllibError, images, layout, tflib
from mllib.augment import Augment, chw_uint8, output_settings, warp
from mllib.records import schema, tfrecord
from mllib.store import NotFound, Store

log = logging.getLogger(__name__)


def description(store: Store, name: str) -> dict:
    key = layout.description(name)
    try:
        return json.loads(store.get_bytes(key))
    except NotFound:
        raise MllibError(
            f"training set {store.url_for(layout.trainingset(name))} not found (no description.json): "
            f"run datasets/cocorecord.py -trainingset_name {name}"
        ) from None


def set_shards(store: Store, name: str, set_name: str, desc: dict | None = None) -> list[dict]:
    """The shards of one set, as description.json lists them (name, records, bytes, sha256); `desc` when the
    description was already read."""
    desc = desc if desc is not None else description(store, name)
    if set_name not in desc["sets"]:
        raise MllibError(f"training set {name} has no set {set_name!r}; it has {sorted(desc['sets'])}")
    return desc["sets"][set_name]["shards"]


def shard_keys(store: Store, name: str, set_name: str, desc: dict | None = None) -> list[str]:
    return [f"{layout.trainingset(name)}/{s['name']}" for s in set_shards(store, name, set_name, desc)]


class _Hashing:
    """A readable stream that hashes what is read through it."""

    def __init__(self, f):
        self.f, self.h = f, hashlib.sha256()

    def read(self, n=-1):
        b = self.f.read(n)
        self.h.update(b)
        return b

    def drain(self) -> str:
        while self.read(1 << 20):
            pass
        return self.h.hexdigest()


def iter_serialized(store: Store, keys: list[str], on_bad=None, sha256: dict | None = None,
                    counts: dict | None = None):
    """The serialized records of the shards `keys`, in order, each frame's CRCs checked; with `sha256` ({key:
    digest}, from the description) each shard's bytes are hashed as they are read and compared at its end (a shard
    replaced or changed after conversion). Problems raise tfrecord.RecordError naming the shard and the byte offset,
    or with `on_bad(error)` are reported and the bad record yields None (mllib.records.tfrecord.read_records).
    `counts` ({key: records}): a shard with another number of records is reported too."""
    for key in keys:
        want = (sha256 or {}).get(key)
        reported = []

        def report(e, reported=reported):
            reported.append(e)
            if on_bad is None:
                raise e
            on_bad(e)

        with store.open(key) as f:
            src = _Hashing(f) if want else f
            n = 0
            for rec in tfrecord.read_records(src, name=key, on_bad=report):
                n += 1
                yield rec
            expected = (counts or {}).get(key)
            if expected is not None and n != expected and not reported:
                report(tfrecord.RecordError(f"{key}: {n} records, description.json says {expected} (the shard was "
                                            f"cut short or added to)", key, min(n, expected), rest=n < expected))
            elif want and not reported:
                got = src.drain()
                if got != want:
                    report(tfrecord.RecordError(
                        f"{key}: its sha256 {got[:16]}... differs from description.json's {want[:16]}... (every record "
                        f"frame is sound: the shard was replaced or changed after conversion); datasets/checkrecords.py "
                        f"lists what to re-convert", key))


def shard_digests(store: Store, name: str, desc: dict) -> dict:
    """{shard key: sha256} of every shard the description lists."""
    return {layout.shard(name, s["name"]): s["sha256"] for st in desc.get("sets", {}).values()
            for s in st.get("shards", []) if s.get("sha256")}


def parse(record: bytes, rgba: bool = False) -> dict:
    """A record as numpy: image (RGB uint8 HxWx3, or RGBA with rgba=True), label (uint8 HxW), classes, filename,
    source_id."""
    ex = tfrecord.decode_example(record)
    image = images.decode(ex[schema.IMAGE][0], rgba=rgba)
    label = images.decode(ex[schema.LABEL][0], flags=images.cv2.IMREAD_UNCHANGED)
    return {"image": image, "label": label, "classes": np.array(ex[schema.CLASSES], np.float32),
            "filename": ex[schema.FILENAME][0].decode(), "source_id": ex[schema.SOURCE_ID][0].decode()}


# -- TensorFlow ------------------------------------------------------------------------------------------------

def tf_parse(serialized):
    tf = tflib.tensorflow()

    ex = tf.io.parse_single_example(serialized, schema.tf_features())
    image = tf.io.decode_image(ex[schema.IMAGE], channels=3, expand_animations=False)
    label = tf.io.decode_png(ex[schema.LABEL], channels=1)[..., 0]
    h, w = tf.cast(ex[schema.HEIGHT], tf.int32), tf.cast(ex[schema.WIDTH], tf.int32)
    image = tf.reshape(image, tf.stack([h, w, 3]))
    label = tf.reshape(label, tf.stack([h, w]))
    return image, label


def tf_dataset(store: Store, name: str, set_name: str, parse_records: bool = True, skip_bad: bool = False,
               bad: list | None = None):
    """tf.data over the shards of one set: (image uint8 HxWx3, label uint8 HxW) when parse_records. Read through
    iter_serialized on both backends (TensorFlow has no S3 filesystem without tensorflow-io): every record's CRCs
    and every shard's sha256 checked, an error naming the shard and the byte offset; with skip_bad the bad records
    are left out and their errors appended to `bad`."""
    tf = tflib.tensorflow()

    desc = description(store, name)
    keys = shard_keys(store, name, set_name, desc)
    digests = shard_digests(store, name, desc)

    def records():
        on_bad = (bad.append if bad is not None else lambda e: None) if skip_bad else None
        return (r for r in iter_serialized(store, keys, on_bad, digests) if r is not None)

    ds = tf.data.Dataset.from_generator(records, output_signature=tf.TensorSpec([], tf.string))
    if parse_records:
        ds = ds.map(tf_parse, num_parallel_calls=tf.data.AUTOTUNE)
    return ds


# -- PyTorch ---------------------------------------------------------------------------------------------------
def _part(rank: int | None, world: int | None, rotate: list[int] | None = None) -> tuple[int, int, int, int]:
    """(part, parts, rank, world): this DataLoader worker's share of the work, over ranks and workers. With
    `rotate` (a resumed epoch's plan), DataLoader worker i of rank r reads part (i + rotate[r]) % workers of r."""
    import torch

    if rank is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank, world = 0, 1
    info = torch.utils.data.get_worker_info()
    wid, nw = (info.id, info.num_workers) if info else (0, 1)
    if rotate:
        wid = (wid + int(rotate[rank])) % nw
    return rank * nw + wid, world * nw, rank, world or 1


def _torch_iterable():
    """torch's IterableDataset; without PyTorch (the core install) a base whose construction says what to install,
    so that the rest of this module (descriptions, shard keys, verified reading) works without it."""
    try:
        import torch
    except ModuleNotFoundError:
        class NeedsTorch:
            def __init__(self, *args, **kwargs):
                raise MissingExtra("torch", type(self).__name__)

        return NeedsTorch
    return torch.utils.data.IterableDataset


class TorchRecords(_torch_iterable()):
    """Records of one set for torch DataLoader: shards split across distributed ranks and DataLoader workers.

    Yields (image uint8 tensor HxWx3, label int64 tensor HxW). With `transform`, yields transform(image, label)
    on numpy arrays instead.
    """

    def __init__(self, store: Store, name: str, set_name: str, transform=None, rank: int | None = None,
                 world_size: int | None = None):
        self.store = store
        desc = description(store, name)
        self.keys = shard_keys(store, name, set_name, desc)
        self.digests = shard_digests(store, name, desc)
        self.transform = transform
        self.rank, self.world_size = rank, world_size

    def _my_keys(self) -> list[str]:
        part, parts, _, _ = _part(self.rank, self.world_size)
        return self.keys[part::parts]

    def __iter__(self):
        import torch

        for rec in iter_serialized(self.store, self._my_keys(), sha256=self.digests):
            r = parse(rec)
            if self.transform is not None:
                yield self.transform(r["image"], r["label"])
            else:
                yield torch.from_numpy(r["image"]), torch.from_numpy(r["label"].astype(np.int64))


class RecordsDataset(_torch_iterable()):
    """Training samples from a TFRecord set: (uint8 C x H x W image, H x W label of label_dtype).

    Shards are read whole and in order (one request each), in a shard order seeded by (seed, epoch), through a
    shuffle buffer of `shuffle_buffer` records. Shards are split over ranks x DataLoader workers; with fewer
    shards than that, every part reads all shards and keeps every parts-th record. Under several ranks each rank
    yields exactly len(self) samples (its share, cycled where short), so every rank runs the same number of steps.
    Call set_epoch(e) each epoch (it reaches running workers through shared memory).
    """

    emit_index = False  # True: each sample also carries its record's number in the set (a third field)

    def __init__(self, store: Store, name: str, set_name: str = "train", height: int = 512, width: int = 512,
                 augment: Augment | None = None, seed: int = 0, shuffle: bool = True, shuffle_buffer: int = 256,
                 label_dtype: str = "uint8", rank: int | None = None, world_size: int | None = None,
                 skip_bad: bool = False):
        import torch

        self.store = store
        self.name, self.set_name = name, set_name
        self.description = description(store, name)  # read once: shards, record counts, the ignore value
        self.shards = set_shards(store, name, set_name, self.description)
        self.keys = shard_keys(store, name, set_name, self.description)
        self.digests = shard_digests(store, name, self.description)
        self.skip_bad = skip_bad
        self._bad = torch.zeros(1, dtype=torch.int64).share_memory_()
        self.ignore = int(self.description.get("classes", {}).get("ignore", 255))
        self.height, self.width, self.seed, self.label_dtype = output_settings(height, width, seed, label_dtype)
        self.augment = augment if augment is not None else Augment()
        self.shuffle, self.shuffle_buffer = shuffle, max(1, int(shuffle_buffer))
        self.rank, self.world_size = rank, world_size
        self.total = sum(int(s["records"]) for s in self.shards)
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = int(epoch)

    def __len__(self) -> int:
        """Samples this rank yields in an epoch (all DataLoader workers together)."""
        _, _, _, world = _part(self.rank, self.world_size)
        return self.total if world == 1 else self.total // world

    # -- the epoch's streams: what each part (rank x DataLoader worker) yields, in order --------------------------
    def _records(self, epoch: int, part: int, parts: int, read: bool = True):
        """(shard number, record number, serialized record) of this part, in the epoch's shard order; with
        read=False the same items from the description's record counts, the record None, nothing read."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.keys)) if self.shuffle \
            else np.arange(len(self.keys))
        by_shard = len(self.keys) >= parts  # else every part reads all shards and keeps every parts-th record
        k = 0
        for s in order[part::parts] if by_shard else order:
            n = int(self.shards[s]["records"])
            recs = self._read_shard(s, n) if read else itertools.repeat(None, n)
            for r, rec in enumerate(recs):
                if by_shard or k % parts == part:
                    yield int(s), r, rec
                k += 1

    def bad_count(self) -> int:
        """Records replaced so far (skip_bad), all DataLoader workers together."""
        return int(self._bad[0])

    def _on_bad(self, e) -> None:
        """A record that failed its checks (counted here), or a shard unreadable from a record on (the records lost
        are counted when the shard's end is padded: _read_shard)."""
        if not e.rest:
            self._bad[0] += 1
        log.warning("replacing %s: %s", "the rest of the shard" if e.rest else "a bad record", e)

    def _read_shard(self, s: int, n: int):
        """Shard s's n records as the description counts them: each serialized record, or None for one that failed
        its checks (skip_bad; a shard cut short or unframeable from some record on gives None for the rest).
        iter_serialized reports a record count other than n; records past n are left out."""
        got, tail = 0, []

        def on_bad(e):
            if e.rest:
                tail.append(e)
            self._on_bad(e)

        for rec in iter_serialized(self.store, [self.keys[s]], on_bad if self.skip_bad else None,
                                   self.digests, {self.keys[s]: n}):
            got += 1
            if got <= n:
                yield rec
        if got < n:  # only under skip_bad (else iter_serialized has raised): the records lost with the shard's end
            self._bad[0] += n - got
            yield from itertools.repeat(None, n - got)
        elif tail:  # bytes after the last record that frame no record: nothing lost, still counted
            self._bad[0] += 1

    def _shuffled(self, items, rng):
        if not self.shuffle or self.shuffle_buffer <= 1:
            yield from items
            return
        buf = []
        for item in items:
            if len(buf) < self.shuffle_buffer:
                buf.append(item)
                continue
            j = int(rng.integers(len(buf)))
            yield buf[j]
            buf[j] = item
        rng.shuffle(buf)
        yield from buf

    def record_id(self, shard: int, record: int) -> int:
        """A record's number in the whole set (shards in description order)."""
        if not hasattr(self, "_offsets"):
            self._offsets = np.concatenate([[0], np.cumsum([int(s["records"]) for s in self.shards])]).tolist()
        return self._offsets[shard] + record

    def _quota(self, part: int, parts: int, rank: int, world: int, exclude) -> int:
        """Under several ranks: the samples this part yields (each rank the same number)."""
        nw = parts // world
        n = (self.total - len(exclude)) // world
        return n // nw + (1 if part - rank * nw < n % nw else 0)

    def stream(self, epoch: int, part: int, parts: int, rank: int, world: int, read: bool = True,
               exclude=frozenset()):
        """This part's items of the epoch, in the order it yields them; records in `exclude` (ids) left out."""
        rng = np.random.default_rng([self.seed, epoch, part, 1])

        def items():
            out = self._shuffled(self._records(epoch, part, parts, read), rng)
            return (it for it in out if self.record_id(it[0], it[1]) not in exclude) if exclude else out

        def cycled():  # a part left with nothing by `exclude` repeats its records, so the ranks stay in step
            it = items()
            first = next(it, None)
            if first is None and exclude:
                it = self._shuffled(self._records(epoch, part, parts, read), rng)
                first = next(it, None)
            return iter(()) if first is None else itertools.chain([first], it)

        if world == 1:
            return items()
        # every rank the same number of samples: each worker its exact quota, cycled where short
        return itertools.islice(_cycle(cycled), self._quota(part, parts, rank, world, exclude))

    def _length(self, epoch: int, part: int, parts: int, rank: int, world: int, exclude) -> int:
        if world > 1:
            return sum(1 for _ in self.stream(epoch, part, parts, rank, world, False, exclude)) if exclude \
                else self._quota(part, parts, rank, world, exclude)
        return sum(1 for s, r, _ in self._records(epoch, part, parts, read=False)
                   if self.record_id(s, r) not in exclude)

    # -- the data position (mllib.training.position) --------------------------------------------------------------
    def data_id(self) -> str:
        """What identifies this set's records: a resumed run refuses a position made on other records."""
        what = [self.name, self.set_name, self.seed, self.shuffle, self.shuffle_buffer,
                [[s["name"], s["records"], s.get("sha256")] for s in self.shards]]
        return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]

    def topology(self, workers: int, batch_size: int, drop_last: bool) -> dict:
        _, _, _, world = _part(self.rank, self.world_size)
        return {"world": int(world), "workers": max(1, int(workers)), "batch": int(batch_size),
                "drop_last": bool(drop_last)}

    def fresh_plan(self, epoch: int, topology: dict, exclude=frozenset()) -> dict:
        """An epoch from its start (or with the records in `exclude` already consumed)."""
        parts = topology["world"] * topology["workers"]
        return {"epoch": int(epoch), "topology": dict(topology), "skip": [0] * parts,
                "rotate": [0] * topology["world"], "exclude": frozenset(exclude)}

    def advance(self, plan: dict, steps: int) -> dict:
        """The plan `steps` training steps further on: the records each part gave (skipped on resume) and the
        part whose batch comes next on each rank."""
        t, epoch, excl = plan["topology"], plan["epoch"], plan["exclude"]
        nw, world, b = t["workers"], t["world"], t["batch"]
        skip, rotate = list(plan["skip"]), list(plan["rotate"])
        for rank in range(world):
            parts = range(rank * nw, rank * nw + nw)
            left = [self._length(epoch, p, world * nw, rank, world, excl) - skip[p] for p in parts]
            batches = [n // b if t["drop_last"] else -(-n // b) for n in left]
            taken, rotate[rank] = _turns(batches, rotate[rank], steps)
            for p, k, n in zip(parts, taken, left, strict=True):
                skip[p] += min(k * b, n)
        return dict(plan, skip=skip, rotate=rotate)

    def resume_plan(self, plan: dict, steps: int, topology: dict) -> dict:
        """Where an epoch started from `plan` stands after `steps` steps, for a run of `topology`: the same plan
        advanced when the ranks and workers are the same (exact); else the records consumed so far excluded and
        the rest of the epoch split over the new parts."""
        done = self.advance(plan, steps)
        if done["topology"] == topology:
            return done
        t, epoch, excl = done["topology"], done["epoch"], done["exclude"]
        parts = t["world"] * t["workers"]
        consumed = set(excl)
        for p in range(parts):
            items = self.stream(epoch, p, parts, p // t["workers"], t["world"], read=False, exclude=excl)
            consumed.update(self.record_id(s, r) for s, r, _ in itertools.islice(items, done["skip"][p]))
        return self.fresh_plan(epoch, topology, consumed)

    def set_plan(self, plan: dict | None) -> None:
        """Where the epoch `plan["epoch"]` starts (mllib.training.position); set before the DataLoader starts its
        workers. Other epochs start from the beginning."""
        self._plan = plan

    def sample(self, epoch: int, shard: int, record: int, serialized: bytes):
        import torch

        r = parse(serialized, rgba=True)
        img, label = r["image"], r["label"]
        m = self.augment.matrix(label.shape, (self.height, self.width), (self.seed, epoch, shard, record))
        out, lab = warp(img, label, m, (self.height, self.width), self.ignore)
        image, label_t = torch.from_numpy(chw_uint8(out)), torch.from_numpy(lab.astype(self.label_dtype, copy=False))
        if self.emit_index:  # training's colour jitter is drawn from the record's number (mllib.training.recipe)
            return image, label_t, torch.tensor(self.record_id(shard, record), dtype=torch.int64)
        return image, label_t

    def __iter__(self):
        epoch = int(self._epoch[0])
        plan = getattr(self, "_plan", None)
        plan = plan if plan is not None and plan["epoch"] == epoch else None
        part, parts, rank, world = _part(self.rank, self.world_size, plan["rotate"] if plan else None)
        if plan is not None and parts != len(plan["skip"]):
            raise MllibError(f"the data plan is for {len(plan['skip'])} readers, this DataLoader has {parts}")
        stream = self.stream(epoch, part, parts, rank, world, exclude=plan["exclude"] if plan else frozenset())
        last, pending = None, []  # a bad record (None) is replaced by the last good one, warped as itself
        for shard, record, rec in itertools.islice(stream, plan["skip"][part] if plan else 0, None):
            if rec is None:
                if last is None:
                    pending.append((shard, record))
                    continue
                rec = last
            else:
                last = rec
            for ps, pr in pending:
                yield self.sample(epoch, ps, pr, rec)
            pending = []
            yield self.sample(epoch, shard, record, rec)


def _cycle(make):
    """make()'s items, then make()'s again, forever (stops if make() yields nothing)."""
    while True:
        n = 0
        for item in make():
            n += 1
            yield item
        if n == 0:
            return


def _turns(batches: list[int], start: int, steps: int) -> tuple[list[int], int]:
    """The DataLoader's turns over its workers: worker w has batches[w] batches left and the turn starts at worker
    `start`; after `steps` batches, (batches taken from each worker, the worker whose turn is next). A worker with
    none left is passed over, as the DataLoader does once it has said it is done."""
    n = len(batches)
    taken = [0] * n
    w = start % n if n else 0
    left = sum(batches)
    for _ in range(min(steps, left)):
        while taken[w] >= batches[w]:
            w = (w + 1) % n
        taken[w] += 1
        w = (w + 1) % n
    return taken, w
