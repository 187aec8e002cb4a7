"""The device end of the data path: compact uint8 batches in, normalized float batches on the GPU out.

    loader = DataLoader(CocoDataset(..., astype="uint8", normalize="none", label_dtype="uint8"),
                        batch_size=32, num_workers=15, pin_memory=True, worker_init_fn=worker_init_fn,
                        collate_fn=SlotCollate())
    prep = BatchPrep(device)                           # ImageNet mean/std, channels_last, float32
    for images, labels in DevicePrefetcher(loader, prep):
        loss = criterion(model(images), labels)        # batch k+1 is being copied while this step runs

Workers send 1 byte per pixel and channel and 1 byte per label pixel (a 512x512 sample: 1 MB instead of the
5 MB of float32 + int64); the float conversion, normalization and channels_last layout run on the GPU for the
whole batch, where they cost microseconds.
"""

from __future__ import annotations

import time

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BatchPrep:
    """uint8 N x C x H x W images -> float (x / 255 - mean) / std on `device`; labels -> int64 on `device`.

    normalize: "imagenet" (the default), "image" (each image by its own per-channel mean and std, as
    CocoDataset's normalize="image"), "none" (x / 255), or ((mean...), (std...)) on the 0..1 scale.
    """

    def __init__(self, device, normalize="imagenet", channels_last: bool = True, dtype=torch.float32):
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.dtype = dtype
        self.per_image = normalize == "image"
        if normalize == "imagenet":
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        elif normalize in ("none", "image"):
            mean, std = (0.0,), (1.0,)
        else:
            mean, std = normalize
        m = torch.tensor(mean, dtype=torch.float32) * 255.0
        s = torch.tensor(std, dtype=torch.float32) * 255.0
        self.shift = (-m / s).view(1, -1, 1, 1).to(self.device)
        self.scale = (1.0 / s).view(1, -1, 1, 1).to(self.device)

    def images(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if x.dim() == 3:  # N x H x W grayscale
            x = x.unsqueeze(1)
        if self.channels_last and x.shape[1] > 1:
            x = x.contiguous(memory_format=torch.channels_last)
        if not x.is_floating_point():
            x = x.to(torch.float32)
        if self.per_image:
            mean = x.mean(dim=(2, 3), keepdim=True)
            std = x.std(dim=(2, 3), keepdim=True).clamp_min(1e-6)
            x = (x - mean) / std
        else:
            c = x.shape[1]
            scale = self.scale if self.scale.shape[1] in (1, c) else self.scale[:, :c]
            shift = self.shift if self.shift.shape[1] in (1, c) else self.shift[:, :c]
            x = torch.addcmul(shift, x, scale)
        return x.to(self.dtype)

    def labels(self, y: torch.Tensor) -> torch.Tensor:
        return y.to(self.device, non_blocking=True).long()

    def __call__(self, batch):
        return self.images(batch[0]), self.labels(batch[1])


class DevicePrefetcher:
    """Iterate a DataLoader as (images, labels) ready on the device, batch k+1 copied (on a side CUDA stream)
    while batch k computes. `wait` is the time the host spent waiting for the loader (the data-wait)."""

    def __init__(self, loader, prep: BatchPrep):
        self.loader = loader
        self.prep = prep
        self.wait = 0.0
        self.cuda = prep.device.type == "cuda"

    def __len__(self) -> int:
        return len(self.loader)

    def _next(self, it, stream):
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return None
        finally:
            self.wait += time.perf_counter() - t0
        if stream is None:
            return self.prep(batch)
        with torch.cuda.stream(stream):
            out = self.prep(batch)
        return out

    def __iter__(self):
        it = iter(self.loader)
        stream = torch.cuda.Stream(self.prep.device) if self.cuda else None
        nxt = self._next(it, stream)
        while nxt is not None:
            cur = nxt
            if stream is not None:
                main = torch.cuda.current_stream(self.prep.device)
                main.wait_stream(stream)
                for t in cur:  # memory made on the side stream is now used on the main one
                    t.record_stream(main)
            yield cur  # the caller enqueues step k; batch k+1's copy below runs beside it on the side stream
            nxt = self._next(it, stream)
