"""Training a segmentation network (PyTorch) on CocoDataset or a TFRecord set: the logic behind network2d.py.

    cfg = TrainConfig(epochs=10, batch_size=32, num_workers=15, amp=True)      # or records="coco"
    last = fit(cfg, store.connect("s3://coco"))

Single process, or one process per GPU under torchrun (DistributedDataParallel + a split of the data per rank);
the process group is created and destroyed here, in `process_group`. The data path: workers send uint8 images and
labels (1 MB per 512x512 sample), batches are pinned and copied to the GPU beside the running step
(mllib.loaders.gpu.DevicePrefetcher), normalized there in channels_last, bf16 autocast, no host sync inside the loop (the
loss is summed on the device and read every `log_every` steps). Cross-entropy that ignores 255, per-class IoU and
mIoU on validation after each epoch, metrics appended to a JSON lines file (images/s, data-wait fraction, the
GPU-only step rate of the same model and their ratio).

Checkpoints (model, optimizer, scaler, step, epoch and the data position) are written atomically to
models/<name>/checkpoint.pt at each epoch's end, every `checkpoint_every` steps and every `checkpoint_minutes`,
and loaded with weights_only=True; `resume` continues at exactly the next batch the interrupted run would have
trained on (mllib.training.position). On SIGTERM or SIGINT the current step is finished, a checkpoint written, and
fit() raises Stopped (network2d.py exits with EXIT_STOPPED, 75) within `stop_grace_s`; under torchrun every rank
stops at the same step. When the store stays away longer than its outage budget (a DataLoader worker's read raises
StoreUnavailable) a single-process run stops the same way: a checkpoint at the last step taken (in the store, or
while the store is still away in the run folder, `rescue_path`, which --resume takes when it is newer), status 75.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import os
import re
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from mllib import MllibError, UsageError, layout
from mllib.atomic import atomic_write
from mllib.checks import NAME, SEED, SIZE, Range, setting
from mllib.labels import classes
from mllib.loaders.gpu import BatchPrep, DevicePrefetcher
from mllib.store import NotFound, Store, StoreUnavailable
from mllib.training import evaluate as ev
from mllib.training import models, recipe
from mllib.training.data import base_dataset, datasets, loaders, tracker
from mllib.training.record import RunRecord

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything fit() needs. networks/network2d.py's flags are made from these fields (same names; `alias`: also
    the seed's single-dash spelling), so a default, its help and its range are said once, here."""

    train_annotations: str = setting(layout.coco_instances("coco", "train2017"), "key of the training COCO "
                                     "annotation JSON in the store (the seed's --trainingset, too)", alias=True,
                                     old=("trainingset",))
    train_image_path: str = setting(layout.coco_images("coco", "train2017"), "key prefix of the training images",
                                    alias=True)
    val_annotations: str = setting(layout.coco_instances("coco", "val2017"), "key of the validation COCO annotation "
                                   "JSON ('' = hold out --val_fraction of the training set; the seed's --valset, too)",
                                   alias=True, old=("valset",))
    val_image_path: str = setting(layout.coco_images("coco", "val2017"), "key prefix of the validation images",
                                  alias=True)
    val_fraction: float = setting(0.1, "held-out fraction when --val_annotations is ''",
                                  check=Range(0, 1, hi_open=True, real=True))
    bucket: str | None = setting(None, "bucket overriding the store's (as in the seed)", alias=True)
    source: str | None = setting(None, "train from this source instead of the COCO JSON flags: a registered name "
                                 "(coco, cityscapes) or a JSON list of source entries (README: 'Sources'); entries "
                                 "with set 'val' validate, the others train")
    records: str | None = setting(None, "train from this TFRecord set (trainingsets/NAME, cocorecord.py) instead of "
                                  "the COCO JSON (its 'train' and 'val' sets)")
    class_dictionary: str | None = setting(None, "class dictionary name or path (default: coco, or with --source "
                                           "the first entry's)", alias=True)
    height: int = setting(512, "training crop height", alias=True, check=SIZE)
    width: int = setting(512, "training crop width", alias=True, check=SIZE)
    imflags: int = setting(1, "the seed's image mode: 1 colour, 0 grayscale (the command line's --color rgb|gray)",
                           alias=True)
    batch_size: int = setting(8, "images per step (per rank)", alias=True, check=Range(1))
    epochs: int = setting(10, "epochs to train", alias=True, check=Range(1))
    max_steps: int = setting(0, "stop after this many steps (0: no limit)", alias=True, check=Range(0))
    learning_rate: float = setting(1e-3, "AdamW learning rate (the peak, with --lr_schedule)", alias=True,
                                   check=Range(0, lo_open=True, real=True))
    lr_schedule: str = setting("constant", "learning rate over the run's steps: constant, poly ((1 - t)^--poly_power, "
                               "the field's default) or cosine; after --warmup_steps of linear warm-up",
                               choices=("constant", "poly", "cosine"))
    poly_power: float = setting(0.9, "exponent of the poly schedule", check=Range(0, lo_open=True, real=True))
    warmup_steps: int = setting(0, "linear learning-rate warm-up over this many steps", check=Range(0))
    weight_decay: float = setting(1e-4, "AdamW weight decay", check=Range(0, real=True))
    class_weights: str = setting("none", "cross-entropy class weights from the training set's pixel counts: none, "
                                 "inverse (1 / (C f_c)) or median (median frequency balancing); from a records set's "
                                 "description, --class_stats, or a pass over the training labels",
                                 choices=("none", "inverse", "median"))
    class_stats: str | None = setting(None, "checkdataset.py's JSON report of the training set (its class weights)")
    color_jitter: str = setting("", "photometric augmentation on the GPU batch: brightness,contrast,saturation,hue "
                                "strengths, e.g. 0.4,0.4,0.4,0.1 ('' none); drawn from (seed, epoch, sample)")
    arch: str = setting("unet", "network: unet (compact UNet, --model_width/--model_depth) or deeplabv3plus "
                        "(ResNet --backbone)", choices=("unet", "deeplabv3plus"))
    backbone: str = setting("resnet50", "DeepLabV3+ backbone", choices=("resnet50", "resnet101"))
    output_stride: int = setting(16, "DeepLabV3+ output stride (16 or 8)", choices=(8, 16))
    encoder_weights: str | None = setting(None, "a torchvision-named ResNet state dict (e.g. ImageNet weights) loaded "
                                          "strictly into the DeepLabV3+ backbone before training")
    val_mode: str = setting("whole", "validation after each epoch: whole (every image at its own size), slide "
                            "(windows of the training crop, --val_stride) or center (the training-size center crop: "
                            "fast, not comparable with published numbers)", choices=("whole", "slide", "center"))
    val_stride: int = setting(0, "slide validation's stride (0: two thirds of the crop)", check=Range(0))
    no_tensorboard: bool = setting(False, "no TensorBoard event files (by default in runs/<model_name>/)")
    num_workers: int = setting(4, "DataLoader worker processes", alias=True, check=Range(0, 1024))
    prefetch: int = setting(4, "batches prefetched per worker", check=Range(1))
    unordered: bool = setting(False, "take training batches as the workers finish them (DataLoader "
                              "in_order=False): a worker that is ahead is not held back by a slower one; the same "
                              "batches, in an order that can differ between runs")
    fetch_threads: int = setting(16, "concurrent image reads per worker", check=Range(1, 1024))
    device: str = setting("auto", "cuda when available, else cpu (auto, cpu, cuda, cuda:N, mps)", alias=True)
    amp: bool = setting(False, "mixed precision (bf16 where supported)", alias=True)
    compile: bool = setting(False, "torch.compile the model")
    normalize: str = setting("imagenet", "normalization applied on the device to the uint8 batches",
                             choices=("imagenet", "image", "none"))
    model_name: str = setting("unet2d", "the model's folder in the store (models/<model_name>/)", alias=True)
    model_width: int = setting(16, "channels of the first UNet level", check=Range(1, 1024))
    model_depth: int = setting(4, "UNet levels", check=Range(0, 8))
    resume: bool = setting(False, "continue from models/<model_name>/checkpoint.pt at exactly the next batch",
                           alias=True)
    metrics_file: str | None = setting(None, "JSON lines file (default runs/<model_name>/metrics.jsonl)")
    skip_bad: bool = setting(False, "replace missing/corrupt images by other samples")
    seed: int = setting(0, "torch seed (augmentation and shuffling)", check=SEED)
    no_progress: bool = setting(False, "no progress bar")
    log_every: int = setting(50, "read the loss (a host sync) every N steps", check=Range(1))
    step_rate_steps: int = setting(-1, "measure the GPU-only step rate over N steps before training (-1: 20 on "
                                   "CUDA, else 0)", check=Range(-1))
    checkpoint_every: int = setting(0, "also write a checkpoint every N steps (0: at epoch ends and by "
                                    "--checkpoint_minutes)", check=Range(0))
    checkpoint_minutes: float = setting(10.0, "also write a checkpoint when this many minutes have passed since "
                                        "the last one (0: never)", check=Range(0, real=True))
    stop_grace_s: float = setting(60.0, "on SIGTERM / SIGINT: finish the step, write a checkpoint and exit "
                                  "(status 75) within this many seconds, else exit 143 keeping the last whole "
                                  "checkpoint", check=Range(0, lo_open=True, real=True))

    def __post_init__(self):
        """A setting out of range is a one-line MllibError naming the flag, before anything is read or written."""
        for name, allowed in LIMITS.items():
            allowed.require(f"--{name}", getattr(self, name))
        NAME.require("--model_name", self.model_name)  # a folder in the store and under runs/
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(self.device)):
            raise UsageError(f"--device must be auto, cpu, cuda, cuda:N or mps (got {self.device!r})")
        if self.records is not None:
            NAME.require("--records", self.records)
        if self.records is not None and self.source is not None:
            raise UsageError("--source and --records are two ways to give the data: use one")
        if self.unordered and self.checkpoint_every:
            raise UsageError("--unordered takes batches in the order workers finish them, so a step count does not "
                             "say which were consumed: use --checkpoint_every 0 with it (checkpoints at epoch ends)")
        jitter(self.color_jitter)  # checks it
        if self.arch == "unet" and min(self.height, self.width) < 2**self.model_depth:
            raise UsageError(f"--height and --width must be at least 2 ** --model_depth = {2**self.model_depth} (the "
                             f"UNet halves them {self.model_depth} times); got {self.height}x{self.width}")


