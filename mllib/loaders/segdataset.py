"""SegmentationDataset: a PyTorch Dataset over any source in the store (mllib.sources: COCO JSON, Cityscapes, a
folder of images and label PNGs, a CVAT export), with the one augmentation warp.

    from mllib import store
    from mllib.loaders import SegmentationDataset
    ds = SegmentationDataset(store.connect("s3://data"), {"type": "folder", "imagepath": "datasets/own/images",
                             "labelpath": "datasets/own/masks", "classes_file": "datasets/own/own.json"},
                             height=512, width=512)
    loader = ds.loader(batch_size=8, num_workers=2)     # the fast path: read-ahead, SlotCollate, worker init
    for epoch in range(10):
        ds.set_epoch(epoch)
        for image, label, mean, std in loader:          # float32 3xHxW normalized RGB, int64 HxW trainIds, stats
            ...

or `SegmentationDataset.from_store("s3://coco", "coco", split="val")` for a registered dataset.

- One affine warp per sample for the image (bilinear) and the same warp for the label (nearest neighbour, 255
  where padding or rotation brings in pixels from outside), so image and label stay aligned.
- Randomness: each sample's stream is derived from (seed, epoch, index); the seed is drawn from torch's RNG at
  construction, so the same torch seed gives the same samples with any number of workers. Call
  set_epoch(e) each epoch (it reaches running workers through shared memory), as with DistributedSampler.
- Each worker process opens its own store client; a missing or corrupt image or label raises an error naming the
  key, or with skip_bad=True is replaced by the next good sample and counted (`bad_count()`).
- A batch's images (and label images) are fetched concurrently (`fetch_threads` per worker, through
  `__getitems__`); a batch from `loader()` (mllib.loaders.ahead.ReadAheadBatches) also names the batch the worker
  gets next, whose objects are fetched while this one is computed.
"""

from __future__ import annotations

import copy
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import cv2
import numpy as np
import torch

from mllib import MllibError, checks
from mllib import sources as msources
from mllib import store as mstore
from mllib.augment import Augment, channels, chw_uint8, output_settings, warp
from mllib.images import ImageError, decode
from mllib.labels.render import LabelError
from mllib.loaders.ahead import ReadAheadBatches
from mllib.perprocess import PerProcess
from mllib.sources.base import get_or_none

log = logging.getLogger(__name__)

__all__ = ["EpochShuffle", "SampleError", "SegmentationDataset", "keep_freed_memory", "worker_init_fn"]


class SampleError(MllibError):
    pass


_malloc_tuned_pid = None


def keep_freed_memory() -> None:
    """Tune glibc's malloc in this process so freed sample-sized blocks stay in the heap (Linux/glibc only).

    Each float32 sample allocates a few MB of fresh arrays; glibc hands blocks of that size back to the kernel and
    the next sample page-faults them in again (bench/README.md). Up to 256 MB of freed heap may then stay with the process. It changes the whole process, so it
    is never done implicitly: pass `worker_init_fn` (below) to the DataLoader, or call it yourself.
    """
    global _malloc_tuned_pid
    if _malloc_tuned_pid == os.getpid():
        return
    _malloc_tuned_pid = os.getpid()
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD: blocks under 64 MB come from the heap
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD: keep up to 256 MB of freed heap
    except (OSError, AttributeError):
        pass


def worker_init_fn(worker_id: int) -> None:
    """DataLoader(worker_init_fn=...) for CocoDataset / RecordsDataset workers: malloc tuned in the worker only."""
    keep_freed_memory()


def _open_store(s3, bucket):
    s = s3 if isinstance(s3, mstore.Store) else mstore.connect(s3)
    return s.with_bucket(bucket) if bucket else s


def output_spec(astype, normalize):
    """(numpy dtype, mode, fixed (mean, std) or None) from the seed-compatible astype/normalize arguments."""
    if normalize is True:
        normalize = "image"
    elif normalize is False or normalize is None:
        normalize = "none"
    fixed = None
    if isinstance(normalize, str):
        if normalize not in ("image", "none"):
            raise MllibError("normalize must be 'image' (or True), 'none' (or False) or (mean, std) per channel")
        mode = normalize
    else:
        mean, std = normalize
        fixed = (np.asarray(mean, np.float64), np.asarray(std, np.float64))
        mode = "fixed"
    dtype = checks.dtype("astype", astype, "f", "'float32', 'float16', 'float64' or 'uint8'", also=(np.uint8,))
    if dtype == np.uint8 and mode != "none":
        raise MllibError("astype='uint8' needs normalize='none' (normalize on the GPU: mllib.loaders.gpu.BatchPrep)")
    return dtype, mode, fixed


