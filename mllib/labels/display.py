"""Pictures of labels: overlays and contact sheets with class names, for looking at what you will train on."""

from __future__ import annotations

import cv2
import numpy as np

from mllib.labels.classes import ClassDictionary


def tile(image: np.ndarray, label: np.ndarray, classes: ClassDictionary, size: int = 256, alpha: float = 0.5,
         caption: str = "") -> np.ndarray:
    """image with the colored label over it, fitted into size x size (RGB uint8)."""
    over = classes.overlay(image, label, alpha)
    h, w = over.shape[:2]
    s = size / max(h, w)
    small = cv2.resize(over, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    out = np.full((size, size, 3), 32, np.uint8)
    out[: small.shape[0], : small.shape[1]] = small
    present = [classes.names[t] for t in np.unique(label) if t < classes.classes and t != classes.background]
    text = " ".join(x for x in (caption, ",".join(present)) if x)
    if text:
        cv2.putText(out, text[:40], (4, size - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def legend(classes: ClassDictionary, width: int) -> np.ndarray:
    names = [(classes.names[t], tuple(int(c) for c in classes.colors[t])) for t in range(classes.classes)]
    names.append(("ignore", (255, 255, 255)))
    per_row = max(1, width // 140)
    rows = (len(names) + per_row - 1) // per_row
    out = np.full((rows * 22 + 4, width, 3), 16, np.uint8)
    for k, (name, color) in enumerate(names):
        x, y = (k % per_row) * 140 + 6, (k // per_row) * 22 + 4
        cv2.rectangle(out, (x, y), (x + 14, y + 14), color, -1)
        cv2.putText(out, name[:16], (x + 20, y + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (230, 230, 230), 1, cv2.LINE_AA)
    return out


def contact_sheet(samples, classes: ClassDictionary, cols: int = 4, size: int = 256) -> np.ndarray:
    """samples: iterable of (image RGB, label, caption). Returns one RGB picture with a legend."""
    tiles = [tile(img, lab, classes, size, caption=cap) for img, lab, cap in samples]
    if not tiles:
        raise ValueError("no samples to show")
    rows = (len(tiles) + cols - 1) // cols
    sheet = np.full((rows * size, cols * size, 3), 0, np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, cols)
        sheet[r * size : (r + 1) * size, c * size : (c + 1) * size] = t
    return np.concatenate([sheet, legend(classes, sheet.shape[1])], axis=0)


def write_png(path, rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"cannot encode {path}")
    with open(path, "wb") as f:
        f.write(buf.tobytes())