# the values every numeric setting may take, from the fields (network2d's flags have the same names)
LIMITS = {f.name: f.metadata["check"] for f in fields(TrainConfig) if f.metadata.get("check") is not None}

# what a resumed run must share with its checkpoint (the data, its order and the model); anything else may change:
# --num_workers and the number of ranks (the position is elastic), --epochs, --max_steps, --prefetch, the
# checkpoint and logging flags, --device, --amp
RESUME_FIXED = ("train_annotations", "train_image_path", "val_annotations", "val_image_path", "val_fraction",
                "source", "records", "class_dictionary", "height", "width", "imflags", "batch_size", "seed",
                "skip_bad", "normalize", "model_width", "model_depth", "arch", "backbone", "output_stride",
                "lr_schedule", "poly_power", "warmup_steps", "weight_decay", "class_weights", "color_jitter")


# settings renamed since a checkpoint or --config file may have been written: old name -> this version's
OLD_NAMES = {o: f.name for f in fields(TrainConfig) for o in f.metadata.get("old", ())}


def saved_config(ck: dict) -> dict:
    """A checkpoint's settings under this version's names (--trainingset became --train_annotations)."""
    return {OLD_NAMES.get(k, k): v for k, v in (ck.get("config") or {}).items()}


def jitter(text: str) -> tuple[float, float, float, float] | None:
    """--color_jitter as (brightness, contrast, saturation, hue) strengths, or None."""
    if not str(text or "").strip():
        return None
    try:
        v = tuple(float(x) for x in str(text).split(","))
    except ValueError:
        v = ()
    if len(v) != 4 or not all(math.isfinite(x) and x >= 0 for x in v) or v[3] > 0.5 or max(v[:3]) >= 1:
        raise UsageError(f"--color_jitter must be four strengths brightness,contrast,saturation,hue (each 0 <= x < 1, "
                         f"hue <= 0.5), e.g. 0.4,0.4,0.4,0.1; got {text!r}")
    return v if any(v) else None


