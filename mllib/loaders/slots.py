"""Batches that cross from DataLoader workers to the training process through reused shared memory.

    loader = DataLoader(ds, batch_size=32, num_workers=15, pin_memory=True, collate_fn=SlotCollate())

PyTorch's default collate puts every batch into a fresh shared-memory segment: the worker creates it and
page-faults ~260 zeroed pages per 1 MB sample into it, the training process maps it again, faults the same pages
in, copies them (pinning) and unmaps it. That is a
sizeable part of a compact sample's cost, in the worker and in the main process (bench/README.md). SlotCollate gives each worker a few buffers ("slots", anonymous shared memory from memfd_create) that it
fills again and again:

- The worker stacks a batch's tensors into a free slot and sends only a small description of it. A slot's file
  descriptor crosses to the main process once, the first time the slot is used.
- The main process maps each slot once and hands out the batch as ordinary tensors viewing that slot. The slot is
  free again when the last of those tensors is gone: with `pin_memory=True` right after the pin thread has copied
  the batch, without it when your code drops the batch (the usual `for batch in loader:` does).
- A worker whose slots are all still held (your code keeps batches: `batches = list(loader)`) waits up to
  `wait_s` for one and then, for every batch that finds no free slot from then on, falls back to the default
  collate. It never blocks for long and never overwrites a batch that is still referenced.

Memory: a worker keeps the slots it has needed (about prefetch_factor + 1 batches) for as long as it lives, about
what the default path has in flight anyway; the main process unmaps an exited worker's slots within a second.

Batches have exactly the structure and values `default_collate` gives (tensors of one shape and dtype per field
are stacked in the slot; anything else goes through `default_collate`). Without DataLoader workers, or where
memfd_create is missing (not Linux), SlotCollate is `default_collate`.
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
import time
import uuid
from functools import partial
from multiprocessing import reduction
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import get_worker_info
from torch.utils.data._utils.collate import default_collate

from mllib.perprocess import PerProcess

log = logging.getLogger(__name__)

__all__ = ["SlotCollate", "attached_slots", "forget_exited_workers"]

_HEADER = 64  # bytes before a slot's data: the state word (0 free, 1 in use by the receiving side), padded
_ALIGN = 64  # every field starts on a cache line


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _state_word(mm: mmap.mmap) -> np.ndarray:
    """A slot's state word (its first 8 bytes): 0 free, 1 in use by the receiving side."""
    return np.frombuffer(mm, np.int64, 1, 0)


class _Region(NamedTuple):
    """Where one stacked field lies in a slot (a placeholder in the batch's structure while it travels)."""

    offset: int
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


# -- the worker's side ------------------------------------------------------------------------------------------
class _Slot:
    def __init__(self, size: int):
        self.fd = os.memfd_create("mllib-batch", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, size)
            self.mm = mmap.mmap(self.fd, size)
        except BaseException:
            os.close(self.fd)
            raise
        self.size = size
        self.token = uuid.uuid4().hex
        self.state = _state_word(self.mm)
        self.flat = torch.frombuffer(self.mm, dtype=torch.uint8)
        self.sent = False

    def view(self, r: _Region) -> torch.Tensor:
        return self.flat[r.offset:r.offset + r.nbytes].view(r.dtype).view(r.shape)

    def close(self) -> None:
        """The worker's end only: the receiving side keeps its own mapping until it forgets the slot."""
        self.state = self.flat = None
        try:
            self.mm.close()
        except BufferError:  # a view is still referenced somewhere in this process: leave it to the GC
            pass
        os.close(self.fd)


class _Payload:
    """What a worker returns for a batch in a slot; unpickled in the main process as the batch itself."""

    __slots__ = ("args",)

    def __init__(self, *args):
        self.args = args

    def __reduce__(self):
        return _receive, self.args


