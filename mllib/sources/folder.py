"""type "folder": images and label images paired by file stem, the layout most people's own data has.

    {"type": "folder", "imagepath": "images", "labelpath": "masks", "classes_file": "own.json", "set": "train"}
    {"type": "folder", "imagepath": "data", "image_suffix": ".jpg", "label_suffix": "_mask.png"}   # one folder
    {"type": "folder", "imagepath": "JPEGImages", "labelpath": "SegmentationClass",
     "split_file": "ImageSets/Segmentation/train.txt"}                                              # a split list

An image `<imagepath>/<stem><image_suffix>` pairs with the label `<labelpath>/<stem><label_suffix>`; stems may hold
sub-folders. image_suffix defaults to any of .jpg/.jpeg/.png (several: comma-separated), label_suffix to .png,
labelpath to imagepath (then the suffixes must tell images from labels). A split_file (a text key: one stem per
line; several comma-separated: their union) restricts the items to the stems it lists, in the store's key order;
exclude_split (keys, comma-separated) leaves out the stems its lists name (voc2012-aug: SBD train + val less VOC's
lists). label_offset is added to every label value but the dictionary's ignore value before the dictionary maps it
(COCO-Stuff's maps hold COCO id - 1). Labels (label_format):

    index   single-channel PNGs of dataset ids (8-bit L, palette PNGs read as their indices, 16-bit), mapped to
            trainIds by the class dictionary's ids; a value the dictionary does not list (and is not its ignore
            value) is an error naming the file
    color   RGB PNGs (or palette PNGs by their colours): each colour is the dictionary object of that colour
    mat     MATLAB v5 .mat files (label_suffix ".mat"), the integer map mat_field (default GTcls.Segmentation,
            SBD's), read with scipy
    auto    RGB PNGs as color, MAT-files as mat, the others as index

type "cityscapes" is this type with Cityscapes' names: `*_leftImg8bit.png` images under imagepath and
`*_gtFine_labelIds.png` labels under labelpath, mapped by cityscapes_coco.json unless classes_file says otherwise.
"""

from __future__ import annotations

import hashlib

import numpy as np

from mllib.labels import classes as mclasses
from mllib.sources.base import (
    IMAGE_SUFFIXES,
    ColorTable,
    LabelReader,
    MissingLabel,
    Source,
    SourceError,
    Spec,
    check_shape,
    get_or_none,
    register,
    train_counts,
    value_counts,
)
from mllib.store import NotFound, Store


def _suffixes(text: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    if not text:
        return default
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


def read_split(store: Store, key: str) -> list[str]:
    """The stems a split list names (one a line; blank lines and # comments skipped; a line's first field)."""
    try:
        text = store.get_bytes(key).decode("utf-8-sig")
    except NotFound:
        raise SourceError(f"split_file {store.url_for(key)} is not in the store") from None
    except UnicodeDecodeError:
        raise SourceError(f"split_file {store.url_for(key)} is not UTF-8 text") from None
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line.split()[0].strip("/"))
    return out