def lr_factor(cfg: TrainConfig, step: int, total: int) -> float:
    """The learning rate of step `step` (0-based) over the peak: a pure function of the step, so a resumed run
    continues the schedule exactly."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    t = min(step, total) / total if total > 0 else 0.0
    if cfg.lr_schedule == "poly":
        return warm * (1.0 - t) ** cfg.poly_power
    if cfg.lr_schedule == "cosine":
        return warm * 0.5 * (1.0 + math.cos(math.pi * t))
    return warm

EXIT_STOPPED = 75  # network2d.py's status after a SIGTERM/SIGINT stop with its checkpoint written (EX_TEMPFAIL)
EXIT_GRACE_EXPIRED = 143  # ... and when the stop took longer than --stop_grace_s (the last whole checkpoint stays)


class Stopped(Exception):
    """Training stopped on a signal (or the store away past its outage budget) after writing a checkpoint;
    `--resume` continues exactly."""

    def __init__(self, signame: str, step: int, url: str, rank: int = 0, why: str | None = None):
        super().__init__(f"{why or 'stopped by ' + signame} at step {step}; checkpoint {url}; continue with --resume"
                         + (" once the store is back" if why else ""))
        self.signame, self.step, self.url, self.rank = signame, step, url, rank


def outage_line(e: BaseException) -> str:
    """The store's own line from a StoreUnavailable, also when a DataLoader worker raised it (the loader raises it
    again in this process with the worker's traceback as its message, the line last)."""
    lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
    line = (lines[-1] if lines else type(e).__name__).split("StoreUnavailable: ", 1)[-1]
    return line.split("; re-run the same command", 1)[0]


def run_folder(cfg) -> Path:
    """The run's local folder (runs/<model_name>/, or the folder of --metrics_file): mllib.training.record's files."""
    return Path(cfg.metrics_file).parent if cfg.metrics_file else Path(layout.run_metrics(cfg.model_name)).parent


def rescue_path(cfg) -> Path:
    """Where a checkpoint goes when the store does not take it (it is away past its outage budget): the run
    folder. --resume takes it when its step is past the store's checkpoint."""
    return run_folder(cfg) / f"{cfg.model_name}.checkpoint.pt"


