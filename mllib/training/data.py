"""The training data: datasets and DataLoaders as a TrainConfig asks for them (network2d.py's --records or the
COCO JSON in the store), in the compact form: uint8 images and labels, normalized later on the device.

A records set trains on its "train" set and validates on its "val" set; a COCO set on --trainingset and --valset,
or a fixed held-out fraction of the training images when --valset is ''. Under several ranks a map-style dataset
is split by a DistributedSampler, a records set by shards (every rank the same number of samples).
"""

from __future__ import annotations

import inspect

import numpy as np
import torch

from mllib import MllibError
from mllib.loaders.augment import Augment
from mllib.loaders.cocodataset import CocoDataset, worker_init_fn
from mllib.loaders.slots import SlotCollate
from mllib.store import Store


def _augment(enable: bool) -> Augment:
    return Augment(enable=enable)


def datasets(cfg, store: Store, class_dict, rank: int, world: int):
    """(train, val) datasets yielding compact uint8 samples; val may be empty."""
    if cfg.records:
        from mllib.records.read import RecordsDataset

        common = dict(height=cfg.height, width=cfg.width, seed=cfg.seed, rank=rank, world_size=world)
        train = RecordsDataset(store, cfg.records, "train", augment=_augment(True), **common)
        val = RecordsDataset(store, cfg.records, "val", augment=_augment(False), shuffle=False, **common) \
            if "val" in train.description["sets"] else None
        return train, val
    common = dict(class_dictionary=class_dict, height=cfg.height, width=cfg.width, imflags=cfg.imflags,
                  astype="uint8", normalize="none", label_dtype="uint8", skip_bad=cfg.skip_bad,
                  fetch_threads=cfg.fetch_threads, s3=store, bucket=cfg.bucket)
    train = CocoDataset(dataset_desc=cfg.trainingset, image_paths=cfg.train_image_path, seed=cfg.seed, **common)
    if cfg.valset:
        val = CocoDataset(dataset_desc=cfg.valset, image_paths=cfg.val_image_path or cfg.train_image_path,
                          augment=_augment(False), seed=0, **common)
        return train, val
    # no separate validation set: hold out a fixed fraction of the training images (the index is shared)
    n = len(train)
    order = np.random.default_rng(0).permutation(n)
    n_val = max(1, int(round(n * cfg.val_fraction))) if n > 1 and cfg.val_fraction > 0 else 0
    val_ds = train.with_augment(_augment(False), seed=0)
    return (torch.utils.data.Subset(train, order[n_val:].tolist()),
            torch.utils.data.Subset(val_ds, order[:n_val].tolist()))


def unordered_supported() -> bool:
    """Whether this PyTorch's DataLoader takes in_order (2.6 and newer)."""
    return "in_order" in inspect.signature(torch.utils.data.DataLoader.__init__).parameters


def base_dataset(ds):
    """The dataset behind a Subset (what set_epoch is called on)."""
    return ds.dataset if isinstance(ds, torch.utils.data.Subset) else ds


def loaders(cfg, train_ds, val_ds, device, rank: int, world: int):
    iterable = isinstance(train_ds, torch.utils.data.IterableDataset)
    sampler = torch.utils.data.DistributedSampler(train_ds, world, rank, shuffle=True, seed=cfg.seed) \
        if world > 1 and not iterable else None
    kw = dict(num_workers=cfg.num_workers, pin_memory=device.type == "cuda", collate_fn=SlotCollate(),
              persistent_workers=cfg.num_workers > 0, worker_init_fn=worker_init_fn)
    if cfg.num_workers > 0:
        kw["prefetch_factor"] = cfg.prefetch
    # unordered: a worker that is ahead is not held back by a slower one; the same batches, in an order that varies
    extra = {"in_order": False} if cfg.unordered and cfg.num_workers > 1 else {}
    if extra and not unordered_supported():
        raise MllibError(f"--unordered needs PyTorch 2.6 or newer (DataLoader in_order); this is {torch.__version__}")
    train = torch.utils.data.DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=sampler is None and not iterable,
                                        sampler=sampler, drop_last=len(train_ds) >= cfg.batch_size, **kw, **extra)
    val = None
    if val_ds is not None and len(val_ds):
        val_sampler = torch.utils.data.DistributedSampler(val_ds, world, rank, shuffle=False) \
            if world > 1 and not isinstance(val_ds, torch.utils.data.IterableDataset) else None
        val = torch.utils.data.DataLoader(val_ds, batch_size=cfg.batch_size, sampler=val_sampler, **kw)
    return train, sampler, val
