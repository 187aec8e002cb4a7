"""Evaluation whose numbers compare with papers: whole images (or sliding windows) at their own resolution,
intersections and unions accumulated over the dataset (mllib.training.metrics), each image counted exactly once
under torchrun. networks/evaluate.py and network2d.py's per-epoch validation both run `evaluate`.

    data = eval_data(cfg, store, class_dict, rank, world)          # full-resolution (image, label, index, name)
    cm, n = evaluate(model, eval_loader(data, workers), BatchPrep(device), device, classes, 255, mode="whole")

Modes (as mmsegmentation's test_cfg):
    whole   the model applied to the image padded (bottom, right; 0 after normalization) to a multiple of the
            model's `pad_to`, the logits cropped back to the image
    slide   windows of `crop` every `stride` pixels (the last window flush with the border), each run as in whole
            mode; the logits of overlapping windows averaged
    center  the old validation: the loader's center crops (training size) as they come; not comparable
"""

from __future__ import annotations

import math
import posixpath

import numpy as np
import torch
from torch.nn import functional as F  # noqa: N812

from mllib import MllibError, UsageError
from mllib.augment import chw_uint8
from mllib.training.metrics import ConfusionMatrix

MODES = ("whole", "slide", "center")


# -- data: every image of the evaluation set once, at its own size -------------------------------------------------
class FullImages(torch.utils.data.Dataset):
    """Rows of a SegmentationDataset (any source) as (uint8 C x H x W image, uint8 H x W label, position, name):
    full resolution, no augmentation. `name` is the image's file stem (what --save_predictions names files by)."""

    def __init__(self, ds, rows=None):
        self.ds = ds
        self.rows = list(range(len(ds))) if rows is None else [int(r) for r in rows]
        self.classes = ds.classes

    def __len__(self) -> int:
        return len(self.rows)

    def name(self, k: int) -> str:
        return posixpath.splitext(posixpath.basename(self.ds.image_key(self.rows[k])))[0]

    def names(self) -> list[str]:
        return [self.name(k) for k in range(len(self))]

    def __getitem__(self, k: int):
        img, label = self.ds.raw(self.rows[k])
        return torch.from_numpy(chw_uint8(img)), torch.from_numpy(np.ascontiguousarray(label)), int(k), self.name(k)


class FullRecords(torch.utils.data.IterableDataset):
    """A TFRecord set's records as FullImages' tuples (position = the record's number in the set). Under torchrun
    rank r takes the records whose number is r modulo the ranks; DataLoader workers split the shards."""

    def __init__(self, store, name: str, set_name: str = "val", rank: int = 0, world: int = 1):
        from mllib.records.read import description, set_shards, shard_digests, shard_keys

        self.store, self.name, self.set_name, self.rank, self.world = store, name, set_name, rank, world
        self.description = description(store, name)
        if set_name not in self.description.get("sets", {}):
            raise MllibError(f"records set {name!r} has no {set_name!r} set (it has "
                             f"{', '.join(self.description.get('sets', {})) or 'none'})")
        self.shards = set_shards(store, name, set_name, self.description)
        self.keys = shard_keys(store, name, set_name, self.description)
        self.digests = shard_digests(store, name, self.description)
        self.offsets = np.concatenate([[0], np.cumsum([int(s["records"]) for s in self.shards])]).tolist()
        self.total = int(self.offsets[-1])

    def __len__(self) -> int:
        return len(range(self.rank, self.total, self.world))

    def __iter__(self):
        from mllib.records.read import iter_serialized, parse

        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        for s in range(wid, len(self.keys), nw):
            for r, rec in enumerate(iter_serialized(self.store, [self.keys[s]], sha256=self.digests)):
                k = self.offsets[s] + r
                if k % self.world != self.rank:
                    continue
                x = parse(rec)
                stem = posixpath.splitext(posixpath.basename(x["filename"]))[0] or f"record{k:08d}"
                yield torch.from_numpy(chw_uint8(x["image"])), torch.from_numpy(x["label"]), k, stem


class Strided(torch.utils.data.Sampler):
    """Rank r of w takes positions r, r + w, ...: every image exactly once over the ranks (no padding, unlike
    DistributedSampler, which repeats images to even the shares)."""

    def __init__(self, n: int, rank: int = 0, world: int = 1):
        self.n, self.rank, self.world = n, rank, world

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world))


def eval_loader(data, num_workers: int = 2, rank: int = 0, world: int = 1) -> torch.utils.data.DataLoader:
    """One image per batch (sizes differ), this rank's share of `data`."""
    sampler = None if isinstance(data, torch.utils.data.IterableDataset) else Strided(len(data), rank, world)
    kw = {"persistent_workers": False, "prefetch_factor": 4} if num_workers > 0 else {}
    return torch.utils.data.DataLoader(data, batch_size=1, sampler=sampler, num_workers=num_workers, **kw)


