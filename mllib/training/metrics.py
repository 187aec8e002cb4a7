"""Segmentation metrics: a confusion matrix that skips ignored pixels, per-class IoU and mIoU."""

from __future__ import annotations

import numpy as np


class ConfusionMatrix:
    """Accumulates (ground truth, prediction) pixel counts; pixels whose truth is `ignore` are skipped."""

    def __init__(self, classes: int, ignore: int = 255):
        self.classes = classes
        self.ignore = ignore
        self.matrix = np.zeros((classes, classes), dtype=np.int64)

    def update(self, truth, pred) -> None:
        t = np.asarray(truth).ravel().astype(np.int64)
        p = np.asarray(pred).ravel().astype(np.int64)
        keep = (t != self.ignore) & (t >= 0) & (t < self.classes)
        t, p = t[keep], np.clip(p[keep], 0, self.classes - 1)
        self.matrix += np.bincount(t * self.classes + p, minlength=self.classes**2).reshape(self.classes, self.classes)

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for a class that is neither in the truth nor predicted."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    def miou(self) -> float:
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")

    def report(self, names: list[str] | None = None) -> dict:
        iou = self.iou()
        names = names or [str(i) for i in range(self.classes)]
        return {
            "iou": {names[i]: (None if np.isnan(v) else round(float(v), 6)) for i, v in enumerate(iou)},
            "miou": None if np.isnan(self.miou()) else round(self.miou(), 6),
            "pixel_accuracy": None if np.isnan(self.accuracy()) else round(self.accuracy(), 6),
            "pixels": int(self.matrix.sum()),
        }
