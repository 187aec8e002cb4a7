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
stops at the same step.
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

from mllib import MllibError, layout
from mllib.checks import NAME, SEED, SIZE, Range, setting
from mllib.labels import classes
from mllib.loaders.gpu import BatchPrep, DevicePrefetcher
from mllib.store import NotFound, Store
from mllib.training.data import base_dataset, datasets, loaders, tracker
from mllib.training.metrics import ConfusionMatrix
from mllib.training.unet import UNet

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything fit() needs. networks/network2d.py's flags are made from these fields (same names; `alias`: also
    the seed's single-dash spelling), so a default, its help and its range are said once, here."""

    trainingset: str = setting(layout.coco_instances("coco", "train2017"), "key of the training annotation JSON "
                               "in the store", alias=True)
    train_image_path: str = setting(layout.coco_images("coco", "train2017"), "key prefix of the training images",
                                    alias=True)
    valset: str = setting(layout.coco_instances("coco", "val2017"), "key of the validation annotation JSON ('' = "
                          "hold out --val_fraction of the training set)", alias=True)
    val_image_path: str = setting(layout.coco_images("coco", "val2017"), "key prefix of the validation images",
                                  alias=True)
    val_fraction: float = setting(0.1, "held-out fraction when --valset is ''",
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
    imflags: int = setting(1, "cv2 imread flags (1 color, 0 gray)", alias=True)
    batch_size: int = setting(8, "images per step (per rank)", alias=True, check=Range(1))
    epochs: int = setting(10, "epochs to train", alias=True, check=Range(1))
    max_steps: int = setting(0, "stop after this many steps (0: no limit)", alias=True, check=Range(0))
    learning_rate: float = setting(1e-3, "AdamW learning rate", alias=True, check=Range(0, lo_open=True, real=True))
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
            raise MllibError(f"--device must be auto, cpu, cuda, cuda:N or mps (got {self.device!r})")
        if self.records is not None:
            NAME.require("--records", self.records)
        if self.records is not None and self.source is not None:
            raise MllibError("--source and --records are two ways to give the data: use one")
        if self.unordered and self.checkpoint_every:
            raise MllibError("--unordered takes batches in the order workers finish them, so a step count does not "
                             "say which were consumed: use --checkpoint_every 0 with it (checkpoints at epoch ends)")
        if min(self.height, self.width) < 2**self.model_depth:
            raise MllibError(f"--height and --width must be at least 2 ** --model_depth = {2**self.model_depth} (the "
                             f"UNet halves them {self.model_depth} times); got {self.height}x{self.width}")


# the values every numeric setting may take, from the fields (network2d's flags have the same names)
LIMITS = {f.name: f.metadata["check"] for f in fields(TrainConfig) if f.metadata.get("check") is not None}

# what a resumed run must share with its checkpoint (the data, its order and the model); anything else may change:
# --num_workers and the number of ranks (the position is elastic), --epochs, --max_steps, --prefetch, the
# checkpoint and logging flags, --device, --amp
RESUME_FIXED = ("trainingset", "train_image_path", "valset", "val_image_path", "val_fraction", "source", "records",
                "class_dictionary", "height", "width", "imflags", "batch_size", "seed", "skip_bad", "normalize",
                "model_width", "model_depth")

EXIT_STOPPED = 75  # network2d.py's status after a SIGTERM/SIGINT stop with its checkpoint written (EX_TEMPFAIL)
EXIT_GRACE_EXPIRED = 143  # ... and when the stop took longer than --stop_grace_s (the last whole checkpoint stays)


class Stopped(Exception):
    """Training stopped on a signal after writing a checkpoint; `--resume` continues exactly."""

    def __init__(self, signame: str, step: int, url: str, rank: int = 0):
        super().__init__(f"stopped by {signame} at step {step}; checkpoint {url}; continue with --resume")
        self.signame, self.step, self.url, self.rank = signame, step, url, rank


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
            raise MllibError("--device cuda asked for, but no CUDA device is available (use --device cpu)")
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


def load_checkpoint(store: Store, model_name: str, device) -> dict:
    """A checkpoint, loaded with weights_only=True: tensors and plain types only, never code from the store."""
    key = checkpoint_key(model_name)
    try:
        data = store.get_bytes(key)
    except NotFound:
        raise MllibError(f"--resume: no checkpoint at {store.url_for(key)}; train without --resume first") from None
    try:
        return torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling errors come in many types; all mean "not a safe checkpoint"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MllibError(f"checkpoint {store.url_for(key)} cannot be loaded as weights only "
                         f"(it holds more than tensors and plain types, or is corrupt): {first[:300]}") from None


def loss_fn(ignore: int) -> nn.Module:
    return nn.CrossEntropyLoss(ignore_index=ignore)


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


@torch.no_grad()
def evaluate(model, batches, device, n_classes: int, ignore: int, amp_dtype=None) -> ConfusionMatrix:
    """Confusion matrix over (images, labels) batches already on the device; counted on the device, read once."""
    model.eval()
    counts = torch.zeros(n_classes * n_classes, dtype=torch.int64, device=device)
    for images, labels in batches:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            pred = model(images).argmax(1)
        t = labels.reshape(-1)
        keep = (t != ignore) & (t >= 0) & (t < n_classes)
        p = pred.reshape(-1)[keep].clamp(0, n_classes - 1)
        counts += torch.bincount(t[keep] * n_classes + p, minlength=n_classes * n_classes)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(counts)
    model.train()
    cm = ConfusionMatrix(n_classes, ignore)
    cm.matrix = counts.cpu().numpy().reshape(n_classes, n_classes)
    return cm


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
    saved = ck.get("config") or {}
    for name in RESUME_FIXED:
        if name in saved and saved[name] != getattr(cfg, name):
            raise MllibError(f"--resume: the checkpoint was made with --{name} {saved[name]!r}, this run has "
                             f"{getattr(cfg, name)!r}; use the same value, or another --model_name for a new run")


def _resume(run: _Run) -> tuple[int, int, list, dict | None]:
    ck = load_checkpoint(run.store, run.cfg.model_name, run.device)
    check_resumable(run.cfg, ck)
    epoch, step, history = restore(run.model, run.optimizer, run.scaler, ck)
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
            "position": position, "epoch_stats": stats}