def to_output(img, lab, m, out_hw, ignore, dtype, mode, fixed, label_dtype):
    """Warp (or place) and convert one sample: (C x H x W image of dtype, label, mean, std) as numpy arrays."""
    c = channels(img)
    if fixed is not None:
        mean, std = fixed
    elif mode == "image":
        mu, sd = cv2.meanStdDev(img)
        mean, std = mu.ravel()[:c], np.maximum(sd.ravel()[:c], 1e-6)
    else:
        mean, std = np.zeros(c), np.ones(c)
    border = 0
    if mode != "none":
        border = float(mean[0]) if img.ndim == 2 else tuple(float(v) for v in mean)
    out, lab = warp(img, lab, m, out_hw, ignore, border)
    if dtype == np.uint8:  # compact path: no arithmetic, planes copied into C x H x W
        chw = chw_uint8(out)
    else:
        planes = cv2.split(out)[:c] if out.ndim == 3 else [out]  # contiguous channel planes, in RGB order
        scale = 1.0 / np.asarray(std, np.float64)[:c]
        shift = -np.asarray(mean, np.float64)[:c] * scale
        chw = np.empty((c, out_hw[0], out_hw[1]), dtype)
        for k, plane in enumerate(planes):  # (x - mean) / std, written straight into the C x H x W output
            np.multiply(plane, dtype.type(scale[k]), out=chw[k], casting="unsafe")
            chw[k] += dtype.type(shift[k])
    if lab.dtype != label_dtype:
        lab = lab.astype(label_dtype)
    return chw, lab, np.asarray(mean, np.float32)[:c], np.asarray(std, np.float32)[:c]


class _Fetch:
    """An item's fetch in flight: the image's and the label's futures, with fetch()'s result and errors."""

    def __init__(self, ds, i: int, image, label):
        self.ds, self.i, self.image, self.label = ds, i, image, label

    def result(self) -> dict:
        return self.ds.fetched(self.i, {"image": self.image.result(),
                                        "label": self.label.result() if self.label is not None else None})

    def cancel(self) -> None:
        self.image.cancel()
        if self.label is not None:
            self.label.cancel()


class EpochShuffle(torch.utils.data.Sampler):
    """A dataset's indices in a new order each epoch: a permutation drawn from (seed, the dataset's epoch), so
    `ds.set_epoch(e)` gives epoch e's order, the same in every run."""

    def __init__(self, ds, seed: int):
        self.ds, self.seed = ds, int(seed)

    def __len__(self) -> int:
        return len(self.ds)

    def __iter__(self):
        yield from np.random.default_rng([self.seed, self.ds.epoch, 0x5EED]).permutation(len(self.ds)).tolist()


