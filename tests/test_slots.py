"""SlotCollate: DataLoader batches through reused per-worker shared memory, exactly as default_collate makes them,
never overwritten while any tensor of a batch is still referenced, and unmapped when the workers are gone."""

from __future__ import annotations

import collections
import os
import time

import pytest
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate

from mllib.loaders import slots
from mllib.loaders.cocodataset import worker_init_fn
from mllib.loaders.slots import SlotCollate, attached_slots, forget_exited_workers
from mllib.records.read import RecordsDataset

from .cocofake import put_coco
from .test_pipeline import compact, make_set

pytestmark = pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="SlotCollate's slots need memfd_create")

Pair = collections.namedtuple("Pair", "a b")


class Mixed(Dataset):
    """Samples with every kind of field default_collate handles: tensors of several dtypes (bfloat16 has no numpy
    twin), ints, strings, dicts, nested lists and namedtuples."""

    def __init__(self, n: int = 23):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(i)
        image = torch.randint(0, 256, (3, 9, 7), generator=g, dtype=torch.uint8)
        return (image, torch.rand(5, generator=g, dtype=torch.float64), i, f"name{i}",
                {"label": torch.full((4, 4), i, dtype=torch.int64), "extra": [torch.tensor(i * 0.5), 7]},
                Pair(torch.ones(3) * i, torch.tensor([i], dtype=torch.bfloat16)))


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def snapshot(batch):
    """A deep copy of a batch (tensors cloned), to compare with later."""
    if isinstance(batch, torch.Tensor):
        return batch.clone()
    if isinstance(batch, dict):
        return {k: snapshot(v) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(snapshot(v) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(snapshot(v) for v in batch)
    return batch


def reference(ds, batch_size):
    return list(DataLoader(ds, batch_size=batch_size, num_workers=0))


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_batches_are_what_default_collate_makes(workers):
    ds = Mixed()
    ref = reference(ds, 4)  # the last batch is short (23 = 5 x 4 + 3)
    got = [snapshot(b) for b in DataLoader(ds, batch_size=4, num_workers=workers, collate_fn=SlotCollate())]
    assert len(got) == len(ref) == 6
    for a, b in zip(ref, got, strict=True):
        assert same(a, b)
    assert same(SlotCollate()([ds[0], ds[1]]), default_collate([ds[0], ds[1]]))  # no worker: default_collate


def test_slots_are_reused_not_made_per_batch():
    """Batches consumed one at a time (the training loop): each worker cycles through a few slots, mapped once."""
    forget_exited_workers()
    before = attached_slots()
    ref = reference(Mixed(200), 2)
    dl = DataLoader(Mixed(200), batch_size=2, num_workers=2, prefetch_factor=2, collate_fn=SlotCollate())
    n = 0
    for batch in dl:
        assert same(batch, ref[n])
        n += 1
    mapped = attached_slots() - before
    assert n == 100 and 2 <= mapped <= 2 * 4  # 2 workers x (prefetch 2 + the one being consumed + one spare)


def test_a_kept_batch_is_never_overwritten():
    """A consumer that keeps every batch (and one that keeps a single view of one) holds the slots: the workers
    wait briefly, then go on through fresh shared memory, and no kept batch changes."""
    ds = Mixed(60)
    ref = reference(ds, 3)
    forget_exited_workers()
    before = attached_slots()
    got = list(DataLoader(ds, batch_size=3, num_workers=2, collate_fn=SlotCollate(max_slots=2, wait_s=0.1)))
    assert attached_slots() - before == 4  # 2 slots per worker; the other 16 batches took the default path
    for a, b in zip(ref, got, strict=True):
        assert same(a, b)

    dl = DataLoader(ds, batch_size=3, num_workers=1, collate_fn=SlotCollate(max_slots=3, wait_s=0.1))
    kept, copy = None, None
    for k, batch in enumerate(dl):
        if k == 1:
            kept = batch[4]["label"][2]  # a view of one label of batch 1: the whole slot stays taken
            copy = kept.clone()
        assert same(batch, ref[k])
    assert torch.equal(kept, copy) and int(kept[0, 0]) == 5


def test_pinning_style_copy_frees_the_slot_at_once():
    """DataLoader's pin thread copies a batch and drops it: the slot is free again for the next batch, so a worker
    needs only a few slots however long the epoch."""
    forget_exited_workers()
    before = attached_slots()
    dl = DataLoader(Mixed(120), batch_size=4, num_workers=1, prefetch_factor=2, collate_fn=SlotCollate(wait_s=5))
    copies = [snapshot(b) for b in dl]  # what pin_memory does: a copy, the batch itself dropped
    assert len(copies) == 30 and attached_slots() - before <= 4
    assert same(copies, reference(Mixed(120), 4))


def test_slots_of_exited_workers_are_unmapped():
    forget_exited_workers()
    base = attached_slots()
    it = iter(DataLoader(Mixed(40), batch_size=4, num_workers=2, collate_fn=SlotCollate()))
    first = next(it)
    assert attached_slots() > base
    del it  # workers shut down and joined
    assert forget_exited_workers() >= 1 and attached_slots() == base
    assert int(first[2][3]) == 3 and torch.equal(first[0][1], Mixed()[1][0])  # a batch still held stays valid


class _InWorker:
    id = 0


def test_a_worker_waits_for_a_slot_once_then_falls_back_at_once(monkeypatch, caplog):
    """In a worker (get_worker_info() set): all slots held -> wait_s, a warning, None; later: None without waiting,
    and a slot the consumer lets go is used again."""
    monkeypatch.setattr(slots, "get_worker_info", lambda: _InWorker())
    collate = SlotCollate(max_slots=1, wait_s=0.2)
    batch = [Mixed()[i] for i in range(3)]
    first = collate(batch)
    assert isinstance(first, slots._Payload)  # a slot, sent as a small description
    t0 = time.monotonic()
    assert same(collate(batch), default_collate(batch))  # the one slot is still taken: waited, then the default
    assert 0.2 <= time.monotonic() - t0 < 2 and "still held by the consumer" in caplog.text
    t0 = time.monotonic()
    assert same(collate(batch), default_collate(batch)) and time.monotonic() - t0 < 0.1  # no more waiting
    collate._ring.get().slots[0].state[0] = 0  # what the consumer's release does
    assert isinstance(collate(batch), slots._Payload)


def test_without_memfd_it_is_default_collate(monkeypatch, caplog):
    def refuse(*a, **k):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(slots.os, "memfd_create", refuse)  # forked workers inherit the patch
    forget_exited_workers()
    before = attached_slots()
    got = list(DataLoader(Mixed(), batch_size=4, num_workers=2, collate_fn=SlotCollate()))
    assert same(got, reference(Mixed(), 4)) and attached_slots() == before
    monkeypatch.setattr(slots, "get_worker_info", lambda: _InWorker())
    collate = SlotCollate()
    batch = [Mixed()[i] for i in range(2)]
    assert same(collate(batch), default_collate(batch)) and "no shared-memory slot" in caplog.text
    assert not collate._usable


def test_spawned_workers():
    got = list(DataLoader(Mixed(12), batch_size=4, num_workers=1, collate_fn=SlotCollate(),
                          multiprocessing_context="spawn"))
    assert same(got, reference(Mixed(12), 4))


def test_cocodataset_and_records_through_slots(local_store, tmp_path):
    """The real loaders: CocoDataset's compact samples and RecordsDataset (an IterableDataset) give the same batches
    through SlotCollate as through default_collate, for any worker count."""
    put_coco(local_store, tmp_path, n=10)
    ds = compact(local_store)
    ref = reference(ds, 3)
    for workers in (1, 2):
        got = [snapshot(b) for b in DataLoader(ds, batch_size=3, num_workers=workers, collate_fn=SlotCollate(),
                                               worker_init_fn=worker_init_fn)]
        assert same(ref, got)
    make_set(local_store, tmp_path)
    rec = RecordsDataset(local_store, "t", "train", height=40, width=56, seed=1, shuffle_buffer=4)

    def samples(**kw):
        return sorted(bytes(b[0][k].numpy()) + bytes(b[1][k].numpy())
                      for b in DataLoader(rec, batch_size=2, num_workers=2, **kw) for k in range(len(b[0])))

    plain = samples()
    assert len(plain) == 12 and plain == samples(collate_fn=SlotCollate())