@contextlib.contextmanager
def process_group():
    """(rank, world size, local rank); under torchrun the process group lives exactly as long as this block."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    created = False
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        created = True
    try:
        if world > 1:
            yield torch.distributed.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))
        else:
            yield 0, 1, 0
    finally:
        if created:
            torch.distributed.destroy_process_group()


def pick_device(name: str | None, local_rank: int) -> torch.device:
    if name in (None, "", "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError("--device cuda asked for, but no CUDA device is available (use --device cpu)")
        if name == "cuda":
            name = f"cuda:{local_rank}"
        torch.cuda.set_device(torch.device(name))
    return torch.device(name)


def checkpoint_key(model_name: str) -> str:
    return layout.checkpoint(model_name)


def save_checkpoint(store: Store, model_name: str, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    store.put_bytes(checkpoint_key(model_name), buf.getvalue())  # atomic on both backends


def load_checkpoint(store: Store, model_name: str | None, device, key: str | None = None,
                    missing_ok: bool = False) -> dict | None:
    """A checkpoint (models/<model_name>/checkpoint.pt, or `key`), loaded with weights_only=True: tensors and plain
    types only, never code from the store. None where there is none and `missing_ok`."""
    key = key or checkpoint_key(model_name)
    try:
        data = store.get_bytes(key)
    except NotFound:
        if missing_ok:
            return None
        if model_name is None:
            raise
        raise UsageError(f"--resume: no checkpoint at {store.url_for(key)}; train without --resume first") from None
    return _weights_only(io.BytesIO(data), store.url_for(key), device)


def _weights_only(source, where: str, device, fix: str = "") -> dict:
    """torch.load(source, weights_only=True), or one line saying the checkpoint at `where` is not safe to load."""
    try:
        return torch.load(source, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling errors come in many types; all mean "not a safe checkpoint"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MllibError(f"checkpoint {where} cannot be loaded as weights only (it holds more than tensors and plain "
                         f"types, or is corrupt): {first[:300]}{fix}") from None


def loss_fn(ignore: int, weight: torch.Tensor | None = None) -> nn.Module:
    return nn.CrossEntropyLoss(weight=weight, ignore_index=ignore)


def train_step(model, batch, optimizer, criterion, device, amp_dtype=None, scaler=None) -> torch.Tensor:
    """One optimizer step; returns the loss as a detached tensor on the device (reading it syncs the host)."""
    images, labels = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        loss = criterion(model(images), labels)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss.detach()


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_rate(model, optimizer, criterion, batch, device, steps: int, amp_dtype=None, scaler=None) -> float:
    """Images/s of the training step alone, on a batch already on the device; the model and optimizer state
    are restored afterwards, so training is unchanged."""
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(optimizer.state_dict())
    for _ in range(3):  # warm-up (kernel selection, compile)
        train_step(model, batch, optimizer, criterion, device, amp_dtype, scaler)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(model, batch, optimizer, criterion, device, amp_dtype, scaler)
    _sync(device)
    rate = steps * len(batch[0]) / (time.perf_counter() - t0)
    model.load_state_dict(saved_model)
    optimizer.load_state_dict(saved_opt)
    return rate


# -- the loop -----------------------------------------------------------------------------------------------------
@dataclass
class _Run:
    cfg: TrainConfig
    store: Store
    rank: int
    world: int
    device: torch.device
    class_dict: classes.ClassDictionary
    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None
    prep: BatchPrep
    criterion: nn.Module
    eval_data: object = None  # full-resolution validation images (whole / slide), or the center-crop loader
    record: RunRecord | None = None
    schedule_steps: int = 0  # the steps the learning-rate schedule spans (epochs x steps per epoch, kept on resume)
    class_weights: list | None = None

    def set_lr(self, step: int) -> float:
        lr = self.cfg.learning_rate * lr_factor(self.cfg, step, self.schedule_steps)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return lr


def _amp(cfg: TrainConfig, device):
    if not cfg.amp:
        return None, None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16, torch.amp.GradScaler("cuda")
    return torch.bfloat16, None


def restore(model: nn.Module, optimizer, scaler, ck: dict) -> tuple[int, int, list]:
    """Put a checkpoint's state into model, optimizer (and scaler); (epoch to run next, step, metrics so far).
    An epoch that was not complete is run on from the checkpoint's data position (ck["position"])."""
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    if scaler is not None and ck.get("scaler"):
        scaler.load_state_dict(ck["scaler"])
    return ck["epoch"] + (1 if ck.get("epoch_complete", True) else 0), ck["step"], ck.get("metrics", [])


def check_resumable(cfg: TrainConfig, ck: dict) -> None:
    """A checkpoint made on other data, another crop, batch size or seed cannot be continued exactly: refused."""
    saved = saved_config(ck)
    for name in RESUME_FIXED:
        if name in saved and saved[name] != getattr(cfg, name):
            raise UsageError(f"--resume: the checkpoint was made with --{name} {saved[name]!r}, this run has "
                             f"{getattr(cfg, name)!r}; use the same value, or another --model_name for a new run")