def _save(run: _Run, epoch: int, complete: bool, step: int, history: list, metrics_path: Path, position=None) -> None:
    with open(metrics_path, "a") as f:
        f.write(json.dumps(history[-1]) + "\n")
    save_checkpoint(run.store, run.cfg.model_name, _state(run, epoch, complete, step, history, position))
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
    feed = DevicePrefetcher(loader, run.prep)
    bar = tqdm(total=len(loader), desc=f"epoch {epoch}", disable=run.rank != 0 or cfg.no_progress,
               dynamic_ncols=True)
    stats = dict(stats or {"loss_sum": 0.0, "steps": 0, "seen": 0, "seconds": 0.0, "wait": 0.0})
    loss_sum = torch.zeros((), device=run.device)
    criterion = loss_fn(run.class_dict.ignore)
    seen = steps = 0
    t0 = time.perf_counter()

    def so_far() -> dict:  # the epoch's figures up to this step, the interrupted part included
        return {"loss_sum": stats["loss_sum"] + float(loss_sum), "steps": stats["steps"] + steps,
                "seen": stats["seen"] + seen, "seconds": stats["seconds"] + time.perf_counter() - t0,
                "wait": stats["wait"] + feed.wait}

    for batch in feed:
        loss_sum += train_step(run.net, batch, run.optimizer, criterion, run.device, run.amp_dtype, run.scaler)
        step += 1
        steps += 1
        seen += len(batch[0]) * run.world
        if steps % max(1, cfg.log_every) == 0 or steps == len(loader):
            elapsed = time.perf_counter() - t0  # reading the loss here is the loop's only host sync
            bar.set_postfix(loss=f"{float(loss_sum) / steps:.4f}", img_s=f"{seen / elapsed:.1f}",
                            data_wait=f"{100 * feed.wait / elapsed:.0f}%")
        bar.update(1)
        if step >= max_steps:
            break
        checkpoint, stop = ctl.after_step(step)
        if checkpoint:  # the position counts the steps taken, never what the loader holds ahead
            position = pos.state(epoch, 0 if cfg.unordered else steps)  # unordered: the epoch is run again
            if run.rank == 0:
                save_checkpoint(run.store, cfg.model_name,
                                _state(run, epoch, False, step, history, position, so_far()))
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
    batch = run.prep((images, labels))
    return round(step_rate(run.net, run.optimizer, criterion, batch, run.device, n, run.amp_dtype, run.scaler), 2)


