"""Reading a TFRecord training set from either store: a tf.data pipeline and a PyTorch IterableDataset.

    desc = records.description(store, "coco")
    ds = records.tf_dataset(store, "coco", "train")          # (image uint8 HxWx3, label uint8 HxW)
    torch_ds = records.TorchRecords(store, "coco", "train")    # split across DataLoader workers and ranks
"""

from __future__ import annotations

import json

import numpy as np

from mllib import MllibError, images, tfrecord
from mllib.store import LocalStore, NotFound, Store
from mllib.trainingset import PREFIX


def description(store: Store, name: str) -> dict:
    key = f"{PREFIX}/{name}/description.json"
    try:
        return json.loads(store.get_bytes(key))
    except NotFound:
        raise MllibError(
            f"training set {store.url_for(f'{PREFIX}/{name}')} not found (no description.json): "
            f"run datasets/cocorecord.py -trainingset_name {name}"
        ) from None


def shard_keys(store: Store, name: str, set_name: str) -> list[str]:
    desc = description(store, name)
    if set_name not in desc["sets"]:
        raise MllibError(f"training set {name} has no set {set_name!r}; it has {sorted(desc['sets'])}")
    return [f"{PREFIX}/{name}/{s['name']}" for s in desc["sets"][set_name]["shards"]]


def iter_serialized(store: Store, keys: list[str]):
    for key in keys:
        with store.open(key) as f:
            yield from tfrecord.read_records(f, name=key)


def parse(record: bytes) -> dict:
    """A record as numpy: image (RGB uint8 HxWx3), label (uint8 HxW), classes, filename, source_id."""
    ex = tfrecord.decode_example(record)
    image = images.decode(ex["image/encoded"][0])
    label = images.decode(ex["label/encoded"][0], flags=images.cv2.IMREAD_UNCHANGED)
    return {"image": image, "label": label, "classes": np.array(ex["label/classes"], np.float32),
            "filename": ex["image/filename"][0].decode(), "source_id": ex["image/source_id"][0].decode()}


# -- TensorFlow ------------------------------------------------------------------------------------------------

def _features():
    import tensorflow as tf

    return {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/height": tf.io.FixedLenFeature([], tf.int64),
        "image/width": tf.io.FixedLenFeature([], tf.int64),
        "label/encoded": tf.io.FixedLenFeature([], tf.string),
        "label/classes": tf.io.VarLenFeature(tf.float32),
    }


def tf_parse(serialized):
    import tensorflow as tf

    ex = tf.io.parse_single_example(serialized, _features())
    image = tf.io.decode_image(ex["image/encoded"], channels=3, expand_animations=False)
    label = tf.io.decode_png(ex["label/encoded"], channels=1)[..., 0]
    h, w = tf.cast(ex["image/height"], tf.int32), tf.cast(ex["image/width"], tf.int32)
    image = tf.reshape(image, tf.stack([h, w, 3]))
    label = tf.reshape(label, tf.stack([h, w]))
    return image, label


def tf_dataset(store: Store, name: str, set_name: str, parse_records: bool = True):
    """tf.data over the shards of one set: (image uint8 HxWx3, label uint8 HxW) when parse_records."""
    import tensorflow as tf

    keys = shard_keys(store, name, set_name)
    if isinstance(store, LocalStore):
        ds = tf.data.TFRecordDataset([store.url_for(k) for k in keys], num_parallel_reads=min(4, len(keys)))
    else:  # S3 through the store (TensorFlow has no S3 filesystem without tensorflow-io)
        ds = tf.data.Dataset.from_generator(lambda: iter_serialized(store, keys),
                                            output_signature=tf.TensorSpec([], tf.string))
    if parse_records:
        ds = ds.map(tf_parse, num_parallel_calls=tf.data.AUTOTUNE)
    return ds


# -- PyTorch ---------------------------------------------------------------------------------------------------
def _torch_iterable():
    import torch

    return torch.utils.data.IterableDataset


class TorchRecords(_torch_iterable()):
    """Records of one set for torch DataLoader: shards split across distributed ranks and DataLoader workers.

    Yields (image uint8 tensor HxWx3, label int64 tensor HxW). With `transform`, yields transform(image, label)
    on numpy arrays instead.
    """

    def __init__(self, store: Store, name: str, set_name: str, transform=None, rank: int | None = None,
                 world_size: int | None = None):
        self.store = store
        self.keys = shard_keys(store, name, set_name)
        self.transform = transform
        self.rank, self.world_size = rank, world_size

    def _my_keys(self) -> list[str]:
        import torch

        rank, world = self.rank, self.world_size
        if rank is None:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
            else:
                rank, world = 0, 1
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        part, parts = rank * nw + wid, world * nw
        return self.keys[part::parts]

    def __iter__(self):
        import torch

        for rec in iter_serialized(self.store, self._my_keys()):
            r = parse(rec)
            if self.transform is not None:
                yield self.transform(r["image"], r["label"])
            else:
                yield torch.from_numpy(r["image"]), torch.from_numpy(r["label"].astype(np.int64))
