"""CocoDataset: a PyTorch Dataset that reads COCO images and annotations straight from the object store.

    from mllib import store
    s3 = store.connect("s3://coco")
    ds = CocoDataset(s3=s3, dataset_desc="datasets/coco/annotations/instances_train2017.json",
                     image_paths="datasets/coco/train2017", class_dictionary="coco", height=512, width=512)
    image, label, mean, stdev = ds[0]      # float32 3x512x512 (RGB, normalized), int64 512x512, per-channel stats
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=4, shuffle=True)

or `CocoDataset.from_store("s3://coco", split="val2017", height=512, width=512)` for the layout getcoco.py writes.

- Labels come from mllib.labels.render (the renderer cocorecord uses), over the cached index (labels.cocoindex),
  whose flat numpy arrays DataLoader workers share without copy-on-read growth.
- One affine warp per sample for the image (bilinear) and the same warp for the label (nearest neighbour, 255
  where padding or rotation brings in pixels from outside), so image and label stay aligned.
- Randomness: each sample's stream is derived from (seed, epoch, index); the seed is drawn from torch's RNG at
  construction, so the same torch seed gives the same samples with any number of workers. Call
  set_epoch(e) each epoch (it reaches running workers through shared memory), as with DistributedSampler.
- Each worker process opens its own store client; a missing or corrupt image raises an error naming the key,
  or with skip_bad=True is replaced by the next good sample and counted (`bad_count()`).
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

from mllib import MllibError, checks, images, layout
from mllib import store as mstore
from mllib.augment import Augment, channels, chw_uint8, output_settings, warp
from mllib.labels import classes
from mllib.labels.cocoindex import CocoIndex
from mllib.labels.render import LabelError, Renderer, presence
from mllib.perprocess import PerProcess

log = logging.getLogger(__name__)


__all__ = ["CocoDataset", "CocoStore", "SampleError", "keep_freed_memory", "worker_init_fn"]


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


class CocoDataset(torch.utils.data.Dataset):
    """COCO images + rendered labels from the store, augmented, as (image, label, mean, std) tensors.

    Seed-compatible defaults: float32 C x H x W normalized per image, int64 label. The compact form for training
    (`astype="uint8", normalize="none", label_dtype="uint8"`) sends 1/5 of the bytes to the main process and
    leaves the float conversion and normalization to the GPU (mllib.loaders.gpu.BatchPrep). A batch's images are fetched
    concurrently (`fetch_threads` per worker, through `__getitems__`), so a store's latency overlaps the work.
    """

    def __init__(
        self,
        s3=None,
        bucket: str | None = None,
        dataset_desc: str = layout.coco_instances("coco", "train2017"),
        image_paths: str = layout.coco_images("coco", "train2017"),
        class_dictionary="coco",
        height: int = 512,
        width: int = 512,
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
        stuff_desc: str | None = None,
        skip_bad: bool = False,
        seed: int | None = None,
        name_decoration: str = "",
        image_transform=None,
        label_transform=None,
        label_dtype: str = "int64",
        fetch_threads: int = 16,
        augment: Augment | None = None,
    ):
        self.store = _open_store(s3 if s3 is not None else mstore.default_url(), bucket)
        self.dataset_desc = dataset_desc
        self.image_paths = image_paths.strip("/")
        self.name_decoration = name_decoration
        self.classes = classes.load(class_dictionary)
        self.height, self.width, seed, self.label_dtype = output_settings(height, width, seed, label_dtype)
        self.imflags = imflags
        self.augment = augment or Augment(enable_transform, flipX, flipY, rotate, scale_min, scale_max, offset, resize)
        self.astype, self.normalize, self.fixed = output_spec(astype, normalize)
        self.image_transform, self.label_transform = image_transform, label_transform
        self.fetch_threads = max(1, int(fetch_threads))
        self.skip_bad = skip_bad
        self.index = CocoIndex.load(self.store, dataset_desc)
        self.stuff = CocoIndex.load(self.store, stuff_desc) if stuff_desc else None
        self.renderer = Renderer(self.classes, crowd)
        self.seed = int(torch.randint(0, 2**62, (1,)).item()) if seed is None else int(seed)
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._bad = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._pool = PerProcess(partial(ThreadPoolExecutor, self.fetch_threads, thread_name_prefix="mllib-fetch"))
        self._early = PerProcess(dict)  # the next batch's image fetches (read ahead), per process

    # the seed's attribute names for the augmentation parameters
    enable_transform = property(lambda self: self.augment.enable)
    rotate = property(lambda self: self.augment.rotate)
    scale_min = property(lambda self: self.augment.scale_min)
    scale_max = property(lambda self: self.augment.scale_max)
    resize = property(lambda self: self.augment.resize)

    @classmethod
    def from_store(cls, url, split: str = "train2017", classes="coco", dataset: str = "coco", stuff: bool = False,
                   **kw) -> CocoDataset:
        """The layout getcoco.py writes: datasets/<dataset>/annotations/instances_<split>.json + <split>/*.jpg."""
        return cls(s3=url, dataset_desc=layout.coco_instances(dataset, split), image_paths=layout.coco_images(dataset, split),
                   class_dictionary=classes, stuff_desc=layout.coco_stuff(dataset, split) if stuff else None, **kw)

    def with_augment(self, augment: Augment, seed: int) -> CocoDataset:
        """The same images and labels (store, index and output form shared, nothing loaded again) with another
        augmentation and seed, e.g. a validation view of a training set."""
        other = copy.copy(self)
        other.augment, other.seed = augment, int(seed)
        other._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        other._bad = torch.zeros(1, dtype=torch.int64).share_memory_()
        other._early = PerProcess(dict)
        return other

    def __len__(self) -> int:
        return self.index.images

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = int(epoch)

    def bad_count(self) -> int:
        return int(self._bad[0])

    # -- raw samples ------------------------------------------------------------------------------------------
    def image_key(self, i: int) -> str:
        return f"{self.image_paths}/{self.name_decoration}{self.index.file_name(i)}"

    def fetch(self, i: int) -> bytes:
        key = self.image_key(i)
        try:
            return self.store.get_bytes(key)
        except mstore.NotFound:
            raise SampleError(f"image {self.store.url_for(key)} is missing from the store") from None

    def raw(self, i: int, data: bytes | None = None, rgba: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(image as decoded with imflags: RGB HxWx3 (RGBA with rgba=True) or gray HxW, label uint8 HxW) at full
        resolution."""
        if data is None:
            data = self.fetch(i)
        try:
            img = images.decode(data, self.imflags, rgba=rgba)  # checks the header (and its size) first
        except images.ImageError as e:
            raise SampleError(f"image {self.store.url_for(self.image_key(i))} is corrupt: {e}") from None
        h, w = self.index.size(i)
        if img.shape[:2] != (h, w):
            raise SampleError(f"image {self.store.url_for(self.image_key(i))} is {img.shape[0]}x{img.shape[1]}, "
                              f"the annotation file says {h}x{w}")
        srow = self.stuff.row_of(int(self.index.image_id[i])) if self.stuff is not None else None
        try:
            label = self.renderer.render(self.index, i, self.stuff, srow)
        except LabelError as e:
            raise SampleError(str(e)) from None
        return img, label

    # -- augmentation -----------------------------------------------------------------------------------------
    def matrix(self, i: int, hw: tuple[int, int]) -> np.ndarray | None:
        """Sample i's warp for the current epoch (None: an exact center crop/pad)."""
        return self.augment.matrix(hw, (self.height, self.width), (self.seed, int(self._epoch[0]), i))

    def transform(self, i: int, img: np.ndarray, label: np.ndarray):
        return to_output(img, label, self.matrix(i, label.shape), (self.height, self.width), self.classes.ignore,
                         self.astype, self.normalize, self.fixed, self.label_dtype)

    # -- samples ----------------------------------------------------------------------------------------------
    def _sample(self, i: int, first=None):
        """Sample i; `first` is a future holding the bytes of image i (already being fetched), or None."""
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
        return image, label_t, torch.from_numpy(mean), torch.from_numpy(std)

    def __getitem__(self, i: int):
        return self._sample(int(i))

    def __getitems__(self, indices):
        """A batch (DataLoader calls this with a batch's indices): from a store behind a network, all images are
        fetched at once by a thread pool, each sample decoded and warped as soon as its bytes are in, so the
        store's latency overlaps the work. A batch from mllib.loaders.ahead.ReadAheadBatches also names the batch
        this worker gets next (`indices.ahead`): those images are fetched while this batch is computed. A local
        store's reads take microseconds: no pool there."""
        ahead = [int(i) for i in getattr(indices, "ahead", ())]
        indices = [int(i) for i in indices]
        if self.fetch_threads <= 1 or (len(indices) <= 1 and not ahead) or self.store.local_path() is not None:
            return [self._sample(i) for i in indices]
        pool = self._pool.get()  # one per process: DataLoader workers make their own
        early = self._early.get()  # image index -> future, fetched during the previous batch
        n = len(self)
        futures = [early.pop(i % n, None) or pool.submit(self.fetch, i % n) for i in indices]
        for f in early.values():  # read ahead for a batch that did not come (hints are only hints)
            f.cancel()
        early.clear()
        for j in ahead:
            early.setdefault(j % n, pool.submit(self.fetch, j % n))
        try:
            return [self._sample(i, f) for i, f in zip(indices, futures, strict=True)]
        finally:
            for f in futures:
                f.cancel()


class CocoStore:
    """Iterate raw samples of a COCO set in a store: (image RGB uint8, label uint8 of trainIds, class presence).

    Also the display helpers: colorize(label), merge(image, label).
    """

    def __init__(self, s3=None, dataset_desc: str = layout.coco_instances("coco", "val2017"),
                 image_paths: str = layout.coco_images("coco", "val2017"), class_dictionary="coco", bucket: str | None = None,
                 crowd: str = "class"):
        self.ds = CocoDataset(s3=s3, bucket=bucket, dataset_desc=dataset_desc, image_paths=image_paths,
                              class_dictionary=class_dictionary, enable_transform=False, crowd=crowd, seed=0)
        self.classes = self.ds.classes

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        img, label = self.ds.raw(i)
        return img, label, presence(label, self.classes.classes)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def colorize(self, label: np.ndarray) -> np.ndarray:
        return self.classes.colorize(label)

    def merge(self, image: np.ndarray, label: np.ndarray, alpha: float = 0.5) -> np.ndarray:
        return self.classes.overlay(image, label, alpha)
