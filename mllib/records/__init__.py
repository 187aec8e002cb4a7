"""Stage 4, records: the sharded TFRecord training set, written and read.

    schema.py    the feature names and types of a record (one place, for writers and readers)
    tfrecord.py  TFRecord framing and tf.train.Example encoding without TensorFlow
    convert.py   COCO / Cityscapes in the store -> trainingsets/NAME shards (datasets/cocorecord.py)
    read.py      reading a set: tf.data, a PyTorch IterableDataset, RecordsDataset for training

Reading never imports the converter: `from mllib import records` gives the reading API below.
"""

from mllib.records.read import (
    RecordsDataset,
    TorchRecords,
    description,
    iter_serialized,
    parse,
    set_shards,
    shard_keys,
    tf_dataset,
    tf_parse,
)

__all__ = ["RecordsDataset", "TorchRecords", "description", "iter_serialized", "parse", "set_shards", "shard_keys",
           "tf_dataset", "tf_parse"]
