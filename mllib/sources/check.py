"""Know the data before training on it: every label of a source read once, in parallel, and what it holds.

    report = Check(store, specs).run()        # datasets/checkdataset.py is the command line

Per item: the label (label objects, or COCO annotations rendered), checked against the class dictionary (values it
does not map, with their pixel counts), against its image's size (read from the image's first bytes, not the whole
image), and counted per trainId. Per source: images without labels, labels without images, split-list names
without an image. The report holds the problems (file, what, values), per-class pixel counts and frequencies,
images containing each class, and the class weights people derive from them:

    inverse  w_c = 1 / (C * f_c), f_c = the class's share of the labelled (not ignored) pixels, C the classes present:
             the pixel-weighted mean weight is 1
    median   median frequency balancing (Eigen & Fergus 2015): w_c = median(g) / g_c, g_c = the class's pixels over
             the pixels of the images that contain it

With sizes=False (checkdataset --no_image_sizes) a source whose images are listed (folder, cvat, cityscapes) reads
only its labels: one request an item instead of two, no size check.

Work: up to `jobs` processes (one per PROCESS_ITEMS labels at least; fewer labels are checked in this process), each with `threads` store reads in flight (labels and image headers read ahead while the
previous items are decoded); a worker returns sums and the problems, never the labels.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from mllib import images
from mllib.sources import open_sources
from mllib.sources.base import (
    LabelError,
    MissingLabel,
    SizeMismatch,
    Source,
    Spec,
    UnmappedLabel,
    _value_name,
    binary_warning,
    describe_values,
)
from mllib.store import NotFound, Store, StoreError

log = logging.getLogger(__name__)

HEAD_BYTES = 65536  # an image's first bytes: where JPEG and PNG keep their size (a whole read if it is further)
CHUNK = 128  # items per task
# labels a pool process must have to pay for its start-up (~1-2 s: Python, numpy, OpenCV, the source listed again);
# below that one process checks faster (500 labels on a local store: 268 labels/s with 2 processes, 2,464 with one)
PROCESS_ITEMS = 1000
PROBLEMS = ("unmapped", "missing_label", "unpaired", "size_mismatch", "unreadable", "missing_image")


class Sums:
    """What a worker adds up: pixels per trainId, images containing each, the pixels of those images (for median
    frequency), the item with the most pixels of each class, and the problems."""

    def __init__(self):
        self.pixels = np.zeros(256, np.int64)
        self.images = np.zeros(256, np.int64)
        self.image_pixels = np.zeros(256, np.int64)
        self.best = np.full(256, -1, np.int64)
        self.best_count = np.zeros(256, np.int64)
        self.problems: list[dict] = []
        self.binary: list[str] = []
        self.checked = 0

    def add(self, row: int, train: np.ndarray, ignore: int) -> None:
        self.checked += 1
        self.pixels += train
        present = train > 0
        present[ignore] = False
        self.images += present
        self.image_pixels += np.where(present, train.sum() - train[ignore], 0)
        better = train > self.best_count
        better[ignore] = False
        self.best[better], self.best_count[better] = row, train[better]

    def merge(self, o: Sums) -> None:
        self.pixels += o.pixels
        self.images += o.images
        self.image_pixels += o.image_pixels
        better = o.best_count > self.best_count
        self.best[better], self.best_count[better] = o.best[better], o.best_count[better]
        self.problems += o.problems
        self.binary += o.binary
        self.checked += o.checked


def _read(store: Store, src: Source, row: int, sizes: bool = True) -> dict:
    """An item's label bytes and its image's first bytes (the image's size), read from the store; without sizes only
    whether the image exists (from the listing) and no image bytes."""
    key = src.item(row)[0]
    out = {"image": None, "label": None, "head": None}
    lk = src.label_key(row)
    if lk is not None:
        try:
            out["label"] = store.get_bytes(lk)
        except NotFound:
            pass
    if not sizes and lk is not None:  # a listed image (folder sources list their images): no request for it
        out["head"] = b""
        return out
    try:
        out["head"] = store.get_head(key, HEAD_BYTES)
    except NotFound:
        pass
    except StoreError:  # a range some servers refuse (an empty object): the whole object then
        try:
            out["head"] = store.get_bytes(key)
        except NotFound:
            pass
    if out["head"] is not None and images.dimensions(out["head"]) is None and len(out["head"]) == HEAD_BYTES:
        out["head"] = store.get_bytes(key)  # the frame header is further in (a large EXIF block)
    return out


def check_item(src: Source, row: int, got: dict, sums: Sums) -> None:
    key = src.item(row)[0]
    if got["head"] is None:
        sums.problems.append({"kind": "missing_image", "key": key, "message": "image missing from the store"})
        return
    hw = images.dimensions(got["head"]) if got["head"] else None
    if hw is None and got["head"]:
        sums.problems.append({"kind": "unreadable", "key": key, "message": f"image {key} is no readable JPEG or PNG"})
        return
    try:
        r = src.inspect(row, got, hw)
    except MissingLabel as e:
        sums.problems.append({"kind": "missing_label", "key": key, "message": str(e)})
        return
    except SizeMismatch as e:
        sums.problems.append({"kind": "size_mismatch", "key": key, "message": str(e)})
        return
    except (LabelError, images.ImageError) as e:
        sums.problems.append({"kind": "unreadable", "key": key, "message": str(e)})
        return
    if r["values"]:
        colour = r.get("colour", False)
        label = r.get("label_key") or key
        sums.problems.append({
            "kind": "unmapped", "key": label,
            "values": {_value_name(v, colour): n for v, n in sorted(r["values"].items(), key=lambda kv: -kv[1])},
            "message": f"{label}: {'colours' if colour else 'values'} not in the class dictionary: "
                       f"{describe_values(r['values'], colour)}"})
        return
    if r.get("binary"):
        sums.binary.append(r.get("label_key") or key)
    sums.add(row, r["train"], src.classes.ignore)


_source: Source | None = None


def _init(store: Store, specs: list[Spec], classes_file, crowd: str) -> None:
    global _source
    _source = open_sources(store, specs, classes_file, crowd)


def check_rows(rows: list[int], threads: int, src: Source | None = None, sizes: bool = True) -> Sums:
    """Check some items: their objects read `threads` ahead while the earlier ones are decoded."""
    from mllib.store.streams import read_ahead

    src = src or _source
    sums = Sums()
    for row, got in read_ahead(lambda r: _read(src.store, src, r, sizes), rows, threads):
        check_item(src, row, got, sums)
    return sums


def class_weights(pixels, image_pixels=None) -> tuple[np.ndarray, np.ndarray]:
    """(inverse, median) class weights from per-class pixel counts (the module's docstring says how); without the
    pixels of the images containing each class (a records set's description has none), median frequency balancing
    uses the global frequencies. Absent classes weigh 0."""
    pixels = np.asarray(pixels, np.float64)
    labelled = pixels.sum()
    present = pixels > 0
    freq = pixels / labelled if labelled else np.zeros(len(pixels))
    inverse = np.where(present, 1.0 / np.maximum(freq * max(1, present.sum()), 1e-300), 0.0)
    if image_pixels is None:
        g = freq
    else:
        image_pixels = np.asarray(image_pixels, np.float64)
        g = np.where(image_pixels > 0, pixels / np.maximum(image_pixels, 1), 0.0)
    med = float(np.median(g[present])) if present.any() else 0.0
    median = np.where(present, med / np.maximum(g, 1e-300), 0.0)
    return inverse, median


class Check:
    def __init__(self, store: Store, specs: list[Spec], classes_file=None, crowd: str = "class", jobs: int = 2,
                 threads: int = 16, bar: bool = True, sizes: bool = True):
        self.store, self.specs, self.classes_file, self.crowd = store, specs, classes_file, crowd
        self.jobs, self.threads, self.bar, self.sizes = jobs, threads, bar, sizes
        self.source = open_sources(store, specs, classes_file, crowd)

    def run(self, max_items: int | None = None) -> dict:
        from tqdm import tqdm

        t0 = time.perf_counter()
        n = len(self.source) if max_items is None else min(max_items, len(self.source))
        rows = list(range(n))
        chunks = [rows[i:i + CHUNK] for i in range(0, n, CHUNK)]
        sums = Sums()
        jobs = min(self.jobs, n // PROCESS_ITEMS)
        bar = tqdm(total=n, unit="label", desc="checkdataset", disable=not self.bar, dynamic_ncols=True)
        try:
            if jobs <= 1 or len(chunks) <= 1:
                for c in chunks:
                    sums.merge(check_rows(c, self.threads, self.source, self.sizes))
                    bar.update(len(c))
            else:
                import multiprocessing as mp
                from concurrent.futures import ProcessPoolExecutor, as_completed

                ctx = mp.get_context("spawn")
                with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init,
                                         initargs=(self.store, self.specs, self.classes_file, self.crowd)) as pool:
                    futures = {pool.submit(check_rows, c, self.threads, None, self.sizes): len(c) for c in chunks}
                    for f in as_completed(futures):
                        sums.merge(f.result())
                        bar.update(futures[f])
        finally:
            bar.close()
        seconds = time.perf_counter() - t0
        for u in self.source.unpaired:
            sums.problems.append({"kind": "unpaired", "key": u["key"], "message": f"{u['key']}: {u['reason']}"})
        return self.report(sums, n, seconds)

    def report(self, sums: Sums, n: int, seconds: float) -> dict:
        d = self.source.classes
        c = d.classes
        pixels = sums.pixels[:c].astype(np.float64)
        labelled = pixels.sum()
        freq = pixels / labelled if labelled else np.zeros(c)
        inverse, median = class_weights(sums.pixels[:c], sums.image_pixels[:c])
        problems = {k: [p for p in sums.problems if p["kind"] == k] for k in PROBLEMS}
        table = [{"trainId": t, "name": d.names[t], "pixels": int(sums.pixels[t]), "fraction": round(float(freq[t]), 8),
                  "images": int(sums.images[t])} for t in range(c)]
        return {
            "source": [s.to_dict() for s in self.specs],
            "classes": d.name, "class_names": d.names, "ignore": d.ignore,
            "items": n, "labels_checked": sums.checked,
            "ok": not any(problems.values()),
            "problems": {k: len(v) for k, v in problems.items()},
            "details": problems,
            "binary_masks": {"count": len(sums.binary), "first": sums.binary[:20],
                             "why": binary_warning(sums.binary[0], d) if sums.binary else None},
            "ignore_pixels": int(sums.pixels[d.ignore]),
            "class_table": table,
            "class_weights": {"inverse": [round(float(v), 6) for v in inverse],
                              "median": [round(float(v), 6) for v in median]},
            "rarest": self._rarest(sums, c),
            "seconds": round(seconds, 3),
            "labels_per_s": round(n / seconds, 1) if seconds > 0 else None,
        }

    def _rarest(self, sums: Sums, c: int) -> list[dict]:
        """The present classes from the fewest pixels up, each with the item that holds the most of it."""
        order = sorted((t for t in range(c) if sums.pixels[t] > 0), key=lambda t: sums.pixels[t])
        return [{"trainId": t, "pixels": int(sums.pixels[t]), "row": int(sums.best[t]),
                 "key": self.source.item(int(sums.best[t]))[0]} for t in order]

    def sheet(self, report: dict, count: int = 8, size: int = 256, cols: int = 4) -> np.ndarray | None:
        """A contact sheet of the rarest classes: for each, the image that holds most of it, its label over it."""
        from mllib.labels import display

        samples = []
        for r in report["rarest"][:count]:
            row = r["row"]
            got = self.source.fetch(row)
            if got.get("image") is None:
                continue
            img = images.decode(got["image"])
            label = self.source.label(row, img.shape[0], img.shape[1], self.source.item(row)[2], got)
            samples.append((img, label, f"{self.source.classes.names[r['trainId']]} {r['pixels']:,d}px"))
        if not samples:
            return None
        return display.contact_sheet(samples, self.source.classes, cols=min(cols, len(samples)), size=size)


def first_problems(report: dict, n: int = 5) -> list[str]:
    out = []
    for k in PROBLEMS:
        for p in report["details"][k]:
            out.append(p["message"])
    return out[:n]


__all__ = ["Check", "Sums", "UnmappedLabel", "check_rows", "first_problems"]
