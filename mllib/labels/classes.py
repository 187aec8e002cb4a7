"""Class dictionaries: one table (mllib/datasets/<name>.json) with derived lookups.

    >>> from mllib import classes
    >>> d = classes.load("coco")
    >>> d.lut[3], d.names[2]            # COCO id 3 (car) -> trainId 2 (vehicle)
    (2, 'vehicle')
    >>> label = d.lut[id_image]         # remap a whole id image with one table lookup

Format (the seed's): {"background": 0, "ignore": 255, "classes": 4, "names": [...optional, per trainId],
"objects": [{"id", "name", "trainId", "category", "display", "color": [r, g, b]}, ...]}, and optionally
"ignore_color": [r, g, b], the colour that means ignore in colour-coded label images.
Ids that no object lists map to the ignore value; a label holding such an id (other than the ignore value itself) is
refused by the sources (mllib.sources) as unmapped.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from mllib import MllibError

__all__ = ["ClassDictionary", "ClassDictionaryError", "ClassObject", "available", "load", "validate"]


class ClassDictionaryError(MllibError):
    pass


@dataclass(frozen=True)
class ClassObject:
    id: int
    name: str
    trainId: int  # noqa: N815 - the dictionary's own field name
    category: str
    display: bool
    color: tuple[int, int, int]


class ClassDictionary:
    """A validated class dictionary with its lookup tables."""

    def __init__(self, data: dict, source: str = "<dict>"):
        self.source = source
        self.raw = data
        validate(data, source)
        self.background = int(data["background"])
        self.ignore = int(data["ignore"])
        self.classes = int(data["classes"])
        self.objects = [
            ClassObject(
                int(o["id"]),
                str(o["name"]),
                int(o["trainId"]),
                str(o.get("category", "")),
                bool(o.get("display", True)),
                tuple(int(c) for c in o["color"]),
            )
            for o in data["objects"]
        ]
        self.lut = np.full(256, self.ignore, dtype=np.uint8)
        for o in self.objects:
            self.lut[o.id] = o.trainId
        # the label values a dataset may hold: the listed ids, and the ignore value itself (a label saved with 255
        # where the dataset means "ignore"); any other value is a label the dictionary does not know
        self.mapped = np.zeros(256, dtype=bool)
        self.mapped[[o.id for o in self.objects]] = True
        self.mapped[self.ignore] = True
        # names and colors per trainId: "names" if given, else the category of the first object of that trainId
        names = data.get("names")
        colors = np.zeros((self.classes, 3), dtype=np.uint8)
        derived: list[str | None] = [None] * self.classes
        for o in self.objects:
            if o.trainId < self.classes and derived[o.trainId] is None:
                derived[o.trainId] = o.category or o.name
                colors[o.trainId] = o.color
        self.names = list(names) if names else [n or f"class{i}" for i, n in enumerate(derived)]
        self.colors = colors
        # trainId -> color, 256 entries so any label image can be colorized (ignore -> white)
        self.color_lut = np.zeros((256, 3), dtype=np.uint8)
        self.color_lut[: self.classes] = colors
        self.color_lut[self.ignore] = (255, 255, 255)

    @property
    def name(self) -> str:
        return Path(self.source).stem

    def to_dict(self) -> dict:
        return self.raw

    def by_id(self) -> dict[int, ClassObject]:
        return {o.id: o for o in self.objects}

    def remap(self, ids: np.ndarray) -> np.ndarray:
        """Map an image of dataset ids (uint8) to trainIds with the lookup table."""
        return self.lut[ids]

    def colorize(self, label: np.ndarray) -> np.ndarray:
        """An HxWx3 RGB picture of a trainId label image (ignore is white)."""
        return self.color_lut[np.asarray(label, dtype=np.uint8)]

    def overlay(self, image: np.ndarray, label: np.ndarray, alpha: float = 0.5) -> np.ndarray:
        """Blend the colorized label over an RGB uint8 image where the label is not background."""
        image = np.asarray(image, dtype=np.uint8)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        color = self.colorize(label).astype(np.float32)
        out = image.astype(np.float32)
        mask = np.asarray(label) != self.background
        out[mask] = (1 - alpha) * out[mask] + alpha * color[mask]
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)

    def __repr__(self) -> str:
        return f"ClassDictionary({self.name!r}, classes={self.classes}, objects={len(self.objects)})"


def validate(d: dict, source: str = "<dict>") -> None:
    """Raise ClassDictionaryError naming the offending entry."""

    def fail(msg: str):
        raise ClassDictionaryError(f"class dictionary {source}: {msg}")

    for k in ("background", "ignore", "classes", "objects"):
        if k not in d:
            fail(f"missing top-level field {k!r}")
    classes, ignore = d["classes"], d["ignore"]
    if not isinstance(classes, int) or not 1 <= classes <= 255:
        fail(f"'classes' must be an integer 1..255, got {classes!r}")
    if not isinstance(ignore, int) or not 0 <= ignore <= 255:
        fail(f"'ignore' must be an integer 0..255, got {ignore!r}")
    if not (d["background"] == ignore or 0 <= d["background"] < classes):
        fail(f"'background' {d['background']!r} must be < classes ({classes}) or the ignore value")
    ic = d.get("ignore_color")
    if ic is not None and not (isinstance(ic, list) and len(ic) == 3 and all(isinstance(v, int) and 0 <= v <= 255
                                                                            for v in ic)):
        fail(f"'ignore_color' must be an RGB triple of integers 0..255, got {ic!r}")
    if "names" in d and (not isinstance(d["names"], list) or len(d["names"]) != classes):
        fail(f"'names' must list one name per trainId ({classes})")
    if not isinstance(d["objects"], list) or not d["objects"]:
        fail("'objects' must be a non-empty list")
    seen: dict[int, str] = {}
    for n, o in enumerate(d["objects"]):
        what = f"objects[{n}] ({o.get('name', '?')!r}, id {o.get('id', '?')})" if isinstance(o, dict) else f"objects[{n}]"
        if not isinstance(o, dict):
            fail(f"{what} is not an object")
        for k in ("id", "name", "trainId", "color"):
            if k not in o:
                fail(f"{what}: missing field {k!r}")
        i, t, c = o["id"], o["trainId"], o["color"]
        if not isinstance(i, int) or not 0 <= i <= 255:
            fail(f"{what}: id must be an integer 0..255")
        if i in seen:
            fail(f"{what}: duplicate id {i} (also {seen[i]!r})")
        seen[i] = o["name"]
        if not isinstance(t, int) or not (0 <= t < classes or t == ignore):
            fail(f"{what}: trainId {t!r} must be < classes ({classes}) or the ignore value ({ignore})")
        if not (isinstance(c, list | tuple) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)):
            fail(f"{what}: color must be an RGB triple of integers 0..255, got {c!r}")


def available() -> list[str]:
    """Names of the dictionaries shipped in mllib/datasets."""
    root = resources.files("mllib.datasets")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".json"))


def load(name_or_path: str | os.PathLike | dict | ClassDictionary = "coco") -> ClassDictionary:
    """Load a dictionary by name ('coco', 'cityscapes', 'cityscapes_coco'), by file path, or from a dict."""
    if isinstance(name_or_path, ClassDictionary):
        return name_or_path
    if isinstance(name_or_path, dict):
        return ClassDictionary(name_or_path)
    s = str(name_or_path)
    if os.path.exists(s):
        path = s
        text = Path(s).read_text()
    else:
        if s.endswith(".json"):
            s = os.path.basename(s)[:-5]
        res = resources.files("mllib.datasets") / f"{s}.json"
        if not res.is_file():
            raise ClassDictionaryError(
                f"class dictionary {name_or_path!r} not found: give a file path or one of {', '.join(available())}"
            )
        path, text = f"{s}.json", res.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ClassDictionaryError(f"class dictionary {path}: not valid JSON ({e})") from None
    return ClassDictionary(data, source=path)