def fit(cfg: TrainConfig, store: Store) -> dict | None:
    """Train as cfg says; returns the last epoch's metrics on rank 0 (None on the other ranks)."""
    with process_group() as (rank, world, local_rank):
        device = pick_device(cfg.device, local_rank)
        torch.manual_seed(cfg.seed + rank)
        train_ds, val_ds = datasets(cfg, store, cfg.class_dictionary, rank, world)
        class_dict = base_dataset(train_ds).classes if cfg.source else classes.load(cfg.class_dictionary or "coco")
        train_loader, sampler, val_loader = loaders(cfg, train_ds, val_ds, device, rank, world)
        in_ch = 1 if cfg.imflags == 0 else 3
        model = UNet(in_ch, class_dict.classes, width=cfg.model_width, depth=cfg.model_depth).to(device)
        model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=1e-4)
        amp_dtype, scaler = _amp(cfg, device)
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
            if world > 1 else model
        if cfg.compile:
            net = torch.compile(net)
        run = _Run(cfg, store, rank, world, device, class_dict, model, net, optimizer, amp_dtype, scaler,
                   BatchPrep(device, cfg.normalize))
        epoch, step, history, (position, stats) = _resume(run) if cfg.resume else (0, 0, [], (None, None))
        pos = tracker(cfg, train_ds, sampler)
        ctl = _Control(cfg, rank, world)
        with ctl.signals():
            return _train(run, train_loader, pos, ctl, val_loader, train_ds, epoch, step, history, position, stats)


def _train(run: _Run, train_loader, pos, ctl: _Control, val_loader, train_ds, epoch: int, step: int, history: list,
           position: dict | None, stats: dict | None):
    cfg = run.cfg
    if cfg.unordered and run.rank == 0:
        log.info("--unordered: checkpoints at epoch ends; a stop on a signal runs its epoch again on --resume")
    metrics_path = Path(cfg.metrics_file or layout.run_metrics(cfg.model_name))
    if run.rank == 0:
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
    last: dict = history[-1] if history else {}
    max_steps = cfg.max_steps if cfg.max_steps and cfg.max_steps > 0 else math.inf
    gpu_rate = _measure_step_rate(run, loss_fn(run.class_dict.ignore)) \
        if epoch < cfg.epochs and step < max_steps else None
    while epoch < cfg.epochs and step < max_steps:
        resumed = position is not None and position["epoch"] == epoch
        pos.begin(epoch, position if resumed else None)
        base_dataset(train_ds).set_epoch(epoch)
        step, seen, elapsed, wait, loss, complete, taken = _epoch(run, train_loader, epoch, step, max_steps, ctl,
                                                                  pos, stats if resumed else None, history)
        position = stats = None
        cm = evaluate(run.net, DevicePrefetcher(val_loader, run.prep), run.device, run.class_dict.classes,
                      run.class_dict.ignore, run.amp_dtype) if val_loader is not None else None
        elapsed = max(elapsed, 1e-9)
        last = {"epoch": epoch, "step": step, "train_loss": loss, "images_per_s": round(seen / elapsed, 2),
                "data_wait_fraction": round(wait / elapsed, 4), "seconds": round(elapsed, 2),
                "gpu_only_images_per_s": round(gpu_rate * run.world, 2) if gpu_rate else None,
                "vs_gpu_only": round(seen / elapsed / (gpu_rate * run.world), 3) if gpu_rate else None,
                "device": str(run.device), "world_size": run.world,
                "val": cm.report(run.class_dict.names) if cm is not None else None}
        history.append(last)
        if run.rank == 0:  # cut short by --max_steps: the position says where the epoch goes on
            _save(run, epoch, complete, step, history, metrics_path, None if complete else pos.state(
                epoch, 0 if cfg.unordered else taken))
            miou = last["val"]["miou"] if last["val"] else None
            log.info("epoch %d: loss %.4f, val mIoU %s, %.1f images/s, data wait %.0f%%", epoch,
                     last["train_loss"] or float("nan"), miou, last["images_per_s"], 100 * last["data_wait_fraction"])
        ctl.saved()
        epoch += 1
    if run.world > 1:
        torch.distributed.barrier()
    return last if run.rank == 0 else None
