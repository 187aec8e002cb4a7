"""Sources: what a dataset in the store is, said once for the conversion, the PyTorch dataset, training and checks.

    from mllib import sources, store
    s = store.connect("s3://coco")
    src = sources.open_source(s, {"type": "folder", "imagepath": "datasets/own/images",
                                  "labelpath": "datasets/own/masks", "classes_file": "datasets/own/own.json"})
    key, source_id, where = src.item(0)
    label = src.label(0, h, w, where, src.fetch(0))          # uint8 trainIds, 255 ignore

    base.py     Spec (one entry's fields), Source (the interface), the registry of types, label readers
    coco.py     "coco": COCO instance (+ stuff) JSON, labels rendered
    folder.py   "folder": images + labels paired by stem (index, palette, 16-bit or colour PNGs, .mat maps);
                "cityscapes": the same with Cityscapes' file names
    cvat.py     "cvat": CVAT's "Segmentation mask 1.1" export (labelmap.txt colours)
    check.py    what checkdataset.py reports: label values, pairs, sizes, class frequencies and weights
    registry.py the public datasets' tables (mllib/datasets/registry/*.json): files, sets, dictionaries

A dataset is a list of specs (JSON, as cocorecord's --datasets and network2d's --source take them) or a registered
name (`named()`: "coco", "cityscapes" and the tables of registry.py: "ade20k", "voc2012", "voc2012-aug", "sbd",
"cocostuff", "mapillary", "bdd100k"; several comma-separated names combine into one class space), plus a class
dictionary per entry.
"""

from __future__ import annotations

import bisect
import hashlib
import re

from mllib import layout
from mllib.labels import classes as mclasses
from mllib.sources import coco, cvat, folder, registry  # noqa: F401 - registers the types
from mllib.sources.base import (
    LabelError,
    MissingLabel,
    Source,
    SourceError,
    Spec,
    UnmappedLabel,
    get,
    load_classes,
    parse_specs,
    register,
    types,
)
from mllib.store import Store

__all__ = ["Concat", "LabelError", "MissingLabel", "Source", "SourceError", "Spec", "UnmappedLabel", "check_class_space", "combined", "entry_classes",
           "get", "load_classes", "named", "names", "open_source", "open_sources", "parse_specs", "register",
           "resolve", "set_classes", "types"]


# ---------------------------------------------------------------------------------------------------------------
# registered names
# ---------------------------------------------------------------------------------------------------------------
def _coco(dataset: str = "coco", store: Store | None = None) -> list[dict]:
    out = []
    for split, set_name in (("train2017", "train"), ("val2017", "val")):
        e = {"type": "coco", "dataset": dataset, "set": set_name, "jsonpath": f"annotations/instances_{split}.json",
             "imagepath": split}
        if store is not None and store.exists(layout.coco_stuff(dataset, split)):
            e["stuffpath"] = f"annotations/stuff_{split}.json"
        if store is None or store.exists(layout.coco_instances(dataset, split)):
            out.append(e)
    return out


def _cityscapes(dataset: str = "cityscapes", store: Store | None = None) -> list[dict]:
    return [{"type": "cityscapes", "dataset": dataset, "set": s, "imagepath": f"leftImg8bit/{s}",
             "labelpath": f"gtFine/{s}"} for s in ("train", "val")]


NAMED = {"coco": _coco, "cityscapes": _cityscapes}  # the datasets with their own download scripts
SEED_TYPES = ("coco", "cityscapes")  # a set of these defaults to coco.json, as the seed's cocorecord did


def names() -> list[str]:
    return sorted(set(NAMED) | set(registry.names()))


def named(name: str, store: Store | None = None, target: str | None = None) -> list[Spec]:
    """The specs of a registered dataset (its sets as getdataset.py / the download scripts store them), each with
    the class dictionary that maps it into `target`'s class list (a dictionary name or path; None: its own)."""
    if name not in names():
        raise SourceError(f"no registered dataset {name!r}: one of {', '.join(names())}, or a JSON source list")
    t = registry.table(name)
    if name in NAMED:  # sets found in the store; the types' own defaults unless a map onto `target` is asked for
        entries = NAMED[name](store=store)
        try:
            cf = t.dictionary_for(target) if target is not None else None
        except registry.RegistryError:  # the seed's rule: COCO entries take the set's dictionary as it is
            cf = None
        if cf is not None and (cf != t.classes or name != "coco"):  # coco keeps the default unless mapped
            for e in entries:
                e["classes_file"] = cf
        return parse_specs(entries, name)
    try:
        cf = t.dictionary_for(target)
    except registry.RegistryError as e:
        raise SourceError(str(e)) from None
    return parse_specs([{"dataset": name, "classes_file": cf, **e} for e in t.sets], name)


def combined(refs: list[str], store: Store | None = None, classes_file: str | None = None) -> list[Spec]:
    """Several registered datasets as one list of specs in one class space: `classes_file`'s, else the first
    dataset's own dictionary (each dataset through its table's map onto it)."""
    target = classes_file
    if target is None and len(refs) > 1:
        first = refs[0]
        target = registry.table(first).classes if first in registry.names() else "coco"
    out: list[Spec] = []
    for r in refs:
        out += named(r, store, target)
    return out


NAME_LIST = re.compile(r"\s*[A-Za-z0-9][\w.-]*(\s*,\s*[A-Za-z0-9][\w.-]*)*\s*")