@register
class FolderSource(Source):
    type = "folder"
    required = ("imagepath",)
    shippable = True
    default_image_suffixes: tuple[str, ...] = IMAGE_SUFFIXES
    default_label_suffix = ".png"

    def __init__(self, store: Store, spec: Spec, classes: mclasses.ClassDictionary, crowd: str = "class",
                 colors: ColorTable | None = None):
        super().__init__(store, spec, classes)
        self.image_prefix, self.label_prefix = self.prefixes()
        self.image_suffixes = _suffixes(spec.image_suffix, self.default_image_suffixes)
        self.label_suffix = (spec.label_suffix or self.default_label_suffix).strip()
        same = self.image_prefix == self.label_prefix
        if same and any(s.endswith(self.label_suffix) or self.label_suffix.endswith(s) for s in self.image_suffixes):
            raise SourceError(f"{self.describe()}: images and labels share the folder {self.image_prefix}/ and their "
                              f"suffixes ({', '.join(self.image_suffixes)} / {self.label_suffix}) do not tell them "
                              "apart: give labelpath, or image_suffix and label_suffix (e.g. '.jpg' and '_mask.png')")
        self.reader = LabelReader(self.classes, spec.label_format, colors, spec.label_offset, spec.mat_field)
        if same:  # one folder, one listing for both
            listing = list(self.store.list(self.image_prefix + "/"))
            images = self._scan(self.image_prefix, self.image_suffixes, exclude=self.label_suffix, listing=listing)
            labels = self._scan(self.label_prefix, (self.label_suffix,), exclude=None, listing=listing)
        else:  # the two listings at once: a listing is mostly waiting for the store's pages
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(1, thread_name_prefix="mllib-list") as pool:
                listed = pool.submit(self._scan, self.label_prefix, (self.label_suffix,), None)
                images = self._scan(self.image_prefix, self.image_suffixes, exclude=None)
                labels = listed.result()
        split = self.split_stems()
        excluded = self.excluded_stems()
        if excluded:
            images = {s: k for s, k in images.items() if s not in excluded}
            labels = {s: k for s, k in labels.items() if s not in excluded}
            split = None if split is None else [s for s in split if s not in excluded]
        if split is not None:
            wanted = set(split)
            listed_missing = [s for s in dict.fromkeys(split) if s not in images]
            self.unpaired += [{"key": f"{self.image_prefix}/{s}", "reason": "listed in the split file, no image"}
                              for s in listed_missing]
            images = {s: k for s, k in images.items() if s in wanted}
            labels = {s: k for s, k in labels.items() if s in wanted}
        self.unpaired += [{"key": k, "reason": "label without an image"} for s, k in sorted(labels.items())
                          if s not in images]
        self.stems = sorted(images, key=lambda s: images[s])
        self.image_keys = [images[s] for s in self.stems]
        self.label_keys = [labels.get(s) for s in self.stems]
        if not self.stems:
            raise SourceError(f"{self.describe()}: no images ({', '.join(self.image_suffixes)}) under "
                              f"{store.url_for(self.image_prefix)}/" + (" in the split list" if split else ""))

    def prefixes(self) -> tuple[str, str]:
        s = self.spec
        image = s.key(s.imagepath)
        return image, s.key(s.labelpath) if s.labelpath else image

    def split_stems(self) -> list[str] | None:
        """The stems of the split list(s), in order (several lists, comma-separated: their union); None without a
        split_file."""
        if not self.spec.split_file:
            return None
        stems: dict[str, None] = {}
        for k in _suffixes(self.spec.split_file, ()):
            stems.update(dict.fromkeys(read_split(self.store, self.spec.key(k))))
        return list(stems)

    def excluded_stems(self) -> set[str]:
        """The stems the exclude_split list(s) name: left out of the items and of the split lists."""
        out: set[str] = set()
        for k in _suffixes(self.spec.exclude_split, ()):
            out.update(read_split(self.store, self.spec.key(k)))
        return out

    def _scan(self, prefix: str, suffixes: tuple[str, ...], exclude: str | None,
              listing: list | None = None) -> dict[str, str]:
        """{stem: key} of the keys under prefix/ (listed now, or `listing`, the listing of prefix/ already read)
        that end with one of suffixes (case-insensitive)."""
        out: dict[str, str] = {}
        lower = tuple(s.lower() for s in suffixes)
        for info in self.store.list(prefix + "/") if listing is None else listing:
            rel = info.key[len(prefix) + 1:]
            low = rel.lower()
            if _hidden(rel) or (exclude and low.endswith(exclude.lower())):
                continue
            for s in lower:
                if low.endswith(s) and len(rel) > len(s):
                    stem = rel[: len(rel) - len(s)]
                    if stem in out:
                        raise SourceError(f"{self.describe()}: {out[stem]} and {info.key} have the same stem "
                                          f"{stem!r}: give image_suffix to choose one")
                    out[stem] = info.key
                    break
        return out

    def __len__(self) -> int:
        return len(self.stems)

    def item(self, row: int) -> tuple[str, str, str]:
        key = self.image_keys[row]
        return key, self.stems[row].rsplit("/", 1)[-1], key

    def label_key(self, row: int) -> str | None:
        return self.label_keys[row]

    def _label_bytes(self, row: int, fetched: dict | None) -> tuple[str, bytes]:
        key = self.label_keys[row]
        if key is None:
            data = None
        else:
            data = fetched.get("label") if fetched is not None else get_or_none(self.store, key)
        if data is None:
            want = key or f"{self.label_prefix}/{self.stems[row]}{self.label_suffix}"
            raise MissingLabel(f"{self.image_keys[row]}: no label ({want} is not in the store)")
        return key, data

    def label(self, row: int, h: int, w: int, where: str, fetched: dict | None = None) -> np.ndarray:
        key, data = self._label_bytes(row, fetched)
        return self.reader.train_ids(data, key, (h, w))

    def label_counts(self, row: int, h: int, w: int, where: str, fetched: dict | None = None):
        key, data = self._label_bytes(row, fetched)
        return self.reader.train_ids_counts(data, key, (h, w))

    def inspect(self, row: int, fetched: dict, hw: tuple[int, int] | None) -> dict:
        key, data = self._label_bytes(row, fetched)
        ids, bad, colour, binary, counts = self.reader.ids(data, key)
        check_shape(ids, key, hw)
        if bad:
            return {"values": bad, "colour": colour, "train": None, "binary": False, "label_key": key}
        counts = value_counts(ids) if counts is None else counts
        return {"values": {}, "train": train_counts(counts, self.classes), "binary": binary, "label_key": key}

    def identity(self) -> bytes:
        h = hashlib.sha256()
        for k in self.image_keys:
            h.update(k.encode() + b"\0")
        return h.digest()


@register
class CityscapesSource(FolderSource):
    type = "cityscapes"
    required = ("imagepath", "labelpath")
    default_image_suffixes = ("_leftImg8bit.png",)
    default_label_suffix = "_gtFine_labelIds.png"
    default_classes = "cityscapes_coco"