class SegmentationDataset(torch.utils.data.Dataset):
    """Images + labels of trainIds from any source in the store, augmented, as (image, label, mean, std) tensors.

    `source`: a Source (mllib.sources), a spec (dict or JSON text, one entry or a list: entries are combined), or a
    registered name ("coco", "ade20k", "voc2012-aug", ...: getdataset.py --list); `split` keeps the entries of one set ("train", "val"). `classes`: the
    set's class dictionary (default: the first entry's, else coco.json).

    Seed-compatible defaults: float32 C x H x W normalized per image, int64 label. The compact form for training
    (`astype="uint8", normalize="none", label_dtype="uint8"`) sends 1/5 of the bytes to the main process and
    leaves the float conversion and normalization to the GPU (mllib.loaders.gpu.BatchPrep).
    """

    emit_index = False  # True: each sample also carries its index (a fifth field)

    def __init__(
        self,
        store=None,
        source="coco",
        height: int = 512,
        width: int = 512,
        *,
        split: str | None = None,
        classes=None,
        bucket: str | None = None,
        imflags: int = cv2.IMREAD_COLOR,
        astype: str = "float32",
        enable_transform: bool = True,
        flipX: bool = True,  # noqa: N803 - the seed's parameter names
        flipY: bool = False,  # noqa: N803
        rotate: float = 15.0,
        scale_min: float = 0.75,
        scale_max: float = 1.25,
        offset: float = 0.1,
        normalize="image",
        resize: str = "crop",
        crowd: str = "class",
        skip_bad: bool = False,
        seed: int | None = None,
        image_transform=None,
        label_transform=None,
        label_dtype: str = "int64",
        fetch_threads: int = 16,
        augment: Augment | None = None,
    ):
        self.store = _open_store(store if store is not None else mstore.default_url(), bucket)
        if isinstance(source, msources.Source):
            self.source = source
        else:
            target = classes if isinstance(classes, str) else getattr(classes, "name", None)
            specs = msources.resolve(source, self.store, split, what="source", classes_file=target)
            self.source = msources.open_sources(self.store, specs, classes, crowd)
        self.unpaired = self.source.check_pairs(skip_bad)  # an error naming them unless skip_bad
        self.classes = self.source.classes
        self.height, self.width, seed, self.label_dtype = output_settings(height, width, seed, label_dtype)
        self.imflags = imflags
        self.augment = augment or Augment(enable_transform, flipX, flipY, rotate, scale_min, scale_max, offset, resize)
        self.astype, self.normalize, self.fixed = output_spec(astype, normalize)
        self.image_transform, self.label_transform = image_transform, label_transform
        self.fetch_threads = max(1, int(fetch_threads))
        self.skip_bad = skip_bad
        self.seed = int(torch.randint(0, 2**62, (1,)).item()) if seed is None else int(seed)
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._bad = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._pool = PerProcess(partial(ThreadPoolExecutor, self.fetch_threads, thread_name_prefix="mllib-fetch"))
        self._early = PerProcess(dict)  # the next batch's fetches (read ahead), per process

    # the seed's attribute names for the augmentation parameters
    enable_transform = property(lambda self: self.augment.enable)
    rotate = property(lambda self: self.augment.rotate)
    scale_min = property(lambda self: self.augment.scale_min)
    scale_max = property(lambda self: self.augment.scale_max)
    resize = property(lambda self: self.augment.resize)

    @classmethod
    def from_store(cls, url, source="coco", split: str | None = None, **kw) -> SegmentationDataset:
        """A dataset from a store URL (or Store) and a source (a registered name, a spec, JSON text)."""
        return cls(url, source, split=split, **kw)

    def with_augment(self, augment: Augment, seed: int) -> SegmentationDataset:
        """The same images and labels (store, source and output form shared, nothing loaded again) with another
        augmentation and seed, e.g. a validation view of a training set."""
        other = copy.copy(self)
        other.augment, other.seed = augment, int(seed)
        other._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        other._bad = torch.zeros(1, dtype=torch.int64).share_memory_()
        other._early = PerProcess(dict)
        return other

    def __len__(self) -> int:
        return len(self.source)

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = int(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def bad_count(self) -> int:
        return int(self._bad[0])

    def identity(self) -> bytes:
        """Bytes that change when the items change (what a checkpoint records of its data)."""
        return self.source.identity()

    # -- the documented loader --------------------------------------------------------------------------------
    def loader(self, batch_size: int = 8, num_workers: int = 2, shuffle: bool = True, drop_last: bool = False,
               sampler=None, pin_memory: bool = False, prefetch_factor: int = 2, read_ahead: int = 2,
               **kw) -> torch.utils.data.DataLoader:
        """A DataLoader on the fast path: each batch names the `read_ahead` batches its worker gets next
        (ReadAheadBatches), whose objects are fetched while it is computed, so the store's latency overlaps the
        work; batches cross from the workers through reused shared
        memory (SlotCollate); workers keep freed sample memory (worker_init_fn) and persist across epochs, which
        set_epoch() still reaches. shuffle: a new order each epoch from (seed, epoch); or give a sampler."""
        from mllib.loaders.slots import SlotCollate

        checks.Range(1).require("batch_size", batch_size)
        checks.Range(0, 1024).require("num_workers", num_workers)
        checks.Range(1, 16).require("read_ahead", read_ahead)
        if sampler is None:
            sampler = EpochShuffle(self, self.seed) if shuffle else torch.utils.data.SequentialSampler(self)
        extra = {"prefetch_factor": prefetch_factor, "persistent_workers": True} if num_workers > 0 else {}
        return torch.utils.data.DataLoader(
            self, batch_sampler=ReadAheadBatches(sampler, batch_size, drop_last, num_workers, read_ahead),
            num_workers=num_workers, collate_fn=SlotCollate(), worker_init_fn=worker_init_fn, pin_memory=pin_memory,
            **{**extra, **kw})

    # -- raw samples ------------------------------------------------------------------------------------------
    def image_key(self, i: int) -> str:
        return self.source.item(i)[0]

    def fetch(self, i: int) -> dict:
        """Item i's objects from the store ({"image": bytes, "label": bytes or None})."""
        return self.fetched(i, self.source.fetch(i))

    def fetched(self, i: int, got: dict) -> dict:
        """What fetch(i) read, or SampleError naming the image when it is not in the store."""
        if got.get("image") is None:
            raise SampleError(f"image {self.store.url_for(self.image_key(i))} is missing from the store")
        return got

    def raw(self, i: int, data=None, rgba: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(image as decoded with imflags: RGB HxWx3 (RGBA with rgba=True) or gray HxW, label uint8 HxW of trainIds)
        at full resolution; `data` is fetch(i)'s result (or the image's bytes) when already read."""
        fetched = data if isinstance(data, dict) else (self.fetch(i) if data is None else None)
        image_bytes = fetched["image"] if fetched is not None else data
        key, _, where = self.source.item(i)
        try:
            img = decode(image_bytes, self.imflags, rgba=rgba)  # checks the header (and its size) first
        except ImageError as e:
            raise SampleError(f"image {self.store.url_for(key)} is corrupt: {e}") from None
        hw = self.source.size(i)
        if hw is not None and img.shape[:2] != hw:
            raise SampleError(f"image {self.store.url_for(key)} is {img.shape[0]}x{img.shape[1]}, "
                              f"the annotation file says {hw[0]}x{hw[1]}")
        try:
            label = self.source.label(i, img.shape[0], img.shape[1], where, fetched)
        except (LabelError, ImageError) as e:
            raise SampleError(str(e)) from None
        return img, label

    # -- augmentation -----------------------------------------------------------------------------------------
    def matrix(self, i: int, hw: tuple[int, int]) -> np.ndarray | None:
        """Sample i's warp for the current epoch (None: an exact center crop/pad)."""
        return self.augment.matrix(hw, (self.height, self.width), (self.seed, int(self._epoch[0]), i))

    def transform(self, i: int, img: np.ndarray, label: np.ndarray):
        return to_output(img, label, self.matrix(i, label.shape), (self.height, self.width), self.classes.ignore,
                         self.astype, self.normalize, self.fixed, self.label_dtype)

    def _submit(self, pool, i: int) -> _Fetch:
        """Item i's image and label read at once, each on its own pool thread (two requests overlap)."""
        key = self.source.item(i)[0]
        lk = self.source.label_key(i)
        return _Fetch(self, i, pool.submit(get_or_none, self.store, key),
                      pool.submit(get_or_none, self.store, lk) if lk else None)

    # -- samples ----------------------------------------------------------------------------------------------
    def _sample(self, i: int, first=None):
        """Sample i; `first` is a future holding fetch(i)'s result (already being fetched), or None."""
        n = len(self)
        for attempt in range(min(n, 100)):
            j = (i + attempt) % n
            try:
                data = first.result() if attempt == 0 and first is not None else None
                img, label = self.raw(j, data, rgba=True)  # RGBA warps faster, same RGB values
                break
            except SampleError as e:
                if not self.skip_bad:
                    raise
                self._bad[0] += 1
                log.warning("skipping bad sample %d: %s", j, e)
        else:
            raise SampleError(f"no good sample found from index {i} on (skip_bad gave up after 100 tries)")
        chw, lab, mean, std = self.transform(i, img, label)
        image, label_t = torch.from_numpy(chw), torch.from_numpy(lab)
        if self.image_transform is not None:
            image = self.image_transform(image)
        if self.label_transform is not None:
            label_t = self.label_transform(label_t)
        if self.emit_index:  # training's colour jitter is drawn from it (mllib.training.recipe)
            return image, label_t, torch.from_numpy(mean), torch.from_numpy(std), torch.tensor(i, dtype=torch.int64)
        return image, label_t, torch.from_numpy(mean), torch.from_numpy(std)

    def __getitem__(self, i: int):
        return self._sample(int(i))

    def __getitems__(self, indices):
        """A batch (DataLoader calls this with a batch's indices): from a store behind a network, all items are
        fetched at once by a thread pool, each sample decoded and warped as soon as its bytes are in, so the
        store's latency overlaps the work. A batch from mllib.loaders.ahead.ReadAheadBatches also names the batch
        this worker gets next (`indices.ahead`): those items are fetched while this batch is computed. A local
        store's reads take microseconds: no pool there."""
        ahead = [int(i) for i in getattr(indices, "ahead", ())]
        indices = [int(i) for i in indices]
        if self.fetch_threads <= 1 or (len(indices) <= 1 and not ahead) or self.store.local_path() is not None:
            return [self._sample(i) for i in indices]
        pool = self._pool.get()  # one per process: DataLoader workers make their own
        early = self._early.get()  # item index -> its fetch, started during an earlier batch
        n = len(self)
        futures = [early.pop(i % n, None) or self._submit(pool, i % n) for i in indices]
        keep = {j % n for j in ahead}
        for j in [j for j in early if j not in keep]:  # read ahead for a batch that did not come (hints are hints)
            early.pop(j).cancel()
        for j in ahead:
            if j % n not in early:
                early[j % n] = self._submit(pool, j % n)
        try:
            return [self._sample(i, f) for i, f in zip(indices, futures, strict=True)]
        finally:
            for f in futures:
                f.cancel()