def resolve(ref, store: Store | None = None, split: str | None = None, what: str = "--source",
            classes_file: str | None = None) -> list[Spec]:
    """Specs from a registered name (or several, comma-separated: combined into one class space), JSON text, a
    dict / Spec or a list of them; `split` keeps the entries of one set ("train", "val")."""
    if isinstance(ref, str) and NAME_LIST.fullmatch(ref):
        specs = combined([r.strip() for r in ref.split(",")], store, classes_file)
    else:
        specs = parse_specs(ref, what)
    if split is not None:
        kept = [s for s in specs if s.set == split]
        if not kept:
            raise SourceError(f"{what}: no entry with set {split!r} (sets: {', '.join(sorted({s.set for s in specs}))})")
        specs = kept
    return specs


# ---------------------------------------------------------------------------------------------------------------
# opening sources with their dictionaries
# ---------------------------------------------------------------------------------------------------------------
def entry_classes(store: Store, spec: Spec, main: mclasses.ClassDictionary | None
                  ) -> mclasses.ClassDictionary | None:
    """The dictionary an entry's labels are mapped through: its classes_file, else None for a type that brings its
    own (CVAT's labelmap: the source reads it), else its type's default (Cityscapes: cityscapes_coco), else the
    set's."""
    if spec.classes_file:
        return load_classes(store, spec.classes_file, spec)
    cls = get(spec.type)
    if cls.brings_classes:
        return None
    default = getattr(cls, "default_classes", None)
    if default:
        return mclasses.load(default)
    return main if main is not None else mclasses.load("coco")


def set_classes(store: Store, specs: list[Spec], classes_file=None) -> mclasses.ClassDictionary:
    """The dictionary of a set made of `specs`: classes_file when given; else, when the first entry is of a new type
    (folder, cvat), its own (its classes_file, or what its type brings); else coco.json (the seed's rule for COCO
    and Cityscapes entries, whose classes_file maps them into the set's classes)."""
    if classes_file is not None:
        return load_classes(store, classes_file, specs[0] if specs else None)
    first = specs[0] if specs else None
    if first is not None and first.type not in SEED_TYPES:
        if first.classes_file:
            return load_classes(store, first.classes_file, first)
        if get(first.type).brings_classes:
            return get(first.type).native_classes(store, first)
    return mclasses.load("coco")


def check_class_space(main: mclasses.ClassDictionary, parts: list[Source]) -> None:
    """Every entry's labels in the set's class space (the same number of classes), else an error naming the entry."""
    for k, p in enumerate(parts):
        d = p.classes
        if d.classes != main.classes:
            raise SourceError(f"entry {k} uses class dictionary {d.name} with {d.classes} classes; the set's "
                              f"{main.name} has {main.classes}: give the entry a classes_file in the same class space")


def open_source(store: Store, spec, main: mclasses.ClassDictionary | None = None, crowd: str = "class") -> Source:
    """One entry opened: its items listed (or its index loaded) and its dictionary loaded."""
    spec = parse_specs(spec)[0] if not isinstance(spec, Spec) else spec
    return get(spec.type)(store, spec, entry_classes(store, spec, main), crowd=crowd)


class Concat(Source):
    """Several sources as one: their items one after the other, in the set's dictionary `classes` (all parts mapped
    into its class space: check_class_space)."""

    type = "concat"

    def __init__(self, parts: list[Source], classes: mclasses.ClassDictionary):
        first = parts[0]
        super().__init__(first.store, first.spec, classes)
        self.parts = parts
        self.starts = [0]
        for p in parts:
            self.starts.append(self.starts[-1] + len(p))
        self.unpaired = [u for p in parts for u in p.unpaired]

    def _at(self, row: int) -> tuple[Source, int]:
        k = bisect.bisect_right(self.starts, row) - 1
        return self.parts[k], row - self.starts[k]

    def __len__(self) -> int:
        return self.starts[-1]

    def item(self, row):
        p, r = self._at(row)
        return p.item(r)

    def label_key(self, row):
        p, r = self._at(row)
        return p.label_key(r)

    def fetch(self, row):
        p, r = self._at(row)
        return p.fetch(r)

    def size(self, row):
        p, r = self._at(row)
        return p.size(r)

    def label(self, row, h, w, where, fetched=None):
        p, r = self._at(row)
        return p.label(r, h, w, where, fetched)

    def label_counts(self, row, h, w, where, fetched=None):
        p, r = self._at(row)
        return p.label_counts(r, h, w, where, fetched)

    def inspect(self, row, fetched, hw):
        p, r = self._at(row)
        return p.inspect(r, fetched, hw)

    def identity(self) -> bytes:
        h = hashlib.sha256()
        for p in self.parts:
            h.update(p.identity())
        return h.digest()

    def describe(self) -> str:
        return " + ".join(p.describe() for p in self.parts)


def open_sources(store: Store, specs, classes_file=None, crowd: str = "class") -> Source:
    """A set's entries opened as one source (one entry: that source itself), in the set's dictionary; an entry in
    another class space is an error naming it."""
    specs = resolve(specs, store, classes_file=classes_file)
    main = set_classes(store, specs, classes_file)
    parts = [get(s.type)(store, s, entry_classes(store, s, main), crowd=crowd) for s in specs]
    check_class_space(main, parts)
    return parts[0] if len(parts) == 1 else Concat(parts, main)
