"""Segmentation metrics as mmsegmentation and detectron2 compute them: one confusion matrix accumulated over the
whole dataset (pixels whose truth is the ignore value skipped), then

    IoU_c  = TP_c / (TP_c + FP_c + FN_c)        NaN for a class neither in the labels nor predicted
    mIoU   = mean of IoU_c over the classes that are in the labels or the predictions
    Acc_c  = TP_c / (TP_c + FN_c)               per-class accuracy (recall); NaN for a class not in the labels
    mAcc   = mean of Acc_c over the classes in the labels
    aAcc   = sum TP / labelled pixels            pixel accuracy

Counts are integers (int64): the totals of several ranks or batches add exactly, in any order.
"""

from __future__ import annotations

import numpy as np


def confusion_counts(truth, pred, classes: int, ignore: int = 255) -> np.ndarray:
    """classes x classes int64 counts of (truth row, prediction column); truth == ignore (or out of range) skipped,
    predictions out of range clipped."""
    t = np.asarray(truth).ravel().astype(np.int64)
    p = np.asarray(pred).ravel().astype(np.int64)
    keep = (t != ignore) & (t >= 0) & (t < classes)
    t, p = t[keep], np.clip(p[keep], 0, classes - 1)
    return np.bincount(t * classes + p, minlength=classes**2).reshape(classes, classes).astype(np.int64)


def _num(v) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), 6)


class ConfusionMatrix:
    """Accumulates (ground truth, prediction) pixel counts; pixels whose truth is `ignore` are skipped."""

    def __init__(self, classes: int, ignore: int = 255, matrix=None):
        self.classes = classes
        self.ignore = ignore
        self.matrix = np.zeros((classes, classes), dtype=np.int64) if matrix is None \
            else np.asarray(matrix, np.int64).reshape(classes, classes).copy()

    def update(self, truth, pred) -> None:
        self.matrix += confusion_counts(truth, pred, self.classes, self.ignore)

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for a class that is neither in the truth nor predicted."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    def class_accuracy(self) -> np.ndarray:
        """Per-class accuracy (TP / labelled pixels of the class); NaN for a class not in the truth."""
        tp = np.diag(self.matrix).astype(np.float64)
        gt = self.matrix.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(gt > 0, tp / gt, np.nan)

    def miou(self) -> float:
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def macc(self) -> float:
        acc = self.class_accuracy()
        return float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan")

    def accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")

    def report(self, names: list[str] | None = None, matrix: bool = False) -> dict:
        iou, acc = self.iou(), self.class_accuracy()
        names = names or [str(i) for i in range(self.classes)]
        out = {
            "iou": {names[i]: _num(v) for i, v in enumerate(iou)},
            "accuracy": {names[i]: _num(v) for i, v in enumerate(acc)},
            "miou": _num(self.miou()),
            "macc": _num(self.macc()),
            "pixel_accuracy": _num(self.accuracy()),
            "classes_counted": int(np.isfinite(iou).sum()),
            "pixels": int(self.matrix.sum()),
        }
        if matrix:
            out["confusion"] = self.matrix.tolist()
        return out
