"""Where a training run is in its data: the part of a checkpoint that makes a resumed run continue at exactly the
batch the interrupted run would have trained on next.

An epoch's order is a pure function of (seed, epoch, rank, world size), and for a TFRecord set of the DataLoader's
worker count; the position counts the batches the training step consumed (not what the workers, SlotCollate or
the device prefetcher hold ahead), so no RNG state is saved and the position is a few numbers:

- CocoDataset (map-style), through `EpochSampler`: the epoch's global order is a seeded permutation of the images;
  global batch g is the g-th run of batch_size x world of it, rank r taking the r-th batch_size of each. The
  position is the number of samples all ranks consumed together, so a run resumed with another `--num_workers`
  or another number of ranks continues the same global sequence: no sample repeated, none lost.
- RecordsDataset (iterable), through `RecordsTracker`: each DataLoader worker of each rank reads its own part of
  the shards and the DataLoader takes batches from its workers in turn. From the step count follows how many
  records each part gave (`RecordsDataset.advance`); a resumed run skips those and starts the turn at the part
  that was next: exact with the same ranks and workers. With other counts, the records consumed are excluded and
  the rest of the epoch is split over the new parts: every remaining record once on one rank (several ranks keep
  equal shares, as in any multi-rank epoch: a short share is topped up with repeats).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch

from mllib import MllibError, UsageError


class EpochSampler(torch.utils.data.Sampler):
    """This rank's indices of one epoch, from `start` samples (all ranks together) into the epoch's global order.

    Use with DataLoader(batch_size=batch_size, drop_last=True): every rank gets the same number of full batches
    (the epoch's last partial global batch is dropped); a set smaller than one batch on one rank is one short batch.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.seed, self.rank, self.world = int(n), int(batch_size), int(seed), rank, world
        self.epoch, self.start = 0, 0

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if not 0 <= int(start) <= self.n:
            raise MllibError(f"data position {start} is outside an epoch of {self.n} samples")
        self.epoch, self.start = int(epoch), int(start)

    def order(self) -> np.ndarray:
        """The epoch's global order of sample indices."""
        return np.random.default_rng([self.seed, self.epoch, 0x5EED]).permutation(self.n)

    def steps(self) -> int:
        left = self.n - self.start
        if left >= self.global_batch:
            return left // self.global_batch
        return 1 if self.world == 1 and self.start == 0 and left > 0 else 0

    def consumed(self, steps: int) -> int:
        """Samples of the epoch consumed (all ranks) after `steps` more steps from this epoch's start position."""
        return min(self.n, self.start + steps * self.global_batch)

    def __len__(self) -> int:
        return min(self.n - self.start, self.steps() * self.batch_size)

    def __iter__(self):
        order = self.order()
        for g in range(self.steps()):
            lo = self.start + g * self.global_batch + self.rank * self.batch_size
            yield from order[lo:lo + self.batch_size].tolist()


def digest(obj) -> str:
    """A short digest of plain data: what a checkpoint records of the data it was made on."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class SamplesTracker:
    """The position of a CocoDataset run: (epoch, samples consumed by all ranks)."""

    kind = "samples"

    def __init__(self, sampler: EpochSampler, dataset_id: str):
        self.sampler, self.dataset_id = sampler, dataset_id

    def begin(self, epoch: int, saved: dict | None) -> None:
        start = 0
        if saved is not None and saved["epoch"] == epoch:
            self.check(saved)
            start = int(saved["samples"])
        self.sampler.set_epoch(epoch, start)

    def check(self, saved: dict) -> None:
        if saved.get("kind") != self.kind or saved.get("data") != self.dataset_id:
            raise UsageError("--resume: the checkpoint's data position is for other training data (a different "
                             "image set or class dictionary); train under another --model_name")

    def state(self, epoch: int, steps: int) -> dict:
        return {"kind": self.kind, "epoch": int(epoch), "samples": self.sampler.consumed(steps),
                "data": self.dataset_id}


class RecordsTracker:
    """The position of a RecordsDataset run: the plan its epoch started from and the steps taken since."""

    kind = "records"

    def __init__(self, dataset, workers: int, batch_size: int, drop_last: bool):
        self.ds = dataset
        self.topology = dataset.topology(workers, batch_size, drop_last)
        self.plan: dict | None = None

    def begin(self, epoch: int, saved: dict | None) -> None:
        self.plan = self.ds.fresh_plan(epoch, self.topology)
        if saved is not None and saved["epoch"] == epoch:
            if saved.get("kind") != self.kind or saved.get("data") != self.ds.data_id():
                raise UsageError("--resume: the checkpoint's data position is for another TFRecord set (or the set "
                                 "was rebuilt since); train under another --model_name")
            self.plan = self.ds.resume_plan(plan_from_state(saved["plan"]), int(saved["steps"]), self.topology)
        self.ds.set_plan(self.plan)

    def state(self, epoch: int, steps: int) -> dict:
        return {"kind": self.kind, "epoch": int(epoch), "steps": int(steps), "plan": plan_to_state(self.plan),
                "data": self.ds.data_id()}


def plan_to_state(plan: dict) -> dict:
    """A plan in checkpoint form: plain types, the excluded record ids as one int64 tensor."""
    out = dict(plan)
    out["exclude"] = torch.as_tensor(np.asarray(sorted(plan["exclude"]), np.int64))
    return out


def plan_from_state(state: dict) -> dict:
    out = dict(state)
    out["exclude"] = frozenset(int(v) for v in torch.as_tensor(state["exclude"]).tolist())
    out["topology"] = dict(state["topology"])
    return out
