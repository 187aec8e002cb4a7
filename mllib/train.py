"""Training a segmentation network on CocoDataset (PyTorch): the logic behind networks/network2d.py.

Single process, or one process per GPU under torchrun (DistributedDataParallel + DistributedSampler):

    torchrun --nproc_per_node 8 networks/network2d.py --store s3://coco ...
    torchrun --nnodes 2 --node_rank 0 --master_addr HOST --nproc_per_node 8 networks/network2d.py ...

Cross-entropy that ignores 255, per-class IoU and mIoU on validation after each epoch, metrics appended to a
JSON lines file, checkpoints (model, optimizer, epoch, step, metrics) written atomically to the store under
models/<model_name>/, and --resume to continue from the last one.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mllib import MllibError, classes
from mllib.cocodataset import CocoDataset
from mllib.metrics import ConfusionMatrix
from mllib.store import NotFound, Store
from mllib.unet import UNet

log = logging.getLogger(__name__)


def distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); initializes the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    if world > 1:
        return torch.distributed.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


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
    return f"models/{model_name}/checkpoint.pt"


def save_checkpoint(store: Store, model_name: str, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    store.put_bytes(checkpoint_key(model_name), buf.getvalue())  # atomic on both backends


def load_checkpoint(store: Store, model_name: str, device) -> dict:
    try:
        data = store.get_bytes(checkpoint_key(model_name))
    except NotFound:
        raise MllibError(
            f"--resume: no checkpoint at {store.url_for(checkpoint_key(model_name))}; train without --resume first"
        ) from None
    return torch.load(io.BytesIO(data), map_location=device, weights_only=False)


def loss_fn(ignore: int) -> nn.Module:
    return nn.CrossEntropyLoss(ignore_index=ignore)


def train_step(model, batch, optimizer, criterion, device, amp_dtype=None, scaler=None) -> float:
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
    return float(loss.detach())


@torch.no_grad()
def evaluate(model, loader, device, n_classes: int, ignore: int, amp_dtype=None) -> ConfusionMatrix:
    model.eval()
    cm = ConfusionMatrix(n_classes, ignore)
    for batch in loader:
        images = batch[0].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            pred = model(images).argmax(1)
        cm.update(batch[1].numpy(), pred.cpu().numpy())
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = torch.from_numpy(cm.matrix).to(device)
        torch.distributed.all_reduce(t)
        cm.matrix = t.cpu().numpy()
    model.train()
    return cm


def _datasets(args, store, class_dict):
    common = dict(class_dictionary=class_dict, height=args.height, width=args.width, imflags=args.imflags,
                  astype="float32", skip_bad=args.skip_bad)
    train = CocoDataset(s3=store, bucket=args.bucket, dataset_desc=args.trainingset,
                        image_paths=args.train_image_path, **common)
    if args.valset:
        val = CocoDataset(s3=store, bucket=args.bucket, dataset_desc=args.valset,
                          image_paths=args.val_image_path or args.train_image_path, enable_transform=False,
                          seed=0, **common)
        return train, val
    # no separate validation set: hold out a fixed fraction of the training images
    n = len(train)
    order = np.random.default_rng(0).permutation(n)
    n_val = max(1, int(round(n * args.val_fraction))) if n > 1 else 0
    val_ds = CocoDataset(s3=store, bucket=args.bucket, dataset_desc=args.trainingset,
                         image_paths=args.train_image_path, enable_transform=False, seed=0, **common)
    return (torch.utils.data.Subset(train, order[n_val:].tolist()),
            torch.utils.data.Subset(val_ds, order[:n_val].tolist()))


def _base(ds):
    return ds.dataset if isinstance(ds, torch.utils.data.Subset) else ds


def fit(args, store: Store) -> dict:
    """Train as args say (see networks/network2d.py for the flags); returns the last metrics."""
    rank, world, local_rank = distributed()
    device = pick_device(args.device, local_rank)
    torch.manual_seed(args.seed + rank)
    class_dict = classes.load(args.class_dictionary)
    train_ds, val_ds = _datasets(args, store, class_dict)
    sampler = torch.utils.data.DistributedSampler(train_ds, world, rank, shuffle=True, seed=args.seed) \
        if world > 1 else None
    val_sampler = torch.utils.data.DistributedSampler(val_ds, world, rank, shuffle=False) if world > 1 else None
    loader_kw = dict(num_workers=args.num_workers, pin_memory=device.type == "cuda",
                     persistent_workers=args.num_workers > 0)
    if args.num_workers > 0:
        loader_kw["prefetch_factor"] = args.prefetch
    train_loader = torch.utils.data.DataLoader(train_ds, batch_size=args.batch_size, shuffle=sampler is None,
                                               sampler=sampler, drop_last=len(train_ds) >= args.batch_size,
                                               **loader_kw)
    val_loader = torch.utils.data.DataLoader(val_ds, batch_size=args.batch_size, sampler=val_sampler,
                                             **loader_kw) if len(val_ds) else None
    in_ch = 1 if args.imflags == 0 else 3
    model = UNet(in_ch, class_dict.classes, width=args.model_width, depth=args.model_depth).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=1e-4)
    amp_dtype = None
    scaler = None
    if args.amp:
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            amp_dtype = torch.bfloat16
        elif device.type == "cuda":
            amp_dtype, scaler = torch.float16, torch.amp.GradScaler("cuda")
        else:
            amp_dtype = torch.bfloat16
    epoch, step, history = 0, 0, []
    if args.resume:
        ck = load_checkpoint(store, args.model_name, device)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        if scaler is not None and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        epoch = ck["epoch"] + (1 if ck.get("epoch_complete", True) else 0)
        step = ck["step"]
        history = ck.get("metrics", [])
        if rank == 0:
            log.info("resumed %s at epoch %d, step %d", checkpoint_key(args.model_name), epoch, step)
    net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model
    criterion = loss_fn(class_dict.ignore)
    metrics_path = Path(args.metrics_file or f"runs/{args.model_name}/metrics.jsonl")
    if rank == 0:
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
    last: dict = history[-1] if history else {}
    max_steps = args.max_steps if args.max_steps and args.max_steps > 0 else math.inf
    from tqdm import tqdm

    while epoch < args.epochs and step < max_steps:
        if sampler is not None:
            sampler.set_epoch(epoch)
        _base(train_ds).set_epoch(epoch)
        net.train()
        t0 = time.perf_counter()
        wait = 0.0
        seen, losses = 0, []
        bar = tqdm(total=len(train_loader), desc=f"epoch {epoch}", disable=rank != 0 or args.no_progress,
                   dynamic_ncols=True)
        t_wait = time.perf_counter()
        for batch in train_loader:
            wait += time.perf_counter() - t_wait
            loss = train_step(net, batch, optimizer, criterion, device, amp_dtype, scaler)
            step += 1
            seen += len(batch[0]) * world
            losses.append(loss)
            elapsed = time.perf_counter() - t0
            bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{seen / elapsed:.1f}", data_wait=f"{100 * wait / elapsed:.0f}%")
            bar.update(1)
            if step >= max_steps:
                break
            t_wait = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.synchronize()
        bar.close()
        elapsed = time.perf_counter() - t0
        complete = step < max_steps or len(losses) == len(train_loader)
        cm = evaluate(net, val_loader, device, class_dict.classes, class_dict.ignore, amp_dtype) \
            if val_loader is not None else None
        last = {"epoch": epoch, "step": step, "train_loss": float(np.mean(losses)) if losses else None,
                "images_per_s": round(seen / elapsed, 2), "data_wait_fraction": round(wait / elapsed, 4),
                "seconds": round(elapsed, 2), "device": str(device), "world_size": world,
                "val": cm.report(class_dict.names) if cm is not None else None}
        history.append(last)
        if rank == 0:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(last) + "\n")
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                     "epoch_complete": complete, "step": step, "metrics": history,
                     "scaler": scaler.state_dict() if scaler is not None else None,
                     "model_config": model.config, "classes": class_dict.to_dict(), "args": vars(args)}
            save_checkpoint(store, args.model_name, state)
            store.put_bytes(f"models/{args.model_name}/metrics.jsonl",
                            "".join(json.dumps(m) + "\n" for m in history).encode())
            miou = last["val"]["miou"] if last["val"] else None
            log.info("epoch %d: loss %.4f, val mIoU %s, %.1f images/s, data wait %.0f%%", epoch,
                     last["train_loss"] or float("nan"), miou, last["images_per_s"], 100 * last["data_wait_fraction"])
        epoch += 1
    if world > 1:
        torch.distributed.barrier()
    return last
