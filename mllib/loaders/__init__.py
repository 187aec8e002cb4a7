"""Stage 5, loaders: samples from the store (or a TFRecord set) to the GPU (their augmentation: mllib.augment).

    cocodataset.py  CocoDataset / CocoStore: PyTorch Dataset over COCO in the store (mllib.cocodataset)
    ahead.py        ReadAheadBatches: each batch names the one its worker gets next, fetched while it computes
    slots.py        SlotCollate: DataLoader batches through reused per-worker shared memory
    gpu.py          the device end: BatchPrep (uint8 -> normalized float, channels_last), DevicePrefetcher
"""
