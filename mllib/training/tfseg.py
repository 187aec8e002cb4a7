"""Training and testing a Keras UNet on a TFRecord training set (the logic behind segment/train.py and test.py).

The input pipeline is tf.data over the shards (mllib.records): decode, random crop/pad + flip for training or
center crop/pad for testing, ignore pixels (255) kept out of the loss and the metrics.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from mllib import MllibError, UsageError, layout, tflib
from mllib.labels import classes
from mllib.records import read as records
from mllib.store import NotFound, Store
from mllib.training.metrics import ConfusionMatrix

log = logging.getLogger(__name__)


def model_prefix(name: str) -> str:
    return layout.model(name)


def unet(n_classes: int, height: int, width: int, base: int = 16, depth: int = 4):
    keras = tflib.keras()
    from keras import layers

    def block(x, ch):
        for _ in range(2):
            x = layers.Conv2D(ch, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.ReLU()(x)
        return x

    inp = keras.Input((height, width, 3))
    x, skips = inp, []
    for d in range(depth):
        x = block(x, base * 2**d)
        skips.append(x)
        x = layers.MaxPooling2D()(x)
    x = block(x, base * 2**depth)
    for d in reversed(range(depth)):
        x = layers.UpSampling2D(interpolation="bilinear")(x)
        x = layers.Concatenate()([x, skips[d]])
        x = block(x, base * 2**d)
    out = layers.Conv2D(n_classes, 1)(x)
    return keras.Model(inp, out, name="unet")


def masked_loss(ignore: int = 255):
    tf = tflib.tensorflow()

    def loss(y_true, logits):
        y = tf.cast(y_true, tf.int32)
        mask = tf.not_equal(y, ignore)
        y = tf.where(mask, y, 0)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
        m = tf.cast(mask, ce.dtype)
        return tf.reduce_sum(ce * m) / tf.maximum(tf.reduce_sum(m), 1.0)

    return loss


def _crop(image, label, height: int, width: int, train: bool, ignore: int):
    """Random (train) or center crop/pad of image and label together; padding is ignore in the label."""
    tf = tflib.tensorflow()

    img = tf.cast(image, tf.float32) / 127.5 - 1.0
    lab = tf.cast(label, tf.float32)[..., None] + 1.0  # 0 marks padding
    both = tf.concat([img, lab], axis=-1)
    h, w = tf.shape(both)[0], tf.shape(both)[1]
    if train:
        both = tf.image.pad_to_bounding_box(both, 0, 0, tf.maximum(h, height), tf.maximum(w, width))
        both = tf.image.random_crop(both, [height, width, 4])
        both = tf.image.random_flip_left_right(both)
    else:
        both = tf.image.resize_with_crop_or_pad(both, height, width)
    lab = tf.cast(both[..., 3], tf.int32) - 1
    lab = tf.where(lab < 0, ignore, lab)
    return both[..., :3], lab


def dataset(store: Store, name: str, set_name: str, height: int, width: int, batch: int, train: bool,
            ignore: int = 255, seed: int = 0):
    tf = tflib.tensorflow()

    ds = records.tf_dataset(store, name, set_name)
    if train:
        ds = ds.shuffle(256, seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(lambda im, lab: _crop(im, lab, height, width, train, ignore), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch, drop_remainder=False).prefetch(tf.data.AUTOTUNE)


def train(store: Store, name: str, model_name: str, *, epochs: int = 1, batch_size: int = 8, height: int = 256,
          width: int = 256, learning_rate: float = 1e-3, max_steps: int = 0, base: int = 16, seed: int = 0,
          set_name: str = "train", verbose: int = 1) -> dict:
    keras = tflib.keras()
    tf = tflib.tensorflow()

    tf.keras.utils.set_random_seed(seed)
    desc = records.description(store, name)
    d = classes.load(desc["classes"])
    ds = dataset(store, name, set_name, height, width, batch_size, True, d.ignore, seed)
    model = unet(d.classes, height, width, base)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=masked_loss(d.ignore))
    t0 = time.perf_counter()
    if max_steps:
        hist = model.fit(ds.repeat(), epochs=1, steps_per_epoch=max_steps, verbose=verbose)
    else:
        hist = model.fit(ds, epochs=epochs, verbose=verbose)
    seconds = time.perf_counter() - t0
    info = {"trainingset": name, "set": set_name, "classes": d.to_dict(), "class_names": d.names,
            "height": height, "width": width, "epochs": epochs, "max_steps": max_steps, "batch_size": batch_size,
            "learning_rate": learning_rate, "seconds": round(seconds, 2),
            "loss": [float(v) for v in hist.history.get("loss", [])],
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / layout.KERAS_MODEL
        model.save(path)
        store.put_file(layout.keras_model(model_name), path)
    store.put_bytes(layout.keras_training(model_name), json.dumps(info, indent=1).encode())
    return info


def whole_image_model(model):
    """The same UNet (same weights) taking any height and width: the trained model's input size is fixed."""
    from keras import layers

    convs = [ly for ly in model.layers if isinstance(ly, layers.Conv2D)]
    depth = sum(isinstance(ly, layers.MaxPooling2D) for ly in model.layers)
    n_classes = convs[-1].filters
    free = unet(n_classes, None, None, convs[0].filters, depth)
    free.set_weights(model.get_weights())
    return free, depth