def eval_data(cfg, store, class_dict, rank: int = 0, world: int = 1, val_ds=None):
    """The validation images of a TrainConfig (network2d's data flags) at full resolution: a records set's "val"
    set, a source's "val" entries, the COCO --val_annotations, or the held-out fraction of the training set. None
    when the configuration has no validation data."""
    if cfg.records:
        from mllib.records.read import description

        if "val" not in description(store, cfg.records).get("sets", {}):
            return None
        return FullRecords(store, cfg.records, "val", rank, world)
    if val_ds is None:
        from mllib.training.data import datasets

        _, val_ds = datasets(cfg, store, class_dict, rank, world)
    if val_ds is None or len(val_ds) == 0:
        return None
    if isinstance(val_ds, torch.utils.data.Subset):  # the held-out rows of the training set
        return FullImages(val_ds.dataset, val_ds.indices)
    return FullImages(val_ds)


# -- inference ------------------------------------------------------------------------------------------------------
def _padded(model, x: torch.Tensor) -> torch.Tensor:
    """The model's logits for x (N x C x H x W, normalized), x padded to a multiple of model.pad_to and the logits
    cropped back."""
    m = int(getattr(model, "pad_to", 32))
    h, w = x.shape[-2:]
    ph, pw = (-h) % m, (-w) % m
    out = model(F.pad(x, (0, pw, 0, ph)) if ph or pw else x)
    return out[..., :h, :w]


def slide_windows(h: int, w: int, crop: tuple[int, int], stride: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """mmsegmentation's slide_inference windows (y1, y2, x1, x2): a grid every `stride`, the last window moved back
    to end at the border; an image smaller than `crop` is one window."""
    (ch, cw), (sh, sw) = crop, stride
    rows = max(h - ch + sh - 1, 0) // sh + 1
    cols = max(w - cw + sw - 1, 0) // sw + 1
    out = []
    for i in range(rows):
        for j in range(cols):
            y2, x2 = min(i * sh + ch, h), min(j * sw + cw, w)
            out.append((max(y2 - ch, 0), y2, max(x2 - cw, 0), x2))
    return out


def logits(model, x: torch.Tensor, mode: str = "whole", crop=None, stride=None) -> torch.Tensor:
    """N x classes x H x W logits of the normalized batch x, as `mode` says (float32)."""
    if mode in ("whole", "center"):
        return _padded(model, x).float()
    if mode != "slide":
        raise UsageError(f"--mode must be one of {', '.join(MODES)} (got {mode!r})")
    h, w = x.shape[-2:]
    total = count = None
    for y1, y2, x1, x2 in slide_windows(h, w, crop, stride):
        out = _padded(model, x[..., y1:y2, x1:x2]).float()
        if total is None:
            total = torch.zeros(out.shape[:2] + (h, w), dtype=torch.float32, device=x.device)
            count = torch.zeros((1, 1, h, w), dtype=torch.float32, device=x.device)
        total[..., y1:y2, x1:x2] += out
        count[..., y1:y2, x1:x2] += 1
    return total / count


@torch.no_grad()
def evaluate(model, loader, prep, device, n_classes: int, ignore: int = 255, *, mode: str = "whole", crop=None,
             stride=None, amp_dtype=None, world: int = 1, each=None) -> tuple[ConfusionMatrix, int]:
    """(confusion matrix over the whole set, images) for `model` on `loader`'s batches (eval_loader's tuples, or in
    center mode the training loader's crops). Counts stay on the device; under torchrun they are summed over the
    ranks (integers: 2 ranks give exactly 1 rank's numbers). `each(position, name, image uint8 CxHxW, label,
    prediction)` is called per image with host tensors (predictions saved, pictures made)."""
    if mode == "slide" and (crop is None or stride is None):
        raise UsageError("--mode slide needs --crop H W and --stride S")
    was_training = model.training
    model.eval()
    counts = torch.zeros(n_classes * n_classes, dtype=torch.int64, device=device)
    images = torch.zeros((), dtype=torch.int64, device=device)
    try:
        for batch in loader:
            x = prep.images(batch[0])
            y = prep.labels(batch[1])
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                pred = logits(model, x, mode, crop, stride).argmax(1)
            t = y.reshape(-1)
            keep = (t != ignore) & (t >= 0) & (t < n_classes)
            p = pred.reshape(-1)[keep].clamp(0, n_classes - 1)
            counts += torch.bincount(t[keep] * n_classes + p, minlength=n_classes * n_classes)
            images += len(y)
            if each is not None:
                host = pred.to("cpu", torch.uint8)
                for k in range(len(y)):
                    each(int(batch[2][k]), batch[3][k], batch[0][k], batch[1][k], host[k])
    finally:
        model.train(was_training)
    if world > 1:
        torch.distributed.all_reduce(counts)
        torch.distributed.all_reduce(images)
    return ConfusionMatrix(n_classes, ignore, counts.cpu().numpy()), int(images)


def stride_for(crop: tuple[int, int]) -> tuple[int, int]:
    """The default slide stride: two thirds of the crop (mmsegmentation's ADE20K configs: 512 crop, 341 stride)."""
    return tuple(max(1, math.ceil(c * 2 / 3)) for c in crop)


# -- pictures -------------------------------------------------------------------------------------------------------
def confusion_png(path, cm: ConfusionMatrix, names: list[str]) -> None:
    """The confusion matrix as a heatmap, rows normalized (each true class's pixels, where they were predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    m = cm.matrix.astype(np.float64)
    rows = m.sum(1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    n = len(names)
    size = min(24.0, 4.5 + 0.35 * n)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(norm, cmap="viridis", vmin=0, vmax=1)
    if n <= 60:
        ax.set_xticks(range(n), names, rotation=90, fontsize=7 if n > 20 else 9)
        ax.set_yticks(range(n), names, fontsize=7 if n > 20 else 9)
    if n <= 12:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] < 0.6 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion, rows normalized; mIoU {cm.miou():.4f}", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def sample_sheet(samples, classes, size: int = 256) -> np.ndarray:
    """Rows of image | label | prediction (each fitted into size x size) with the class legend; samples are
    (name, image uint8 CxHxW, label, prediction)."""
    from mllib.labels.display import legend, tile

    rows = []
    for name, image, label, pred in samples:
        img = image.numpy().transpose(1, 2, 0) if image.dim() == 3 else image.numpy()
        if img.ndim == 2 or img.shape[2] == 1:
            img = np.repeat(img.reshape(img.shape[0], img.shape[1], 1), 3, axis=2)
        lab, pr = label.numpy(), pred.numpy()
        plain = tile(img, np.full_like(lab, classes.ignore), classes, size, alpha=0.0, caption=name)
        rows.append(np.concatenate([plain, tile(img, lab, classes, size, caption="label"),
                                    tile(img, pr, classes, size, caption="prediction")], axis=1))
    sheet = np.concatenate(rows, axis=0)
    return np.concatenate([sheet, legend(classes, sheet.shape[1])], axis=0)


# -- a checkpoint, its data, its report -----------------------------------------------------------------------------
def load_model(store, key: str, device) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode on `device`, the checkpoint) from a network2d checkpoint in the store."""
    from mllib.store import NotFound
    from mllib.training import models
    from mllib.training.train import load_checkpoint

    try:
        ck = load_checkpoint(store, None, device, key=key)
    except NotFound:
        raise MllibError(f"no checkpoint at {store.url_for(key)} (train with network2d.py first)") from None
    if "model" not in ck or "model_config" not in ck:
        raise MllibError(f"{store.url_for(key)} is not a network2d checkpoint (no model or model_config)")
    model = models.build(ck["model_config"])
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as e:
        raise MllibError(f"{store.url_for(key)}: the weights do not fit its model_config "
                         f"({str(e).splitlines()[0][:200]})") from None
    return model.to(device).eval(), ck


def checkpoint_settings(ck: dict):
    """(TrainConfig, ClassDictionary) a checkpoint was trained with (settings this version does not know dropped)."""
    import dataclasses

    from mllib.labels import classes as mclasses
    from mllib.training.train import TrainConfig, saved_config

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in saved_config(ck).items() if k in known})
    return cfg, (mclasses.ClassDictionary(ck["classes"]) if ck.get("classes") else mclasses.load("coco"))