def _latest_checkpoint(run: _Run) -> dict:
    """The store's checkpoint, or the run folder's rescue checkpoint (written while the store was away) when it is
    further on."""
    rescue = rescue_path(run.cfg)
    rescued = rescue.exists()
    ck = load_checkpoint(run.store, run.cfg.model_name, run.device, missing_ok=rescued)
    if not rescued:
        return ck
    mine = _weights_only(rescue, f"{rescue} (written while the store was away)", run.device,
                         "; remove it to resume from the store's checkpoint")
    if ck is None or mine["step"] > ck["step"]:
        if run.rank == 0:
            log.info("resuming from %s (written while the store was away)", rescue)
        return mine
    return ck


def _resume(run: _Run) -> tuple[int, int, list, dict | None]:
    ck = _latest_checkpoint(run)
    check_resumable(run.cfg, ck)
    epoch, step, history = restore(run.model, run.optimizer, run.scaler, ck)
    if ck.get("schedule_steps"):
        run.schedule_steps = int(ck["schedule_steps"])  # the schedule the run began with, whatever --epochs is now
    if run.cfg.class_weights != "none":  # the weights the run began with
        if not ck.get("class_weights"):
            raise UsageError(f"--resume: the checkpoint has no class weights; it was made with --class_weights "
                             f"{(ck.get('config') or {}).get('class_weights', 'none')!r}")
        run.class_weights = ck["class_weights"]
    position = ck.get("position") if not ck.get("epoch_complete", True) else None
    if run.rank == 0:
        where = f", {position.get('samples', position.get('steps'))} {position['kind']} into the epoch" \
            if position else ""
        log.info("resumed %s at epoch %d, step %d%s", checkpoint_key(run.cfg.model_name), epoch, step, where)
    return epoch, step, history, (position, ck.get("epoch_stats"))


def _state(run: _Run, epoch: int, complete: bool, step: int, history: list, position=None, stats=None) -> dict:
    return {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(), "epoch": epoch,
            "epoch_complete": complete, "step": step, "metrics": history,
            "scaler": run.scaler.state_dict() if run.scaler is not None else None,
            "model_config": run.model.config, "classes": run.class_dict.to_dict(), "config": asdict(run.cfg),
            "position": position, "epoch_stats": stats, "schedule_steps": run.schedule_steps,
            "class_weights": run.class_weights}


def _checkpoint(run: _Run, state: dict, outage: StoreUnavailable | None = None) -> None:
    """Write a checkpoint to the store; a rescue checkpoint of an earlier outage is then behind it: removed. When
    the store does not take it (away, or full, past its outage budget) a single-process run writes it to
    rescue_path and stops (Stopped, status 75). With `outage` (a data read that failed past the budget) it stops
    after writing in any case. Under torchrun the error is raised as it is: the other ranks cannot be told in the
    middle of a step, torchrun ends the run and the last periodic checkpoint stays."""
    if outage is not None and run.world > 1:
        raise outage
    try:
        save_checkpoint(run.store, run.cfg.model_name, state)
        where = run.store.url_for(checkpoint_key(run.cfg.model_name))
    except StoreUnavailable as e:
        if run.world > 1:
            raise
        outage = outage or e
        path = rescue_path(run.cfg)
        with atomic_write(path) as f:
            torch.save(state, f)
        where = f"{path} (the store did not take it; --resume takes it from there)"
    else:
        rescue_path(run.cfg).unlink(missing_ok=True)
        if outage is None:
            return
    raise Stopped("the store being away", state["step"], where, run.rank,
                  why=f"stopped, the store is away ({outage_line(outage)})") from None


def _save(run: _Run, epoch: int, complete: bool, step: int, history: list, metrics_path: Path, position=None) -> None:
    with open(metrics_path, "a") as f:
        f.write(json.dumps(history[-1]) + "\n")
    _checkpoint(run, _state(run, epoch, complete, step, history, position))
    run.store.put_bytes(layout.model_metrics(run.cfg.model_name),
                        "".join(json.dumps(m) + "\n" for m in history).encode())