class _Ring:
    """One worker's slots."""

    def __init__(self, max_slots: int, wait_s: float):
        self.max_slots, self.wait_s = max_slots, wait_s
        self.slots: list[_Slot] = []
        self.retired: list[str] = []
        self.patient = True  # until a wait for a free slot has timed out once

    def _free(self, need: int):
        for s in self.slots:
            if s.state[0] == 0 and s.size >= need:
                return s
        return None

    def acquire(self, need: int) -> _Slot | None:
        s = self._free(need)
        if s is not None:
            return s
        small = next((s for s in self.slots if s.state[0] == 0), None) if len(self.slots) >= self.max_slots else None
        if small is not None:  # a free slot too small for this batch: replaced, and the main process forgets it
            self.slots.remove(small)
            self.retired.append(small.token)
            small.close()
        if len(self.slots) < self.max_slots:
            s = _Slot(need)
            self.slots.append(s)
            return s
        if not self.patient:
            return None
        deadline, pause = time.monotonic() + self.wait_s, 0.0002
        while time.monotonic() < deadline:
            time.sleep(pause)
            pause = min(pause * 2, 0.01)
            s = self._free(need)
            if s is not None:
                return s
        self.patient = False
        log.warning("DataLoader worker %d: all %d batch slots are still held by the consumer after %.1f s; batches "
                    "that find no free slot go through fresh shared memory from now on (keep fewer batches, or "
                    "raise SlotCollate(max_slots=...))", getattr(get_worker_info(), "id", -1), len(self.slots),
                    self.wait_s)
        return None


class SlotCollate:
    """collate_fn for DataLoader: batches through reused per-worker shared-memory slots (see the module text).

    max_slots: slots per worker, created as needed (a worker needs about prefetch_factor of them, plus the batches
    your code holds at once). wait_s: how long a worker waits for a free slot before it falls back.
    """

    def __init__(self, max_slots: int = 8, wait_s: float = 2.0):
        if max_slots < 1:
            raise ValueError("max_slots must be at least 1")
        self.max_slots, self.wait_s = int(max_slots), float(wait_s)
        self._ring = PerProcess(partial(_Ring, self.max_slots, self.wait_s))  # each worker makes its own slots
        self._usable = hasattr(os, "memfd_create")

    def __call__(self, batch):
        if not self._usable or get_worker_info() is None or not batch:
            return default_collate(batch)
        fields: list = []
        plan = _plan(batch, fields)
        if not fields:
            return default_collate(batch)
        offset, regions = _HEADER, []
        for tensors in fields:
            t = tensors[0]
            r = _Region(offset, (len(tensors), *t.shape), t.dtype)
            regions.append(r)
            offset += _aligned(r.nbytes)
        ring = self._ring.get()
        try:
            slot = ring.acquire(offset)
        except OSError as e:  # memfd or mmap refused (limits, an exotic kernel): the default path from now on
            log.warning("SlotCollate: no shared-memory slot (%s); using the default collate", e)
            self._usable = False
            return default_collate(batch)
        if slot is None:
            return default_collate(batch)
        for tensors, r in zip(fields, regions, strict=True):
            torch.stack(tensors, out=slot.view(r))
        slot.state[0] = 1  # in use until the main process has let go of every tensor viewing this batch
        fd = None
        if not slot.sent:
            fd, slot.sent = reduction.DupFd(slot.fd), True
        retired, ring.retired = ring.retired, []
        return _Payload(slot.token, os.getpid(), fd, slot.size, _fill(plan, iter(regions)), retired)


def _stackable(items) -> bool:
    """Plain CPU tensors of one shape and dtype, none needing grad: what torch.stack(out=slot) takes."""
    t = items[0]
    return all(isinstance(x, torch.Tensor) and x.shape == t.shape and x.dtype == t.dtype and not x.requires_grad
               and x.device.type == "cpu" and x.layout == torch.strided and not x.is_quantized for x in items)


_FIELD = object()  # marks a stacked field in a worker's plan of a batch


class _Seq(NamedTuple):
    """A list (or a namedtuple of type `kind`) in a batch's structure."""

    parts: list
    kind: type | None = None


class _Map(NamedTuple):
    """A dict in a batch's structure: (key, plan) pairs."""

    items: list