def set_name(text: str) -> str:
    """A folder name for an evaluation set (runs/<model>/eval/<set>/)."""
    import hashlib
    import re

    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    if clean and len(clean) <= 60 and clean == text:
        return clean
    return (clean[:40].strip("._") or "set") + "-" + hashlib.sha256(text.encode()).hexdigest()[:8]


def write_report(folder, report: dict, cm: ConfusionMatrix, classes, samples=()) -> list[str]:
    """report.json, confusion.png and (with samples) samples.png into `folder`; their paths."""
    import json
    from pathlib import Path

    from mllib.atomic import atomic_write
    from mllib.labels.display import write_png

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(folder / "report.json", "w") as f:
        json.dump(report, f, indent=1)
    out = [str(folder / "report.json")]
    confusion_png(folder / "confusion.png.tmp", cm, classes.names)
    (folder / "confusion.png.tmp").replace(folder / "confusion.png")
    out.append(str(folder / "confusion.png"))
    if samples:
        write_png(folder / "samples.png.tmp", sample_sheet(samples, classes))
        (folder / "samples.png.tmp").replace(folder / "samples.png")
        out.append(str(folder / "samples.png"))
    return out


def table(report: dict) -> str:
    """The per-class table: IoU and accuracy of each class ('-' where not counted)."""
    names = list(report["iou"])
    w = max(8, *(len(n) for n in names))
    rows = [f"{'class':<{w}}  {'IoU':>8}  {'Acc':>8}"]
    for n in names:
        iou, acc = report["iou"][n], report["accuracy"][n]
        rows.append(f"{n:<{w}}  {('-' if iou is None else f'{iou:.4f}'):>8}  {('-' if acc is None else f'{acc:.4f}'):>8}")
    return "\n".join(rows)