class _Control:
    """When to checkpoint inside an epoch (--checkpoint_every, --checkpoint_minutes) and whether to stop (SIGTERM,
    SIGINT): decided after each step, the same on every rank (one small all-reduce per step under torchrun)."""

    def __init__(self, cfg: TrainConfig, rank: int, world: int):
        self.cfg, self.rank, self.world = cfg, rank, world
        self.signame: str | None = None
        self.timer: threading.Timer | None = None
        self.last = time.monotonic()
        self.group = None
        if world > 1:  # the flags travel on a CPU (gloo) group: no device sync for them
            self.group = torch.distributed.new_group(backend="gloo") \
                if torch.distributed.get_backend() != "gloo" else torch.distributed.group.WORLD

    @contextlib.contextmanager
    def signals(self):
        """SIGTERM / SIGINT handled while the block runs (in the main thread; elsewhere they are left alone)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        except Stopped:
            raise  # the process is stopping: the grace timer still bounds its exit
        except BaseException:
            self._cancel()
            raise
        else:
            self._cancel()  # training ended (a signal during the last validation lets it end as usual)
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _cancel(self):
        if self.timer is not None:
            self.timer.cancel()

    def _on_signal(self, signum, frame):
        if self.signame is not None:
            if signum == signal.SIGINT:  # a second Ctrl-C: stop now (the last whole checkpoint stays)
                raise KeyboardInterrupt
            return
        self.signame = signal.Signals(signum).name
        log.warning("%s: finishing this step, writing a checkpoint, then stopping (within %g s)", self.signame,
                    self.cfg.stop_grace_s)
        self.timer = threading.Timer(self.cfg.stop_grace_s, self._expired)
        self.timer.daemon = True
        self.timer.start()

    def _expired(self):
        print(f"network2d: error: did not stop within --stop_grace_s {self.cfg.stop_grace_s:g} after "
              f"{self.signame}; the last whole checkpoint stays", file=sys.stderr, flush=True)
        os._exit(EXIT_GRACE_EXPIRED)

    def after_step(self, step: int) -> tuple[bool, bool]:
        """(write a checkpoint now, then stop)."""
        cfg = self.cfg
        every = bool(cfg.checkpoint_every) and step % cfg.checkpoint_every == 0
        timed = (not cfg.unordered and cfg.checkpoint_minutes > 0 and self.rank == 0
                 and time.monotonic() - self.last >= 60 * cfg.checkpoint_minutes)
        stop = self.signame is not None
        if self.world > 1:
            flags = torch.tensor([int(stop), int(timed)])
            torch.distributed.all_reduce(flags, torch.distributed.ReduceOp.MAX, group=self.group)
            stop, timed = bool(flags[0]), bool(flags[1])
            if stop and self.signame is None:
                self.signame = "a signal to another rank"
        return every or timed or stop, stop

    def saved(self) -> None:
        self.last = time.monotonic()


def _epoch(run: _Run, loader, epoch: int, step: int, max_steps: float, ctl: _Control, pos, stats: dict | None,
           history: list):
    """One training epoch (or what is left of it); returns (step, images, seconds, data-wait seconds, mean loss or
    None, complete, steps taken here). `stats` carries the interrupted part of the epoch into its metrics."""
    from tqdm import tqdm

    cfg = run.cfg
    run.net.train()
    if isinstance(run.prep, recipe.JitterPrep):
        run.prep.set_epoch(epoch)
    feed = DevicePrefetcher(loader, run.prep)
    bar = tqdm(total=len(loader), desc=f"epoch {epoch}", disable=run.rank != 0 or cfg.no_progress,
               dynamic_ncols=True)
    stats = dict(stats or {"loss_sum": 0.0, "steps": 0, "seen": 0, "seconds": 0.0, "wait": 0.0})
    loss_sum = torch.zeros((), device=run.device)
    criterion = run.criterion
    seen = steps = 0
    t0 = time.perf_counter()

    def so_far() -> dict:  # the epoch's figures up to this step, the interrupted part included
        return {"loss_sum": stats["loss_sum"] + float(loss_sum), "steps": stats["steps"] + steps,
                "seen": stats["seen"] + seen, "seconds": stats["seconds"] + time.perf_counter() - t0,
                "wait": stats["wait"] + feed.wait}

    logged = (0, 0.0, 0, 0.0, 0.0)  # (steps, loss sum, seen, seconds, wait) at the last log line
    batches = iter(feed)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            break
        except StoreUnavailable as e:  # a worker's read failed past the outage budget: stop as on SIGTERM
            bar.close()
            position = pos.state(epoch, 0 if cfg.unordered else steps)
            _checkpoint(run, _state(run, epoch, False, step, history, position, so_far()), outage=e)
        lr = run.set_lr(step)
        loss_sum += train_step(run.net, batch, run.optimizer, criterion, run.device, run.amp_dtype, run.scaler)
        step += 1
        steps += 1
        seen += len(batch[0]) * run.world
        if steps % max(1, cfg.log_every) == 0 or steps == len(loader):
            elapsed = time.perf_counter() - t0  # reading the loss here is the loop's only host sync
            total = float(loss_sum)
            bar.set_postfix(loss=f"{total / steps:.4f}", img_s=f"{seen / elapsed:.1f}",
                            data_wait=f"{100 * feed.wait / elapsed:.0f}%", lr=f"{lr:.3g}")
            if run.record is not None:  # the figures since the last log line
                n, dt = steps - logged[0], max(elapsed - logged[3], 1e-9)
                run.record.step(step, epoch, (total - logged[1]) / n, lr, (seen - logged[2]) / dt,
                                (feed.wait - logged[4]) / dt)
            logged = (steps, total, seen, elapsed, feed.wait)
        bar.update(1)
        if step >= max_steps:
            break
        checkpoint, stop = ctl.after_step(step)
        if checkpoint:  # the position counts the steps taken, never what the loader holds ahead
            position = pos.state(epoch, 0 if cfg.unordered else steps)  # unordered: the epoch is run again
            if run.rank == 0:
                _checkpoint(run, _state(run, epoch, False, step, history, position, so_far()))
            ctl.saved()
            if stop:
                bar.close()
                if run.world > 1:
                    torch.distributed.barrier(group=ctl.group)  # rank 0's checkpoint is whole before any rank exits
                raise Stopped(ctl.signame, step, run.store.url_for(checkpoint_key(cfg.model_name)), run.rank)
    _sync(run.device)
    bar.close()
    total = so_far()
    loss = total["loss_sum"] / total["steps"] if total["steps"] else None
    return (step, total["seen"], total["seconds"], total["wait"], loss,
            steps == len(loader) or step < max_steps, steps)


def _measure_step_rate(run: _Run, criterion) -> float | None:
    """The step alone, on a batch of the training shape made on the device (the step's cost does not depend on
    pixel values): no loader batch is taken, so the workers' first batches are not spent on it."""
    n = run.cfg.step_rate_steps
    if n < 0:
        n = 20 if run.device.type == "cuda" else 0
    if n == 0:
        return None
    cfg = run.cfg
    shape = (cfg.batch_size, 1 if cfg.imflags == 0 else 3, cfg.height, cfg.width)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, device=run.device)
    labels = torch.randint(0, run.class_dict.classes, (cfg.batch_size, cfg.height, cfg.width), device=run.device)
    batch = BatchPrep(run.device, cfg.normalize)((images, labels))  # no jitter: the indices are not there
    run.set_lr(0)
    return round(step_rate(run.net, run.optimizer, criterion, batch, run.device, n, run.amp_dtype, run.scaler), 2)


