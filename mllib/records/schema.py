"""The record schema of a training set: feature names and types, in one place for writers and readers.

The seed's names (image/encoded, image/height, ... label/classes) plus image/filename and image/source_id.
`example()` builds a record's features (the converter, benchmarks); `tf_features()` gives tf.io's parsing spec.
"""

from __future__ import annotations

from mllib import tflib

IMAGE = "image/encoded"
HEIGHT = "image/height"
WIDTH = "image/width"
DEPTH = "image/depth"
FORMAT = "image/format"
FILENAME = "image/filename"
SOURCE_ID = "image/source_id"
LABEL = "label/encoded"
LABEL_FORMAT = "label/format"
CLASSES = "label/classes"

# name -> (kind, what it holds), as description.json documents the set
FEATURES = {
    IMAGE: ("bytes", "RGB image, JPEG or PNG"),
    HEIGHT: ("int", "image height"),
    WIDTH: ("int", "image width"),
    DEPTH: ("int", "channels (3)"),
    FORMAT: ("bytes", "jpeg or png"),
    FILENAME: ("bytes", "source file name"),
    SOURCE_ID: ("bytes", "image id in its annotation file, or the Cityscapes frame"),
    LABEL: ("bytes", "PNG, uint8 trainIds, 255 = ignore"),
    LABEL_FORMAT: ("bytes", "png"),
    CLASSES: ("floats", "1.0 where that trainId occurs in the label"),
}


def example(*, image: bytes, fmt: str, height: int, width: int, label_png: bytes, classes: list[float],
            filename: str, source_id: str) -> dict:
    return {HEIGHT: height, WIDTH: width, DEPTH: 3, IMAGE: image, FORMAT: fmt, FILENAME: filename,
            SOURCE_ID: source_id, LABEL: label_png, LABEL_FORMAT: "png", CLASSES: classes}


def tf_features(names=(IMAGE, HEIGHT, WIDTH, LABEL, CLASSES)) -> dict:
    """tf.io.parse_single_example's spec for these features."""
    tf = tflib.tensorflow()

    kinds = {"bytes": tf.io.FixedLenFeature([], tf.string), "int": tf.io.FixedLenFeature([], tf.int64)}
    return {n: kinds[FEATURES[n][0]] if FEATURES[n][0] in kinds else tf.io.VarLenFeature(tf.float32) for n in names}
