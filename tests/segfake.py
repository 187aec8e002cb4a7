"""Small generated segmentation data in the layouts people keep it in: a folder of images and label PNGs (palette,
8-bit grey, 16-bit, RGB colour), split lists, and CVAT's "Segmentation mask 1.1" export. Each maker returns the
ground truth: the dataset ids of every label, from which a test computes the expected trainIds itself."""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

from .cocofake import jpeg

# a small dictionary: ids 0 background, 1 cat, 2 dog, 5 car (-> vehicle), 255 ignore; colours per id
OWN = {"background": 0, "ignore": 255, "classes": 3, "names": ["background", "animal", "vehicle"],
       "objects": [{"id": 0, "name": "background", "trainId": 0, "color": [0, 0, 0]},
                   {"id": 1, "name": "cat", "trainId": 1, "color": [200, 0, 0]},
                   {"id": 2, "name": "dog", "trainId": 1, "color": [0, 200, 0]},
                   {"id": 5, "name": "car", "trainId": 2, "color": [0, 0, 200]}],
       "ignore_color": [255, 255, 255]}
OWN_IDS = {0: 0, 1: 1, 2: 1, 5: 2}  # id -> trainId, said again here so the tests do not use the dictionary's lut
COLORS = {0: (0, 0, 0), 1: (200, 0, 0), 2: (0, 200, 0), 5: (0, 0, 200)}
PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128, 128, 0, 128] + [0] * (3 * 249) + [224, 224, 192]


def ids_image(h: int, w: int, seed: int, values=(0, 1, 2, 5), border: bool = True) -> np.ndarray:
    """Blocks of the given ids, a 255 border line (VOC's ignore) when border."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((h, w), np.uint8)
    for _ in range(6):
        y, x = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
        ids[y:y + int(rng.integers(4, 16)), x:x + int(rng.integers(4, 20))] = rng.choice(values)
    if border:
        ids[h // 2, :] = 255
    return ids


def png(ids: np.ndarray, mode: str) -> bytes:
    """ids as a label PNG: 'P' (palette, indices = ids), 'L', 'I;16' (16-bit) or 'RGB' (COLORS)."""
    buf = io.BytesIO()
    if mode == "P":
        im = Image.frombytes("P", ids.shape[::-1], ids.tobytes())
        im.putpalette(PALETTE)
        im.save(buf, format="PNG")
    elif mode == "L":
        Image.fromarray(ids).save(buf, format="PNG")
    elif mode == "I;16":
        ok, enc = cv2.imencode(".png", ids.astype(np.uint16))
        assert ok
        return enc.tobytes()
    elif mode == "RGB":
        rgb = np.zeros(ids.shape + (3,), np.uint8)
        for v, c in COLORS.items():
            rgb[ids == v] = c
        rgb[ids == 255] = (255, 255, 255)
        Image.fromarray(rgb).save(buf, format="PNG")
    else:
        raise ValueError(mode)
    return buf.getvalue()


def put_folder(store, root: str, n: int = 5, mode: str = "P", hw=(40, 56), seed: int = 0, image_ext: str = ".jpg",
               label_dir: str = "masks", label_suffix: str = ".png", border: bool = True) -> dict[str, np.ndarray]:
    """root/images/<stem><ext> and root/<label_dir>/<stem><label_suffix>; returns {stem: ids}."""
    truth = {}
    for i in range(n):
        stem = f"img_{seed:02d}_{i:03d}"
        data = jpeg(*hw, seed * 100 + i)
        if image_ext == ".png":
            ok, enc = cv2.imencode(".png", cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
            data = enc.tobytes()
        store.put_bytes(f"{root}/images/{stem}{image_ext}", data)
        ids = ids_image(*hw, seed * 100 + i, border=border)
        store.put_bytes(f"{root}/{label_dir}/{stem}{label_suffix}", png(ids, mode))
        truth[stem] = ids
    return truth


def expected(ids: np.ndarray, table=None, ignore: int = 255) -> np.ndarray:
    """trainIds of an id image, computed value by value (not through the dictionary's lookup table)."""
    table = OWN_IDS if table is None else table
    out = np.full(ids.shape, ignore, np.uint8)
    for v, t in table.items():
        out[ids == v] = t
    return out


LABELMAP = [("background", (0, 0, 0)), ("cat", (250, 50, 83)), ("car", (51, 221, 255))]


def put_cvat(store, root: str, subsets: dict[str, int], hw=(36, 48), seed: int = 3) -> dict[str, np.ndarray]:
    """A CVAT 'Segmentation mask 1.1' export under root: labelmap.txt, JPEGImages, SegmentationClass (RGB colour
    PNGs), SegmentationObject, ImageSets/Segmentation/<subset>.txt; returns {name: labelmap class ids}."""
    store.put_bytes(f"{root}/labelmap.txt", ("# label:color_rgb:parts:actions\n" + "".join(
        f"{n}:{c[0]},{c[1]},{c[2]}::\n" for n, c in LABELMAP)).encode())
    truth, k = {}, 0
    for subset, n in subsets.items():
        names = []
        for _ in range(n):
            name = f"frame_{k:06d}"
            k += 1
            store.put_bytes(f"{root}/JPEGImages/{name}.jpg", jpeg(*hw, seed * 100 + k))
            ids = ids_image(*hw, seed * 100 + k, values=(0, 1, 2), border=False)
            rgb = np.zeros(hw + (3,), np.uint8)
            for v, (_, c) in enumerate(LABELMAP):
                rgb[ids == v] = c
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format="PNG")
            store.put_bytes(f"{root}/SegmentationClass/{name}.png", buf.getvalue())
            store.put_bytes(f"{root}/SegmentationObject/{name}.png", buf.getvalue())
            truth[name] = ids
            names.append(name)
        store.put_bytes(f"{root}/ImageSets/Segmentation/{subset}.txt", ("\n".join(names) + "\n").encode())
    return truth