def model_config(cfg: TrainConfig, classes: int) -> dict:
    in_ch = 1 if cfg.imflags == 0 else 3
    if cfg.arch == "deeplabv3plus":
        return {"arch": "deeplabv3plus", "in_channels": in_ch, "classes": classes, "backbone": cfg.backbone,
                "output_stride": cfg.output_stride}
    return {"arch": "unet", "in_channels": in_ch, "classes": classes, "width": cfg.model_width,
            "depth": cfg.model_depth}


def make_model(cfg: TrainConfig, classes: int, device, world: int) -> nn.Module:
    model = models.build(model_config(cfg, classes))
    if cfg.encoder_weights and not cfg.resume:  # a resumed run has its weights in the checkpoint
        models.load_encoder_weights(model, cfg.encoder_weights)
    if world > 1 and device.type == "cuda":  # batch statistics over every rank's batch (the same module back)
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model.to(device).to(memory_format=torch.channels_last)


def fit(cfg: TrainConfig, store: Store) -> dict | None:
    """Train as cfg says; returns the last epoch's metrics on rank 0 (None on the other ranks)."""
    with process_group() as (rank, world, local_rank):
        device = pick_device(cfg.device, local_rank)
        torch.manual_seed(cfg.seed + rank)
        train_ds, val_ds = datasets(cfg, store, cfg.class_dictionary, rank, world)
        class_dict = base_dataset(train_ds).classes if cfg.source else classes.load(cfg.class_dictionary or "coco")
        strength = jitter(cfg.color_jitter)
        if strength is not None:  # each sample carries its index: the jitter is drawn from it
            base_dataset(train_ds).emit_index = True
        train_loader, sampler, val_loader = loaders(cfg, train_ds, val_ds if cfg.val_mode == "center" else None,
                                                    device, rank, world)
        eval_data = val_loader if cfg.val_mode == "center" else \
            ev.eval_data(cfg, store, class_dict, rank, world, val_ds=val_ds)
        model = make_model(cfg, class_dict.classes, device, world)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        amp_dtype, scaler = _amp(cfg, device)
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
            if world > 1 else model
        if cfg.compile:
            net = torch.compile(net)
        weights = recipe.class_weights(cfg, store, train_ds, class_dict) if not cfg.resume else None
        prep = recipe.JitterPrep(device, cfg.normalize, strength, cfg.seed) if strength is not None \
            else BatchPrep(device, cfg.normalize)
        run = _Run(cfg, store, rank, world, device, class_dict, model, net, optimizer, amp_dtype, scaler, prep,
                   loss_fn(class_dict.ignore), eval_data, schedule_steps=cfg.epochs * len(train_loader))
        epoch, step, history, (position, stats) = _resume(run) if cfg.resume else (0, 0, [], (None, None))
        if weights is not None:
            run.class_weights = weights.tolist()
        if run.class_weights is not None:
            run.criterion = loss_fn(class_dict.ignore, torch.tensor(run.class_weights, device=device))
        if rank == 0:
            run.record = RunRecord(run_folder(cfg), not cfg.no_tensorboard)
            run.record.config(asdict(cfg), model=model.config, classes=class_dict.to_dict(), world_size=world,
                              schedule_steps=run.schedule_steps, class_weights=run.class_weights,
                              device=str(device))
        pos = tracker(cfg, train_ds, sampler)
        ctl = _Control(cfg, rank, world)
        try:
            with ctl.signals():
                return _train(run, train_loader, pos, ctl, train_ds, epoch, step, history, position, stats)
        finally:
            if run.record is not None:
                run.record.close()
            for loader in (train_loader, val_loader):
                close_loader(loader)