def _plan(batch, fields: list):
    """The batch's structure as default_collate builds it, with stacked tensor fields as _FIELD (their tensors
    appended to `fields`) and everything else already collated by default_collate. Plain tuples, lists, namedtuples
    and dicts are followed; any other container is a leaf."""
    elem = batch[0]
    if isinstance(elem, torch.Tensor):
        if _stackable(batch):
            fields.append(batch)
            return _FIELD
    elif type(elem) is dict and all(type(b) is dict and b.keys() == elem.keys() for b in batch):
        return _Map([(k, _plan([b[k] for b in batch], fields)) for k in elem])
    elif (type(elem) in (tuple, list) or (isinstance(elem, tuple) and hasattr(elem, "_fields"))) \
            and all(type(b) is type(elem) and len(b) == len(elem) for b in batch):
        parts = [_plan(col, fields) for col in zip(*batch, strict=True)]  # tuples, as default_collate passes on
        return _Seq(parts, type(elem) if hasattr(elem, "_fields") else None)
    return default_collate(batch)


def _fill(plan, regions):
    """The plan with each _FIELD replaced by its _Region."""
    if plan is _FIELD:
        return next(regions)
    if isinstance(plan, _Map):
        return _Map([(k, _fill(v, regions)) for k, v in plan.items])
    if isinstance(plan, _Seq):
        return _Seq([_fill(p, regions) for p in plan.parts], plan.kind)
    return plan


# -- the receiving (main) process's side ------------------------------------------------------------------------
_ATTACHED: dict[str, tuple[int, mmap.mmap]] = {}  # slot token -> (worker pid, this process's mapping)
_LOCK = threading.Lock()
_JANITOR: threading.Thread | None = None


def attached_slots() -> int:
    """How many workers' slots this process has mapped (each is mapped once, then reused)."""
    return len(_ATTACHED)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def forget_exited_workers() -> int:
    """Unmap the slots of workers that have exited (memory still viewed by a live batch stays until that batch is
    gone). Runs every second in a daemon thread while any slot is mapped; returns how many were forgotten."""
    with _LOCK:
        dead = [t for t, (pid, _) in _ATTACHED.items() if not _alive(pid)]
        for t in dead:
            del _ATTACHED[t]
    return len(dead)


def _janitor() -> None:
    global _JANITOR
    while True:
        time.sleep(1.0)
        forget_exited_workers()
        with _LOCK:
            if not _ATTACHED:
                _JANITOR = None
                return


def _start_janitor() -> None:  # with _LOCK held
    global _JANITOR
    if _JANITOR is None:
        _JANITOR = threading.Thread(target=_janitor, name="mllib-slot-janitor", daemon=True)
        _JANITOR.start()


def _after_fork_in_child() -> None:
    """A forked process (the next epoch's DataLoader workers, say) does not keep other workers' slots mapped."""
    global _JANITOR, _LOCK
    _ATTACHED.clear()
    _JANITOR, _LOCK = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _Leased(np.ndarray):
    """A numpy view of a slot that keeps the batch's lease alive (torch.from_numpy keeps the array alive)."""


class _Lease:
    """Frees a batch's slot for its worker when the last tensor viewing it is gone."""

    __slots__ = ("state", "pid")

    def __init__(self, mm: mmap.mmap):
        self.state = _state_word(mm)
        self.pid = os.getpid()

    def __del__(self):
        if self.pid == os.getpid():  # not in a process forked while the batch was alive
            self.state[0] = 0


def _receive(token, pid, fd, size, plan, retired):
    with _LOCK:
        for t in retired:
            _ATTACHED.pop(t, None)
        if fd is not None:
            raw = fd.detach()
            try:
                _ATTACHED[token] = (pid, mmap.mmap(raw, size))
            finally:
                os.close(raw)
            _start_janitor()
        entry = _ATTACHED.get(token)
    if entry is None:
        raise RuntimeError(f"a batch arrived in a shared-memory slot this process never received (worker {pid})")
    mm = entry[1]
    lease = _Lease(mm)

    def tensor(r: _Region) -> torch.Tensor:
        a = np.frombuffer(mm, np.uint8, r.nbytes, r.offset).view(_Leased)
        a.lease = lease
        return torch.from_numpy(a).view(r.dtype).view(r.shape)

    return _build(plan, tensor)


def _build(plan, tensor):
    if isinstance(plan, _Region):
        return tensor(plan)
    if isinstance(plan, _Map):
        return {k: _build(v, tensor) for k, v in plan.items}
    if isinstance(plan, _Seq):
        parts = [_build(p, tensor) for p in plan.parts]
        return plan.kind(*parts) if plan.kind is not None else parts
    return plan
