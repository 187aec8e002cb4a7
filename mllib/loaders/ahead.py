"""Reading ahead across batches: each batch a DataLoader worker is given names the one it will be given next, so
CocoDataset fetches those images while it computes this batch and a store's latency overlaps the work.

    batches = ReadAheadBatches(RandomSampler(ds), batch_size=8, num_workers=2)   # or any sampler (EpochSampler)
    loader = DataLoader(ds, batch_sampler=batches, num_workers=2)

DataLoader hands batch k to worker k % num_workers (in order, and with in_order=False too), so worker k % n's next
batch is batch k + n: the batch sampler looks that far ahead in its sampler and attaches those indices to batch k
(`Batch.ahead`). The batches and their samples are exactly BatchSampler's; only the time the images arrive changes.
"""

from __future__ import annotations

import itertools
from collections import deque

import torch


class Batch(list):
    """A batch's indices, and in `ahead` the indices of the batch the same worker is given next (may be empty)."""

    def __init__(self, indices=(), ahead=()):
        super().__init__(indices)
        self.ahead = list(ahead)


class ReadAheadBatches(torch.utils.data.Sampler):
    """A DataLoader batch_sampler: `sampler`'s indices in batches as BatchSampler makes them, each a Batch whose
    `ahead` is the `depth` batches the same worker gets next (in order)."""

    def __init__(self, sampler, batch_size: int, drop_last: bool = False, num_workers: int = 0, depth: int = 1):
        self.batches = torch.utils.data.BatchSampler(sampler, batch_size, drop_last)
        self.sampler = sampler
        self.workers = max(1, int(num_workers))
        self.depth = max(1, int(depth))

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        it = iter(self.batches)
        n = self.workers
        window = deque(itertools.islice(it, n * self.depth + 1))
        while window:
            batch = window.popleft()
            window.extend(itertools.islice(it, 1))
            # window[j] is batch k + 1 + j: this worker's next ones are k + n, k + 2n, ...
            ahead = [i for d in range(1, self.depth + 1) if len(window) >= n * d for i in window[n * d - 1]]
            yield Batch(batch, ahead)


class Rows(torch.utils.data.Subset):
    """torch's Subset that keeps a Batch's read-ahead: its `ahead` indices are mapped into the dataset too."""

    def __getitems__(self, indices):
        ahead = getattr(indices, "ahead", ())
        return self.dataset.__getitems__(Batch([self.indices[i] for i in indices], [self.indices[i] for i in ahead]))
