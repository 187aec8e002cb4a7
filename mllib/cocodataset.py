"""CocoDataset: a PyTorch Dataset that reads COCO images and annotations straight from the object store.

    from mllib import store
    s3 = store.connect("s3://coco")
    ds = CocoDataset(s3=s3, dataset_desc="datasets/coco/annotations/instances_train2017.json",
                     image_paths="datasets/coco/train2017", class_dictionary="coco", height=512, width=512)
    image, label, mean, stdev = ds[0]      # float32 3x512x512 (RGB, normalized), int64 512x512, per-channel stats
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=4, shuffle=True)

or `CocoDataset.from_store("s3://coco", split="val2017", height=512, width=512)` for the layout getcoco.py writes.

- Labels come from mllib.labels (the renderer cocorecord uses), over the cached compact index (mllib.cocoindex),
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

import logging
import math
import os

import cv2
import numpy as np
import torch

from mllib import MllibError, classes, images
from mllib import store as mstore
from mllib.cocoindex import CocoIndex
from mllib.labels import LabelError, Renderer, presence

log = logging.getLogger(__name__)


class SampleError(MllibError):
    pass


_malloc_tuned_pid = None


def _keep_freed_memory() -> None:
    """Each sample allocates a few MB of fresh arrays (float image, int64 label). glibc hands freed blocks of that
    size back to the kernel and the next sample page-faults them in again (measured: ~1,800 faults and ~5 ms of
    system time per 512x512 sample). Keep them in the heap instead: once per process, Linux/glibc only."""
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


def _open_store(s3, bucket):
    s = s3 if isinstance(s3, mstore.Store) else mstore.connect(s3)
    if bucket:
        if isinstance(s, mstore.S3Store):
            if bucket != s.bucket:
                s = mstore.S3Store(f"s3://{bucket}" + (f"/{s.prefix}" if s.prefix else ""),
                                   endpoint_url=s.endpoint_url, verify=s.verify)
        else:  # a local store: the bucket is a folder below its root
            s = mstore.LocalStore(s.root / bucket)
    return s


def affine(src_hw, out_hw, *, scale=1.0, angle=0.0, flip_x=False, flip_y=False, shift=(0.0, 0.0)) -> np.ndarray:
    """2x3 matrix mapping source pixels to output pixels: flip, scale and rotate about the source center, then put
    that center at the output center + shift (x, y)."""
    h, w = src_hw
    oh, ow = out_hw
    to_origin = np.array([[1, 0, -(w - 1) / 2], [0, 1, -(h - 1) / 2], [0, 0, 1]], np.float64)
    flip = np.diag([-1.0 if flip_x else 1.0, -1.0 if flip_y else 1.0, 1.0])
    a = math.radians(angle)
    rot = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]]) * [[scale], [scale], [1]]
    back = np.array([[1, 0, (ow - 1) / 2 + shift[0]], [0, 1, (oh - 1) / 2 + shift[1]], [0, 0, 1]], np.float64)
    return (back @ rot @ flip @ to_origin)[:2]


class CocoDataset(torch.utils.data.Dataset):
    def __init__(
        self,
        s3=None,
        bucket: str | None = None,
        dataset_desc: str = "datasets/coco/annotations/instances_train2017.json",
        image_paths: str = "datasets/coco/train2017",
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
    ):
        self.store = _open_store(s3 if s3 is not None else mstore.default_url(), bucket)
        self.dataset_desc = dataset_desc
        self.image_paths = image_paths.strip("/")
        self.name_decoration = name_decoration
        self.classes = classes.load(class_dictionary)
        self.height, self.width = int(height), int(width)
        self.imflags = imflags
        self.astype = np.dtype(astype)
        self.enable_transform = enable_transform
        self.flipX, self.flipY = flipX, flipY
        self.rotate, self.scale_min, self.scale_max, self.offset = rotate, scale_min, scale_max, offset
        if scale_min <= 0 or scale_max < scale_min:
            raise MllibError(f"need 0 < scale_min <= scale_max, got {scale_min}, {scale_max}")
        if isinstance(normalize, str):
            if normalize not in ("image", "none"):
                raise MllibError("normalize must be 'image', 'none' or (mean, std) per channel")
            self.fixed = None
        else:
            mean, std = normalize
            self.fixed = (np.asarray(mean, np.float64), np.asarray(std, np.float64))
        self.normalize = normalize if isinstance(normalize, str) else "fixed"
        if resize not in ("crop", "fit"):
            raise MllibError("resize must be 'crop' (center crop/pad) or 'fit' (resize keeping aspect, then pad)")
        self.resize = resize
        self.skip_bad = skip_bad
        self.index = CocoIndex.load(self.store, dataset_desc)
        self.stuff = CocoIndex.load(self.store, stuff_desc) if stuff_desc else None
        self.renderer = Renderer(self.classes, crowd)
        self.seed = int(torch.randint(0, 2**62, (1,)).item()) if seed is None else int(seed)
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._bad = torch.zeros(1, dtype=torch.int64).share_memory_()

    @classmethod
    def from_store(cls, url, split: str = "train2017", classes="coco", dataset: str = "coco", stuff: bool = False,
                   **kw) -> CocoDataset:
        """The layout getcoco.py writes: datasets/<dataset>/annotations/instances_<split>.json + <split>/*.jpg."""
        base = f"datasets/{dataset}"
        return cls(s3=url, dataset_desc=f"{base}/annotations/instances_{split}.json", image_paths=f"{base}/{split}",
                   class_dictionary=classes, stuff_desc=f"{base}/annotations/stuff_{split}.json" if stuff else None,
                   **kw)

    def __len__(self) -> int:
        return self.index.images

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = int(epoch)

    def bad_count(self) -> int:
        return int(self._bad[0])

    # -- raw samples ------------------------------------------------------------------------------------------
    def image_key(self, i: int) -> str:
        return f"{self.image_paths}/{self.name_decoration}{self.index.file_name(i)}"

    def raw(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(image as decoded with imflags: RGB HxWx3 or gray HxW, label uint8 HxW) at full resolution."""
        key = self.image_key(i)
        try:
            data = self.store.get_bytes(key)
        except mstore.NotFound:
            raise SampleError(f"image {self.store.url_for(key)} is missing from the store") from None
        try:
            images.info(data)
            img = images.decode(data, self.imflags)
        except images.ImageError as e:
            raise SampleError(f"image {self.store.url_for(key)} is corrupt: {e}") from None
        h, w = self.index.size(i)
        if img.shape[:2] != (h, w):
            raise SampleError(f"image {self.store.url_for(key)} is {img.shape[0]}x{img.shape[1]}, "
                              f"the annotation file says {h}x{w}")
        srow = self.stuff.row_of(int(self.index.image_id[i])) if self.stuff is not None else None
        try:
            label = self.renderer.render(self.index, i, self.stuff, srow)
        except LabelError as e:
            raise SampleError(str(e)) from None
        return img, label

    # -- augmentation -----------------------------------------------------------------------------------------
    def matrix(self, i: int, hw: tuple[int, int]) -> np.ndarray:
        h, w = hw
        out = (self.height, self.width)
        if not self.enable_transform:
            s = min(self.height / h, self.width / w) if self.resize == "fit" else 1.0
            return affine(hw, out, scale=s)
        rng = np.random.default_rng([self.seed, int(self._epoch[0]), i])
        fx = bool(self.flipX and rng.random() < 0.5)
        fy = bool(self.flipY and rng.random() < 0.5)
        angle = float(rng.uniform(-self.rotate, self.rotate)) if self.rotate else 0.0
        s = float(rng.uniform(self.scale_min, self.scale_max))
        # extent of the scaled, rotated image; a random crop inside it where it is larger than the output
        a = math.radians(angle)
        ew = s * (abs(w * math.cos(a)) + abs(h * math.sin(a)))
        eh = s * (abs(w * math.sin(a)) + abs(h * math.cos(a)))
        sx = rng.uniform(-1, 1) * max(0.0, (ew - self.width) / 2) + rng.uniform(-1, 1) * self.offset * self.width
        sy = rng.uniform(-1, 1) * max(0.0, (eh - self.height) / 2) + rng.uniform(-1, 1) * self.offset * self.height
        return affine(hw, out, scale=s, angle=angle, flip_x=fx, flip_y=fy, shift=(sx, sy))

    def transform(self, i: int, img: np.ndarray, label: np.ndarray):
        m = self.matrix(i, label.shape)
        if self.fixed is not None:
            mean, std = self.fixed
        elif self.normalize == "image":
            mu, sd = cv2.meanStdDev(img)
            mean, std = mu.ravel(), np.maximum(sd.ravel(), 1e-6)
        else:
            mean, std = np.zeros(1 if img.ndim == 2 else 3), np.ones(1 if img.ndim == 2 else 3)
        border = tuple(float(v) for v in mean) if self.normalize != "none" else 0
        size = (self.width, self.height)
        out = cv2.warpAffine(img, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=border)
        lab = cv2.warpAffine(label, m, size, flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=self.classes.ignore)
        planes = cv2.split(out) if out.ndim == 3 else [out]  # contiguous channel planes, in RGB order
        c = len(planes)
        scale = 1.0 / np.asarray(std, np.float64)[:c]
        shift = -np.asarray(mean, np.float64)[:c] * scale
        chw = np.empty((c, self.height, self.width), self.astype)
        for k, plane in enumerate(planes):  # (x - mean) / std, written straight into the C x H x W output
            np.multiply(plane, self.astype.type(scale[k]), out=chw[k], casting="unsafe")
            chw[k] += self.astype.type(shift[k])
        return chw, lab, np.asarray(mean, np.float32)[:c], np.asarray(std, np.float32)[:c]

    def __getitem__(self, i: int):
        _keep_freed_memory()
        i = int(i)
        n = len(self)
        for attempt in range(min(n, 100)):
            j = (i + attempt) % n
            try:
                img, label = self.raw(j)
                break
            except SampleError as e:
                if not self.skip_bad:
                    raise
                self._bad[0] += 1
                log.warning("skipping bad sample %d: %s", j, e)
        else:
            raise SampleError(f"no good sample found from index {i} on (skip_bad gave up after 100 tries)")
        chw, lab, mean, std = self.transform(i, img, label)
        return (torch.from_numpy(chw), torch.from_numpy(lab.astype(np.int64)), torch.from_numpy(mean),
                torch.from_numpy(std))


class CocoStore:
    """Iterate raw samples of a COCO set in a store: (image RGB uint8, label uint8 of trainIds, class presence).

    Also the display helpers: colorize(label), merge(image, label).
    """

    def __init__(self, s3=None, dataset_desc: str = "datasets/coco/annotations/instances_val2017.json",
                 image_paths: str = "datasets/coco/val2017", class_dictionary="coco", bucket: str | None = None,
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
