"""The dataset registry: one table per public dataset (mllib/datasets/registry/<name>.json), data not code.

A table says where the dataset comes from and how it is read:

    name, title, homepage, license, citation      what it is
    login                                          true: downloaded by the user after a login (getdataset --from_dir)
    files                                          [{name, url, size, sha256, md5, source}]: the official downloads,
                                                   with the sizes and checksums the anchors publish (null: unknown)
    classes, class_maps                            its native class dictionary, and {target: dictionary} mapping it
                                                   into another class list (e.g. {"coco": "ade20k_coco"})
    sets                                           source entries (mllib.sources Spec fields, "set" naming the split);
                                                   paths below datasets/<name>/ unless "dataset" or a whole key says
    needs                                          datasets whose objects the sets read (voc2012-aug: voc2012, sbd)
    script                                         a dataset with its own download script (coco, cityscapes)
    images, notes                                  image counts per set as published, and what to know

Adding a dataset is adding a table here and a class dictionary in mllib/datasets/.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import PurePath

from mllib import MllibError


class RegistryError(MllibError):
    pass


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    classes: str
    raw: dict = field(repr=False, compare=False)

    @property
    def login(self) -> bool:
        return bool(self.raw.get("login"))

    @property
    def files(self) -> list[dict]:
        return list(self.raw.get("files", ()))

    @property
    def sets(self) -> list[dict]:
        return [dict(s) for s in self.raw.get("sets", ())]

    @property
    def needs(self) -> list[str]:
        return list(self.raw.get("needs", ()))

    @property
    def class_maps(self) -> dict[str, str]:
        return dict(self.raw.get("class_maps", {}))

    @property
    def script(self) -> str | None:
        return self.raw.get("script")

    def size(self) -> tuple[int, bool]:
        """(bytes to download, exact): the files' published sizes, rounded ones where that is all there is."""
        if not self.files:
            return int(self.raw.get("approx_size") or 0), bool(self.raw.get("approx_size") is None and not self.script)
        total, exact = 0, True
        for f in self.files:
            if f.get("size") is not None:
                total += f["size"]
            else:
                exact = False
                total += int(f.get("approx_size") or 0)
        return total, exact

    def dictionary_for(self, target: str | None) -> str:
        """The class dictionary that maps this dataset into `target`'s class list (a name or a path: its stem), its
        own without a target; a RegistryError when the table has none."""
        if target is None:
            return self.classes
        stem = PurePath(str(target)).stem
        if stem == self.classes:
            return self.classes
        maps = self.class_maps
        if stem in maps:
            return maps[stem]
        raise RegistryError(f"dataset {self.name} has no class dictionary onto {target!r}: its own is {self.classes}"
                            + (f", it maps onto {', '.join(sorted(maps))}" if maps else "")
                            + "; give --datasets entries with a classes_file in that class space")


@cache
def tables() -> dict[str, Table]:
    root = resources.files("mllib.datasets") / "registry"
    out = {}
    for p in sorted(root.iterdir(), key=lambda p: p.name):
        if not p.name.endswith(".json"):
            continue
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise RegistryError(f"registry table {p.name}: not valid JSON ({e})") from None
        for k in ("name", "title", "classes"):
            if k not in d:
                raise RegistryError(f"registry table {p.name}: missing {k!r}")
        if d["name"] != p.name[:-5]:
            raise RegistryError(f"registry table {p.name}: its name is {d['name']!r}")
        out[d["name"]] = Table(d["name"], d["title"], d["classes"], d)
    return out


def names() -> list[str]:
    return sorted(tables())


def table(name: str) -> Table:
    try:
        return tables()[name]
    except KeyError:
        raise RegistryError(f"no registered dataset {name!r}: one of {', '.join(names())} "
                            "(datasets/getdataset.py --list)") from None
