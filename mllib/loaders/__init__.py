"""Stage 5, loaders: samples from the store (or a TFRecord set) to the GPU (their augmentation: mllib.augment).

    segdataset.py   SegmentationDataset: PyTorch Dataset over any source (mllib.sources), ds.loader(...) the fast path
    cocodataset.py  CocoDataset / CocoStore: the seed's COCO constructor over it (mllib.cocodataset)
    ahead.py        ReadAheadBatches: each batch names the one its worker gets next, fetched while it computes
    slots.py        SlotCollate: DataLoader batches through reused per-worker shared memory
    gpu.py          the device end: BatchPrep (uint8 -> normalized float, channels_last), DevicePrefetcher

`mllib.loaders.SegmentationDataset` and `mllib.loaders.CocoDataset` are imported on first use (they need torch).
"""

from __future__ import annotations


def __getattr__(name: str):
    if name in ("SegmentationDataset", "EpochShuffle"):
        from mllib.loaders import segdataset

        return getattr(segdataset, name)
    if name in ("CocoDataset", "CocoStore"):
        from mllib.loaders import cocodataset

        return getattr(cocodataset, name)
    raise AttributeError(f"module 'mllib.loaders' has no attribute {name!r}")
