"""CocoDataset: the seed's name and signature for a SegmentationDataset over COCO annotations in the store.

    from mllib import store
    s3 = store.connect("s3://coco")
    ds = CocoDataset(s3=s3, dataset_desc="datasets/coco/annotations/instances_train2017.json",
                     image_paths="datasets/coco/train2017", class_dictionary="coco", height=512, width=512)
    image, label, mean, stdev = ds[0]      # float32 3x512x512 (RGB, normalized), int64 512x512, per-channel stats
    loader = ds.loader(batch_size=8, num_workers=4)     # read-ahead, SlotCollate, worker init (or any DataLoader)

or `CocoDataset.from_store("s3://coco", split="val2017", height=512, width=512)` for the layout getcoco.py writes.
Labels come from mllib.labels.render (the renderer cocorecord uses), over the cached index (labels.cocoindex),
whose flat numpy arrays DataLoader workers share without copy-on-read growth. Everything else (augmentation,
output forms, read-ahead, skip_bad, set_epoch) is SegmentationDataset's (mllib.loaders.segdataset).
"""

from __future__ import annotations

import cv2
import numpy as np

from mllib import layout
from mllib.augment import Augment
from mllib.labels import classes
from mllib.labels.render import presence
from mllib.loaders.segdataset import (
    SampleError,
    SegmentationDataset,
    _open_store,
    keep_freed_memory,
    output_spec,
    to_output,
    worker_init_fn,
)
from mllib.sources import Spec
from mllib.sources.coco import CocoSource
from mllib.store import default_url

# output_spec and to_output stay importable from here, as before (defined in segdataset)
__all__ = ["CocoDataset", "CocoStore", "SampleError", "keep_freed_memory", "output_spec", "to_output", "worker_init_fn"]


class CocoDataset(SegmentationDataset):
    """COCO images + rendered labels from the store, augmented, as (image, label, mean, std) tensors: the seed's
    constructor over SegmentationDataset (keys taken as given, not below datasets/<dataset>/)."""

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
        store = _open_store(s3 if s3 is not None else default_url(), bucket)
        self.dataset_desc = dataset_desc
        self.image_paths = image_paths.strip("/")
        self.name_decoration = name_decoration
        spec = Spec(type="coco", dataset="", jsonpath=dataset_desc, imagepath=self.image_paths, stuffpath=stuff_desc,
                    name_decoration=name_decoration)
        source = CocoSource(store, spec, classes.load(class_dictionary), crowd=crowd)
        super().__init__(store, source, height, width, imflags=imflags, astype=astype,
                         enable_transform=enable_transform, flipX=flipX, flipY=flipY, rotate=rotate,
                         scale_min=scale_min, scale_max=scale_max, offset=offset, normalize=normalize, resize=resize,
                         crowd=crowd, skip_bad=skip_bad, seed=seed, image_transform=image_transform,
                         label_transform=label_transform, label_dtype=label_dtype, fetch_threads=fetch_threads,
                         augment=augment)

    index = property(lambda self: self.source.index)
    stuff = property(lambda self: self.source.stuff)
    renderer = property(lambda self: self.source.renderer)

    @classmethod
    def from_store(cls, url, split: str = "train2017", classes="coco", dataset: str = "coco", stuff: bool = False,
                   **kw) -> CocoDataset:
        """The layout getcoco.py writes: datasets/<dataset>/annotations/instances_<split>.json + <split>/*.jpg."""
        return cls(s3=url, dataset_desc=layout.coco_instances(dataset, split), image_paths=layout.coco_images(dataset, split),
                   class_dictionary=classes, stuff_desc=layout.coco_stuff(dataset, split) if stuff else None, **kw)


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
