"""type "cvat": CVAT's "Segmentation mask 1.1" export as it unpacks, under imagepath:

    labelmap.txt                          # label:color_rgb:parts:actions, one class a line, in class-id order
    JPEGImages/<name>.jpg
    SegmentationClass/<name>.png          # each pixel the colour of its label in labelmap.txt
    ImageSets/Segmentation/<subset>.txt   # the names of each subset (default.txt, train.txt, ...)

    {"type": "cvat", "imagepath": "cvat", "set": "train"}                     # every subset
    {"type": "cvat", "imagepath": "cvat", "split_file": "cvat/ImageSets/Segmentation/train.txt", "set": "train"}

A colour is the class of its line in labelmap.txt (line k, counting from 0, is class id k); without a
classes_file the dictionary is labelmap.txt's own (trainId = class id, background the first line, 255 ignore),
with one its objects' ids are labelmap.txt's class ids.
"""

from __future__ import annotations

import re

from mllib import layout
from mllib.labels import classes as mclasses
from mllib.sources.base import ColorTable, SourceError, Spec, register
from mllib.sources.folder import FolderSource, read_split
from mllib.store import NotFound, Store


def read_labelmap(store: Store, key: str) -> list[tuple[str, tuple[int, int, int]]]:
    """[(name, (r, g, b))] in class-id order."""
    try:
        text = store.get_bytes(key).decode("utf-8-sig")
    except NotFound:
        raise SourceError(f"{store.url_for(key)} is not in the store: a CVAT 'Segmentation mask 1.1' export has "
                          "labelmap.txt at its top (give the export's folder as imagepath)") from None
    out, seen = [], {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split(":")
        m = re.fullmatch(r"\s*(\d{1,3})\s*,\s*(\d{1,3})\s*,\s*(\d{1,3})\s*", parts[1]) if len(parts) > 1 else None
        if not parts[0].strip() or m is None or any(int(v) > 255 for v in m.groups()):
            raise SourceError(f"{store.url_for(key)} line {n}: expected 'name:r,g,b::', got {line[:80]!r}")
        color = tuple(int(v) for v in m.groups())
        if color in seen:
            raise SourceError(f"{store.url_for(key)} line {n}: colour {list(color)} is also {seen[color]!r}'s")
        seen[color] = parts[0].strip()
        out.append((parts[0].strip(), color))
    if not out or len(out) > 255:
        raise SourceError(f"{store.url_for(key)}: needs 1 to 255 labels, has {len(out)}")
    return out


def labelmap_classes(labelmap, source: str) -> mclasses.ClassDictionary:
    """labelmap.txt's own dictionary: line k is class k (trainId k), background the first line, 255 ignore."""
    return mclasses.ClassDictionary({
        "background": 0, "ignore": 255, "classes": len(labelmap), "names": [n for n, _ in labelmap],
        "objects": [{"id": i, "name": n, "trainId": i, "category": n, "color": list(c)}
                    for i, (n, c) in enumerate(labelmap)]}, source=source)


@register
class CvatSource(FolderSource):
    type = "cvat"
    required = ("imagepath",)
    default_label_suffix = ".png"
    brings_classes = True

    def __init__(self, store: Store, spec: Spec, classes: mclasses.ClassDictionary | None, crowd: str = "class"):
        key = layout.cvat_labelmap(spec.key(spec.imagepath))
        labelmap = read_labelmap(store, key)  # once: the colours, and the dictionary when the entry names none
        table = ColorTable({c: i for i, (_, c) in enumerate(labelmap)}, "labelmap.txt")
        spec = Spec(**{**spec.to_dict(), "label_format": "color"})
        super().__init__(store, spec, classes or labelmap_classes(labelmap, store.url_for(key)), crowd, colors=table)

    @classmethod
    def native_classes(cls, store: Store, spec: Spec) -> mclasses.ClassDictionary:
        key = layout.cvat_labelmap(spec.key(spec.imagepath))
        return labelmap_classes(read_labelmap(store, key), store.url_for(key))

    def prefixes(self) -> tuple[str, str]:
        root = self.spec.key(self.spec.imagepath)
        return layout.cvat_images(root), layout.cvat_labels(root)

    def split_stems(self) -> list[str] | None:
        if self.spec.split_file:
            return super().split_stems()
        lists = sorted(i.key for i in self.store.list(layout.cvat_splits(self.spec.key(self.spec.imagepath)) + "/")
                       if i.key.endswith(".txt"))
        if not lists:
            return None
        return [s for k in lists for s in read_split(self.store, k)]
