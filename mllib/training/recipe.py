"""The training recipe beyond the loop: class weights for the loss, photometric augmentation on the GPU batch.

Class weights (--class_weights inverse | median, formulas in mllib.sources.check) come from the training set's
pixel counts: a records set's description, checkdataset.py's report (--class_stats), or else one pass over the
training labels (the items the run trains on, read with the checker's threads).

Colour jitter (--color_jitter B,C,S,H) runs on the device, on the float batch before normalization, per sample:
brightness x b, contrast about the image's mean grey by c, saturation about each pixel's grey by s (b, c, s drawn
from [1 - B, 1 + B] ...), and a hue rotation by h turns (h from [-H, H]) in YIQ space; values clamped to 0..255
after each. The factors are drawn from (seed, epoch, the sample's index), like the geometric warp, so a sample
gets the same jitter whatever batch, worker or rank it lands in, and --resume stays exact.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import torch

from mllib import MllibError
from mllib.loaders.gpu import BatchPrep

log = logging.getLogger(__name__)

_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64)
_YIQ_INV = torch.linalg.inv(_YIQ)
_GREY = (0.299, 0.587, 0.114)


def jitter_factors(strength, seed: int, epoch: int, indices) -> np.ndarray:
    """N x 4 (brightness, contrast, saturation, hue) factors for the samples `indices` of `epoch`."""
    b, c, s, h = strength
    out = np.empty((len(indices), 4), np.float64)
    for k, i in enumerate(indices):
        rng = np.random.default_rng([int(seed), int(epoch), int(i), 0xC0102])
        out[k] = (rng.uniform(1 - b, 1 + b), rng.uniform(1 - c, 1 + c), rng.uniform(1 - s, 1 + s), rng.uniform(-h, h))
    return out


def color_jitter(x: torch.Tensor, factors: np.ndarray) -> torch.Tensor:
    """x: float N x C x H x W on 0..255 (C 1 or 3); factors: N x 4 from jitter_factors. A new tensor."""
    f = torch.as_tensor(factors, dtype=torch.float32, device=x.device)
    n = x.shape[0]
    view = (n, 1, 1, 1)
    x = (x * f[:, 0].view(view)).clamp_(0, 255)
    grey = x[:, :1] if x.shape[1] == 1 else \
        (x[:, 0:1] * _GREY[0] + x[:, 1:2] * _GREY[1] + x[:, 2:3] * _GREY[2])
    mean = grey.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * f[:, 1].view(view) + mean).clamp_(0, 255)
    if x.shape[1] != 3:
        return x
    grey = x[:, 0:1] * _GREY[0] + x[:, 1:2] * _GREY[1] + x[:, 2:3] * _GREY[2]
    x = ((x - grey) * f[:, 2].view(view) + grey).clamp_(0, 255)
    theta = torch.as_tensor(factors[:, 3] * 2 * np.pi, dtype=torch.float64)
    cos, sin = torch.cos(theta), torch.sin(theta)
    rot = torch.zeros((n, 3, 3), dtype=torch.float64)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    m = (_YIQ_INV @ rot @ _YIQ).to(torch.float32).to(x.device)  # N x 3 x 3, RGB -> RGB
    return torch.einsum("nij,njhw->nihw", m, x).clamp_(0, 255)


class JitterPrep(BatchPrep):
    """BatchPrep that jitters the colours of each sample before normalizing; the samples' indices are the last
    field of each batch (datasets with emit_index = True). set_epoch(e) before each epoch."""

    def __init__(self, device, normalize, strength, seed: int, **kw):
        super().__init__(device, normalize, **kw)
        self.strength, self.seed, self.epoch = strength, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __call__(self, batch):
        factors = jitter_factors(self.strength, self.seed, self.epoch, batch[-1].tolist())
        x = batch[0].to(self.device, non_blocking=True)
        x = x.unsqueeze(1) if x.dim() == 3 else x
        x = color_jitter(x.to(torch.float32), factors)
        return self.images(x), self.labels(batch[1])


# -- class weights --------------------------------------------------------------------------------------------------
def class_weights(cfg, store, train_ds, class_dict) -> torch.Tensor | None:
    """The loss's per-class weights as --class_weights asks (None for "none")."""
    from mllib.sources.check import class_weights as formulas

    kind = cfg.class_weights
    if kind == "none":
        return None
    c = class_dict.classes
    if cfg.class_stats:
        try:
            with open(cfg.class_stats) as f:
                report = json.load(f)
            w = report["class_weights"][kind]
            names = report.get("class_names")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise MllibError(f"--class_stats {cfg.class_stats}: not a checkdataset.py report with class weights "
                             f"({type(e).__name__}: {e})") from None
        if len(w) != c or (names is not None and list(names) != list(class_dict.names)):
            raise MllibError(f"--class_stats {cfg.class_stats} is for other classes ({names}); this run trains "
                             f"{class_dict.names}")
        how = cfg.class_stats
        weights = np.asarray(w, np.float64)
    elif cfg.records:
        pixels = np.zeros(c, np.int64)
        for t, n in train_ds.description["sets"]["train"].get("pixels", {}).items():
            if int(t) < c:
                pixels[int(t)] = int(n)
        inverse, median = formulas(pixels)
        weights, how = (inverse if kind == "inverse" else median), f"records {cfg.records} description"
    else:
        weights, how = _scan(train_ds, kind), "a pass over the training labels"
    if not np.isfinite(weights).all() or (weights < 0).any() or not (weights > 0).any():
        raise MllibError(f"--class_weights {kind}: no usable weights from {how} (no labelled pixels?)")
    log.info("class weights (%s, from %s): %s", kind, how,
             ", ".join(f"{n} {w:.3g}" for n, w in zip(class_dict.names, weights, strict=True)))
    return torch.tensor(weights, dtype=torch.float32)


def _scan(train_ds, kind: str) -> np.ndarray:
    """Per-class pixel counts of the training items (their labels read once, 16 at a time), then the weights."""
    from mllib.sources.check import check_rows
    from mllib.sources.check import class_weights as formulas
    from mllib.training.data import base_dataset

    base = base_dataset(train_ds)
    rows = list(train_ds.indices) if isinstance(train_ds, torch.utils.data.Subset) else list(range(len(base)))
    sums = check_rows(rows, 16, base.source, sizes=False)
    bad = [p for p in sums.problems if p["kind"] in ("unmapped", "unreadable", "missing_label")]
    if bad and not getattr(base, "skip_bad", False):
        raise MllibError(f"--class_weights: {len(bad)} training labels cannot be counted (first: "
                         f"{bad[0]['message']}); run checkdataset.py")
    c = base.classes.classes
    inverse, median = formulas(sums.pixels[:c], sums.image_pixels[:c])
    return inverse if kind == "inverse" else median