def close_loader(loader) -> None:
    """Stop a DataLoader's persistent workers now. They ignore SIGTERM (training_worker_init), so a loader still
    referenced when the interpreter exits would leave multiprocessing's exit handler joining them forever."""
    it = getattr(loader, "_iterator", None)
    if it is not None and hasattr(it, "_shutdown_workers"):
        it._shutdown_workers()
        loader._iterator = None


def validate(run: _Run, picture: bool = False) -> tuple[dict | None, object]:
    """The epoch's validation (--val_mode) with network2d's model: (report, a picture of image | label | prediction
    of the first images, or None)."""
    if run.eval_data is None:
        return None, None
    cfg = run.cfg
    shown = []

    def each(k, name, image, label, pred):
        if len(shown) < 4:
            shown.append((name, image, label, pred))

    loader = run.eval_data if cfg.val_mode == "center" else \
        ev.eval_loader(run.eval_data, min(cfg.num_workers, 8), run.rank, run.world)
    prep = BatchPrep(run.device, cfg.normalize)  # no colour jitter on validation
    crop = (cfg.height, cfg.width)
    stride = (cfg.val_stride, cfg.val_stride) if cfg.val_stride else ev.stride_for(crop)
    cm, n = ev.evaluate(run.model, loader, prep, run.device, run.class_dict.classes, run.class_dict.ignore,
                        mode=cfg.val_mode, crop=crop, stride=stride, amp_dtype=run.amp_dtype, world=run.world,
                        each=each if picture and cfg.val_mode != "center" else None)
    report = {**cm.report(run.class_dict.names), "images": n, "mode": cfg.val_mode}
    sheet = ev.sample_sheet(shown, run.class_dict, 192) if shown else None
    return report, sheet


def _train(run: _Run, train_loader, pos, ctl: _Control, train_ds, epoch: int, step: int, history: list,
           position: dict | None, stats: dict | None):
    cfg = run.cfg
    if cfg.unordered and run.rank == 0:
        log.info("--unordered: checkpoints at epoch ends; a stop on a signal runs its epoch again on --resume")
    metrics_path = Path(cfg.metrics_file or layout.run_metrics(cfg.model_name))
    if run.rank == 0:
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
    last: dict = history[-1] if history else {}
    max_steps = cfg.max_steps if cfg.max_steps and cfg.max_steps > 0 else math.inf
    gpu_rate = _measure_step_rate(run, run.criterion) if epoch < cfg.epochs and step < max_steps else None
    while epoch < cfg.epochs and step < max_steps:
        resumed = position is not None and position["epoch"] == epoch
        pos.begin(epoch, position if resumed else None)
        base_dataset(train_ds).set_epoch(epoch)
        step, seen, elapsed, wait, loss, complete, taken = _epoch(run, train_loader, epoch, step, max_steps, ctl,
                                                                  pos, stats if resumed else None, history)
        position = stats = None
        try:
            val, picture = validate(run, picture=run.record is not None)
        except StoreUnavailable as e:  # the epoch is trained: kept (its validation skipped), then stopped
            val, picture, outage = None, None, e
        else:
            outage = None
        elapsed = max(elapsed, 1e-9)
        last = {"epoch": epoch, "step": step, "train_loss": loss, "images_per_s": round(seen / elapsed, 2),
                "data_wait_fraction": round(wait / elapsed, 4), "seconds": round(elapsed, 2),
                "gpu_only_images_per_s": round(gpu_rate * run.world, 2) if gpu_rate else None,
                "vs_gpu_only": round(seen / elapsed / (gpu_rate * run.world), 3) if gpu_rate else None,
                "device": str(run.device), "world_size": run.world, "lr": run.optimizer.param_groups[0]["lr"],
                "bad_samples": base_dataset(train_ds).bad_count(), "val": val}
        history.append(last)
        at = None if complete else pos.state(epoch, 0 if cfg.unordered else taken)  # cut short by --max_steps
        if outage is not None:
            _checkpoint(run, _state(run, epoch, complete, step, history, at), outage=outage)
        if run.rank == 0:  # the position says where the epoch goes on
            _save(run, epoch, complete, step, history, metrics_path, at)
            run.record.epoch(last, picture)
            run.record.curves(history)
            miou = last["val"]["miou"] if last["val"] else None
            log.info("epoch %d: loss %.4f, val mIoU %s (%s), %.1f images/s, data wait %.0f%%", epoch,
                     last["train_loss"] or float("nan"), miou, cfg.val_mode, last["images_per_s"],
                     100 * last["data_wait_fraction"])
        ctl.saved()
        epoch += 1
    if run.world > 1:
        torch.distributed.barrier()
    return last if run.rank == 0 else None
