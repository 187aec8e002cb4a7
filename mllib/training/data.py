"""The training data: datasets and DataLoaders as a TrainConfig asks for them (network2d.py's --records, --source
or the COCO JSON in the store), in the compact form: uint8 images and labels, normalized later on the device.

A records set trains on its "train" set and validates on its "val" set; a source (mllib.sources) trains on its
entries whose set is not "val" and validates on those that are; a COCO set on --train_annotations and
--val_annotations; without validation entries (or with --val_annotations ''), on a fixed held-out fraction of the
training images. A COCO set's training order comes from an
EpochSampler (a pure function of seed, epoch, rank and world size), a records set is split by shards over ranks and
workers (every rank the same number of samples); either way the data position is what mllib.training.position
saves in a checkpoint.
"""

from __future__ import annotations

import hashlib
import inspect
import signal

import numpy as np
import torch

from mllib import MllibError
from mllib import sources as msources
from mllib.augment import Augment
from mllib.loaders.ahead import ReadAheadBatches, Rows
from mllib.loaders.cocodataset import CocoDataset, worker_init_fn
from mllib.loaders.segdataset import SegmentationDataset
from mllib.loaders.slots import SlotCollate
from mllib.store import Store
from mllib.training.position import EpochSampler, RecordsTracker, SamplesTracker


def _augment(enable: bool) -> Augment:
    return Augment(enable=enable)


def datasets(cfg, store: Store, class_dict, rank: int, world: int):
    """(train, val) datasets yielding compact uint8 samples; val may be empty."""
    if cfg.records:
        from mllib.records.read import RecordsDataset

        common = dict(height=cfg.height, width=cfg.width, seed=cfg.seed, rank=rank, world_size=world,
                      skip_bad=cfg.skip_bad)
        train = RecordsDataset(store, cfg.records, "train", augment=_augment(True), **common)
        val = RecordsDataset(store, cfg.records, "val", augment=_augment(False), shuffle=False, **common) \
            if "val" in train.description["sets"] else None
        return train, val
    output = dict(height=cfg.height, width=cfg.width, imflags=cfg.imflags, astype="uint8", normalize="none",
                  label_dtype="uint8", skip_bad=cfg.skip_bad, fetch_threads=cfg.fetch_threads)
    if cfg.source:
        return _source_datasets(cfg, store, class_dict, output)
    common = dict(class_dictionary=class_dict or "coco", s3=store, bucket=cfg.bucket, **output)
    train = CocoDataset(dataset_desc=cfg.train_annotations, image_paths=cfg.train_image_path, seed=cfg.seed,
                        **common)
    if cfg.val_annotations:
        val = CocoDataset(dataset_desc=cfg.val_annotations, image_paths=cfg.val_image_path or cfg.train_image_path,
                          augment=_augment(False), seed=0, **common)
        return train, val
    return held_out(cfg, train)


def _source_datasets(cfg, store: Store, class_dict, output: dict):
    """(train, val) from --source: entries with set "val" validate, the others train (all in one class space)."""
    st = store.with_bucket(cfg.bucket) if cfg.bucket else store
    specs = msources.resolve(cfg.source, st, classes_file=class_dict)
    classes = msources.set_classes(st, specs, class_dict)
    train_specs = [s for s in specs if s.set != "val"]
    val_specs = [s for s in specs if s.set == "val"]
    if not train_specs:
        raise MllibError("--source has no training entries (every entry has set 'val')")
    train = SegmentationDataset(st, train_specs, classes=classes, seed=cfg.seed, **output)
    if val_specs:
        val = SegmentationDataset(st, val_specs, classes=classes, augment=_augment(False), seed=0, **output)
        return train, val
    return held_out(cfg, train)


def held_out(cfg, train):
    """No separate validation set: hold out a fixed fraction of the training images (the source is shared)."""
    n = len(train)
    order = np.random.default_rng(0).permutation(n)
    n_val = max(1, int(round(n * cfg.val_fraction))) if n > 1 and cfg.val_fraction > 0 else 0
    val_ds = train.with_augment(_augment(False), seed=0)
    return Rows(train, order[n_val:].tolist()), Rows(val_ds, order[:n_val].tolist())


def unordered_supported() -> bool:
    """Whether this PyTorch's DataLoader takes in_order (2.6 and newer)."""
    return "in_order" in inspect.signature(torch.utils.data.DataLoader.__init__).parameters


def base_dataset(ds):
    """The dataset behind a Subset (what set_epoch is called on)."""
    return ds.dataset if isinstance(ds, torch.utils.data.Subset) else ds


def training_worker_init(worker_id: int) -> None:
    """worker_init_fn of the training loaders: as CocoDataset's, and deaf to SIGINT / SIGTERM, which the training
    process answers for the whole job (a Ctrl-C reaches every process of the terminal's group; a worker that died
    of it would fail the step the training process is finishing before its checkpoint)."""
    worker_init_fn(worker_id)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def loaders(cfg, train_ds, val_ds, device, rank: int, world: int):
    """(training loader, its EpochSampler or None for a records set, validation loader or None)."""
    iterable = isinstance(train_ds, torch.utils.data.IterableDataset)
    # the epoch's order a pure function of (seed, epoch, rank, world): the data position is one number
    sampler = None if iterable else EpochSampler(len(train_ds), cfg.batch_size, cfg.seed, rank, world)
    kw = dict(num_workers=cfg.num_workers, pin_memory=device.type == "cuda", collate_fn=SlotCollate(),
              persistent_workers=cfg.num_workers > 0, worker_init_fn=training_worker_init)
    if cfg.num_workers > 0:
        kw["prefetch_factor"] = cfg.prefetch
    # unordered: a worker that is ahead is not held back by a slower one; the same batches, in an order that varies
    extra = {"in_order": False} if cfg.unordered and cfg.num_workers > 1 else {}
    if extra and not unordered_supported():
        raise MllibError(f"--unordered needs PyTorch 2.6 or newer (DataLoader in_order); this is {torch.__version__}")
    if iterable:
        train = torch.utils.data.DataLoader(train_ds, batch_size=cfg.batch_size,
                                            drop_last=records_drop_last(cfg, train_ds), **kw, **extra)
    else:  # each batch names the one its worker gets next: those images are fetched while it is computed
        train = torch.utils.data.DataLoader(train_ds, batch_sampler=ReadAheadBatches(
            sampler, cfg.batch_size, num_workers=cfg.num_workers), **kw, **extra)
    val = None
    if val_ds is not None and len(val_ds):
        from mllib.training.evaluate import Strided

        val_sampler = Strided(len(val_ds), rank, world) \
            if world > 1 and not isinstance(val_ds, torch.utils.data.IterableDataset) else None
        val = torch.utils.data.DataLoader(val_ds, batch_size=cfg.batch_size, sampler=val_sampler, **kw)
    return train, sampler, val


def records_drop_last(cfg, train_ds) -> bool:
    """Each DataLoader worker of a records set drops its last partial batch (unless the set is under one batch)."""
    return len(train_ds) >= cfg.batch_size


def tracker(cfg, train_ds, sampler):
    """The data position of the training loader (mllib.training.position)."""
    if sampler is None:
        return RecordsTracker(train_ds, cfg.num_workers, cfg.batch_size, records_drop_last(cfg, train_ds))
    base = base_dataset(train_ds)
    h = hashlib.sha256(base.identity())
    if isinstance(train_ds, torch.utils.data.Subset):
        h.update(np.asarray(train_ds.indices, np.int64).tobytes())
    h.update(base.classes.lut.tobytes())  # the same images under another class mapping are other data
    return SamplesTracker(sampler, h.hexdigest()[:16])
