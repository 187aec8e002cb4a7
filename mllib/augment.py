"""Augmentation shared by every loader: one affine warp of image and label, drawn from (seed, epoch, sample id).

    aug = Augment(rotate=15, scale_min=0.75, scale_max=1.25)            # the parameters, grouped
    m = aug.matrix((h, w), (512, 512), key=(seed, epoch, i))            # 2x3 matrix, or None for an exact copy
    image, label = warp(image, label, m, (512, 512), ignore=255)        # bilinear image, nearest-neighbour label

CocoDataset (store -> samples) and RecordsDataset (TFRecord shards -> samples) both use it, so the same seed and
sample id give the same augmentation on either path. Without augmentation the output is a center crop/pad at
integer offsets (pixels copied, never resampled), or with resize="fit" the whole image scaled to fit, then padded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from mllib import MllibError
from mllib.checks import SEED64, SIZE, Range, dtype


def affine(src_hw, out_hw, *, scale=1.0, angle=0.0, flip_x=False, flip_y=False, shift=(0.0, 0.0)) -> np.ndarray:
    """2x3 matrix mapping source pixels to output pixels: flip, scale and rotate about the source center, then put
    that center at the output center + shift (x, y)."""
    h, w = src_hw
    oh, ow = out_hw
    to_origin = np.array([[1, 0, -(w - 1) / 2], [0, 1, -(h - 1) / 2], [0, 0, 1]], np.float64)
    flip = np.diag([-1.0 if flip_x else 1.0, -1.0 if flip_y else 1.0, 1.0])
    a = math.radians(angle)
    rot = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]]) * [[scale], [scale], [1]]
    back = np.array([[1, 0, (ow - 1) / 2 + shift[0]], [0, 1, (oh - 1) / 2 + shift[1]], [0, 0, 1]], np.float64)
    return (back @ rot @ flip @ to_origin)[:2]


# the values each augmentation parameter may take
AUGMENT_LIMITS = {"rotate": Range(0, 180, real=True), "offset": Range(0, 1, real=True),
                  "scale_min": Range(0, 100, lo_open=True, real=True),
                  "scale_max": Range(0, 100, lo_open=True, real=True)}


@dataclass(frozen=True)
class Augment:
    """The augmentation parameters (the seed's names), and the matrix they give for one sample."""

    enable: bool = True
    flipX: bool = True  # noqa: N815 - the seed's parameter names
    flipY: bool = False  # noqa: N815
    rotate: float = 15.0
    scale_min: float = 0.75
    scale_max: float = 1.25
    offset: float = 0.1
    resize: str = "crop"

    def __post_init__(self):
        for name, allowed in AUGMENT_LIMITS.items():
            allowed.require(name, getattr(self, name))
        if self.scale_max < self.scale_min:
            raise MllibError(f"need 0 < scale_min <= scale_max, got {self.scale_min}, {self.scale_max}")
        if self.resize not in ("crop", "fit"):
            raise MllibError("resize must be 'crop' (center crop/pad) or 'fit' (resize keeping aspect, then pad)")

    def matrix(self, src_hw, out_hw, key) -> np.ndarray | None:
        """The sample's 2x3 matrix; None means an exact center crop/pad (see `place`). `key` seeds the draw."""
        h, w = src_hw
        oh, ow = out_hw
        if not self.enable:
            if self.resize == "crop":
                return None
            return affine(src_hw, out_hw, scale=min(oh / h, ow / w))
        rng = np.random.default_rng(list(key))
        fx = bool(self.flipX and rng.random() < 0.5)
        fy = bool(self.flipY and rng.random() < 0.5)
        angle = float(rng.uniform(-self.rotate, self.rotate)) if self.rotate else 0.0
        s = float(rng.uniform(self.scale_min, self.scale_max))
        # extent of the scaled, rotated image; a random crop inside it where it is larger than the output
        a = math.radians(angle)
        ew = s * (abs(w * math.cos(a)) + abs(h * math.sin(a)))
        eh = s * (abs(w * math.sin(a)) + abs(h * math.cos(a)))
        sx = rng.uniform(-1, 1) * max(0.0, (ew - ow) / 2) + rng.uniform(-1, 1) * self.offset * ow
        sy = rng.uniform(-1, 1) * max(0.0, (eh - oh) / 2) + rng.uniform(-1, 1) * self.offset * oh
        return affine(src_hw, out_hw, scale=s, angle=angle, flip_x=fx, flip_y=fy, shift=(sx, sy))


def place(src: np.ndarray, out_hw, fill) -> np.ndarray:
    """Center crop/pad at integer offsets: every pixel copied exactly, `fill` where the source does not reach."""
    oh, ow = out_hw
    h, w = src.shape[:2]
    out = np.empty((oh, ow) + src.shape[2:], src.dtype)
    out[...] = fill
    # where the source's top-left corner lands: (oh - h) // 2 rows of padding on top, or (h - oh) // 2 cropped
    dy = (oh - h) // 2 if oh >= h else -((h - oh) // 2)
    dx = (ow - w) // 2 if ow >= w else -((w - ow) // 2)
    ys, xs = max(0, -dy), max(0, -dx)
    yd, xd = max(0, dy), max(0, dx)
    ch, cw = min(h - ys, oh - yd), min(w - xs, ow - xd)
    out[yd : yd + ch, xd : xd + cw] = src[ys : ys + ch, xs : xs + cw]
    return out


def output_settings(height, width, seed, label_dtype) -> tuple[int, int, int | None, np.dtype]:
    """A dataset's output size, seed and label dtype, checked (one MllibError line naming the argument)."""
    lab = dtype("label_dtype", label_dtype, "iu", "an integer dtype such as 'uint8' or 'int64'")
    if seed is not None:
        seed = int(SEED64.require("seed", seed))
    return int(SIZE.require("height", height)), int(SIZE.require("width", width)), seed, lab


def warp(img: np.ndarray, label: np.ndarray, m: np.ndarray | None, out_hw, ignore: int, border=0):
    """(image, label) at out_hw: one warp (bilinear image, nearest-neighbour label, `ignore` where the source does
    not reach), or an exact crop/pad when m is None. `border` is a number or one value per channel."""
    if isinstance(border, tuple) and img.ndim == 3 and len(border) < img.shape[2]:
        border = border + (0.0,) * (img.shape[2] - len(border))
    if m is None:
        return place(img, out_hw, border), place(label, out_hw, ignore)
    size = (out_hw[1], out_hw[0])
    out = cv2.warpAffine(img, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=border)
    lab = cv2.warpAffine(label, m, size, flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=ignore)
    return out, lab


def channels(img: np.ndarray) -> int:
    """Image channels, not counting the padding channel of an RGBA working copy (images.decode(rgba=True))."""
    return 1 if img.ndim == 2 else min(3, img.shape[2])


def chw_uint8(img: np.ndarray) -> np.ndarray:
    """HxWxC (or HxW) uint8 -> contiguous CxHxW uint8: the compact form that crosses the process boundary.
    An RGBA working copy gives its 3 RGB planes. One pass: cv2.split writes the planes straight into the output
    (the padding channel into a scratch plane); a plane it had to put elsewhere is copied in."""
    if img.ndim == 2:
        return img[None]
    h, w, n = img.shape
    c = channels(img)
    out = np.empty((c, h, w), np.uint8)
    dst = [*out, *(np.empty((h, w), np.uint8) for _ in range(n - c))]
    got = cv2.split(img, dst)
    for k in range(c):
        if got[k].ctypes.data != out[k].ctypes.data:
            out[k] = got[k]
    return out