def test(store: Store, name: str, model_name: str, *, set_name: str = "val", batch_size: int = 8,
         max_images: int = 0, mode: str = "whole") -> dict:
    """Per-class IoU and mIoU as mllib.training.metrics defines them (one confusion matrix over the set), each
    image whole at its own size (mode "whole", padded to a multiple of 2^depth and cropped back) or center
    cropped to the training size (mode "center", the old test). The result goes to
    models/<model>/eval/<trainingset>-<set>.json in the store (one file per model and set)."""
    keras = tflib.keras()
    tf = tflib.tensorflow()

    try:
        info = json.loads(store.get_bytes(layout.keras_training(model_name)))
        data = store.get_bytes(layout.keras_model(model_name))
    except NotFound:
        raise MllibError(f"model {store.url_for(model_prefix(model_name))} not found: train it with segment/train.py "
                         f"-savedmodelname {model_name}") from None
    if mode not in ("whole", "center"):
        raise UsageError(f"--mode must be whole or center (got {mode!r})")
    desc = records.description(store, name)
    d = classes.load(desc["classes"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / layout.KERAS_MODEL
        path.write_bytes(data)
        model = keras.models.load_model(path, compile=False)
    cm = ConfusionMatrix(d.classes, d.ignore)
    n = 0
    t0 = time.perf_counter()
    if mode == "center":
        ds = dataset(store, name, set_name, info["height"], info["width"], batch_size, False, d.ignore)
        for images, labels in ds:
            pred = np.argmax(model.predict_on_batch(images), axis=-1)
            cm.update(labels.numpy(), pred)
            n += len(pred)
            if max_images and n >= max_images:
                break
    else:
        free, depth = whole_image_model(model)
        m = 2**depth
        for image, label in records.tf_dataset(store, name, set_name):
            h, w = int(image.shape[0]), int(image.shape[1])
            x = tf.cast(image, tf.float32)[None] / 127.5 - 1.0
            x = tf.pad(x, [[0, 0], [0, (-h) % m], [0, (-w) % m], [0, 0]])
            pred = np.argmax(free.predict_on_batch(x)[0, :h, :w], axis=-1)
            cm.update(label.numpy(), pred)
            n += 1
            if max_images and n >= max_images:
                break
    seconds = time.perf_counter() - t0
    result = {"trainingset": name, "set": set_name, "model": model_name, "mode": mode, "images": n,
              "seconds": round(seconds, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "classes": d.names, "ignore": d.ignore, **cm.report(d.names, matrix=True)}
    store.put_bytes(layout.model_eval(model_name, f"{name}-{set_name}"), json.dumps(result, indent=1).encode())
    result["_cm"] = cm
    return result
