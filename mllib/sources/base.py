"""What a source is: its configuration (Spec), the interface every type implements (Source), the registry of
types, and the label readers they share (index PNGs through Pillow, colour PNGs through a colour table).

A Source is the items of one set of one dataset in the store, in a fixed order (sorted keys, or the annotation
file's order). For item `row`:

    item(row)                     (image key, source id, how errors name it)
    fetch(row)                    {"image": bytes | None, "label": bytes | None}: what label() reads, fetched
                                  (None for an object missing from the store); read ahead by the conversion and the
                                  PyTorch dataset
    label(row, h, w, where, f)    the label of trainIds (uint8 HxW, the dictionary's ignore value where ignored),
                                  from the fetched bytes; LabelError naming the file for a label that cannot be
                                  trusted (unmapped values, a size that differs from the image's, unreadable)
    size(row)                     the image's (h, w) where the source knows it without reading it (COCO), else None
    inspect(row, f)               what checkdataset reports of the item (label values, trainId pixel counts)

plus `classes` (the dictionary the labels are mapped through), `unpaired` (files with no partner: labels without
images, split-list names without an image) and `identity()` (bytes that change when the items change).
"""

from __future__ import annotations

import io
import json
import logging
import os
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

import numpy as np

from mllib import MllibError, images, layout
from mllib.labels import classes as mclasses
from mllib.labels.render import LabelError, pixel_counts
from mllib.perprocess import PerProcess
from mllib.store import NotFound, Store

log = logging.getLogger(__name__)

__all__ = ["LABEL_FORMATS", "ColorTable", "LabelError", "MissingLabel", "SizeMismatch", "Source", "SourceError", "Spec",
           "UnmappedLabel", "get", "load_classes", "parse_specs", "register", "types"]

LABEL_FORMATS = ("auto", "index", "color", "mat")
MAT_FIELD = "GTcls.Segmentation"  # SBD's class maps (dataset/cls/*.mat)
MAT_MAX_BYTES = 64 << 20  # a .mat label larger than this is refused unread
MAT_MAX_INFLATED = 256 << 20  # nor one whose compressed element would unpack to more
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class SourceError(MllibError):
    """A source that cannot be read as configured: names the entry, the field and the fix."""


class MissingLabel(LabelError):
    """An image whose label is not in the store."""


class SizeMismatch(LabelError):
    """A label whose size differs from its image's."""


class UnmappedLabel(LabelError):
    """A label holding values (or colours) the class dictionary does not map: `values` {value: pixels}."""

    def __init__(self, message: str, values: dict):
        super().__init__(message)
        self.values = values


@dataclass
class Spec:
    """One entry of a source list (cocorecord's --datasets, network2d's --source): the seed's {jsonpath, imagepath,
    name_decoration, set} plus what the other types need. Relative paths are below datasets/<dataset>/; a path that
    starts with datasets/ is a whole key; with dataset "" every path is a whole key."""

    jsonpath: str = ""  # the first nine fields in the seed's order (Entry(jsonpath, imagepath, set) still works)
    imagepath: str = ""
    set: str = "train"
    name_decoration: str = ""
    stuffpath: str | None = None
    dataset: str = "coco"
    classes_file: str | None = None
    type: str = "coco"
    labelpath: str | None = None
    image_suffix: str | None = None
    label_suffix: str | None = None
    split_file: str | None = None
    label_format: str = "auto"
    exclude_split: str | None = None  # split lists whose names are left out (comma-separated keys)
    label_offset: int = 0  # added to every label value but the ignore value (COCO-Stuff maps: +1 -> COCO ids)
    mat_field: str | None = None  # the array of a .mat label (label_format "mat"); default GTcls.Segmentation

    def key(self, path: str) -> str:
        path = path.strip("/")
        if not self.dataset or path.startswith(layout.DATASETS + "/"):
            return path
        return f"{layout.dataset(self.dataset)}/{path}"

    def to_dict(self) -> dict:
        return asdict(self)


_TYPES: dict[str, type[Source]] = {}


def register(cls: type[Source]) -> type[Source]:
    """Class decorator: make a Source type available under its `type` name."""
    _TYPES[cls.type] = cls
    return cls


def types() -> list[str]:
    return sorted(_TYPES)


def get(type_name: str) -> type[Source]:
    try:
        return _TYPES[type_name]
    except KeyError:
        raise SourceError(f"unknown source type {type_name!r}: one of {', '.join(types())}") from None


OPTIONAL = {f.name for f in fields(Spec) if f.default is None}
INTS = {f.name for f in fields(Spec) if f.type in ("int", int)}


def parse_specs(spec, what: str = "--datasets") -> list[Spec]:
    """Specs from JSON text, one object or a list of objects; each field checked against its type's needs."""
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as e:
            raise SourceError(f"{what} is not valid JSON: {e}") from None
    if isinstance(spec, dict | Spec):
        spec = [spec]
    if not isinstance(spec, list) or not spec:
        raise SourceError(f"{what} must be a JSON list of objects ({{\"type\": ..., \"imagepath\": ...}}), "
                          f"got {json.dumps(spec)[:80]}")
    out = []
    known = {f.name for f in fields(Spec)}
    for n, d in enumerate(spec):
        if isinstance(d, Spec):
            d = d.to_dict()
        if not isinstance(d, dict):
            raise SourceError(f"{what} entry {n}: must be a JSON object, got {json.dumps(d)[:80]}")
        unknown = set(d) - known
        if unknown:
            raise SourceError(f"{what} entry {n}: unknown field(s) {sorted(unknown)}; the fields are "
                              f"{', '.join(sorted(known))}")
        wrong = sorted(k for k, v in d.items() if k not in INTS and not (isinstance(v, str) or (v is None and k in OPTIONAL)))
        if wrong:
            raise SourceError(f"{what} entry {n}: field(s) {wrong} must be strings")
        wrong = sorted(k for k in INTS if k in d and (isinstance(d[k], bool) or not isinstance(d[k], int)
                                                       or not -255 <= d[k] <= 255))
        if wrong:
            raise SourceError(f"{what} entry {n}: field(s) {wrong} must be integers -255..255")
        s = Spec(**d)
        if s.type not in _TYPES:
            raise SourceError(f"{what} entry {n}: type must be one of {', '.join(types())}, got {s.type!r}")
        cls = _TYPES[s.type]
        missing = [f for f in cls.required if not getattr(s, f)]
        if missing:
            raise SourceError(f"{what} entry {n}: a {s.type} entry needs {' and '.join(repr(f) for f in missing)}")
        if s.label_format not in LABEL_FORMATS:
            raise SourceError(f"{what} entry {n}: label_format must be one of {', '.join(LABEL_FORMATS)}, got "
                              f"{s.label_format!r}")
        out.append(s)
    return out


def load_classes(store: Store | None, ref, spec: Spec | None = None) -> mclasses.ClassDictionary:
    """A class dictionary from a dict, a name in mllib/datasets, a local file, or a key in the store (relative to the
    entry's dataset folder, or a whole key)."""
    if isinstance(ref, mclasses.ClassDictionary | dict):
        return mclasses.load(ref)
    s = str(ref)
    if os.path.exists(s) or s in mclasses.available() or (s.endswith(".json") and s[:-5] in mclasses.available()
                                                           and "/" not in s):
        return mclasses.load(s)
    if store is not None:
        for key in dict.fromkeys(([spec.key(s)] if spec is not None else []) + [s.strip("/")]):
            try:
                data = store.get_bytes(key)
            except (NotFound, ValueError):
                continue
            try:
                return mclasses.ClassDictionary(json.loads(data), source=store.url_for(key))
            except json.JSONDecodeError as e:
                raise mclasses.ClassDictionaryError(f"class dictionary {store.url_for(key)}: not valid JSON ({e})") \
                    from None
    raise mclasses.ClassDictionaryError(
        f"class dictionary {s!r} not found: give a name ({', '.join(mclasses.available())}), a local file, or a key "
        "in the store")


class Source:
    """Base of the source types; see the module docstring for the interface."""

    type: ClassVar[str] = ""
    required: ClassVar[tuple[str, ...]] = ()
    brings_classes: ClassVar[bool] = False  # native_classes() gives the type's own dictionary (CVAT's labelmap)
    shippable: ClassVar[bool] = False  # opened once and pickled to worker processes (listings), not opened again

    def __init__(self, store: Store, spec: Spec, classes: mclasses.ClassDictionary):
        self.store, self.spec, self.classes = store, spec, classes
        self.unpaired: list[dict] = []  # {"key", "reason"}: files with no partner

    @classmethod
    def native_classes(cls, store: Store, spec: Spec) -> mclasses.ClassDictionary | None:
        """The dictionary the type brings with it (CVAT's labelmap.txt), used when the entry names none."""
        return None

    def __len__(self) -> int:
        raise NotImplementedError

    def item(self, row: int) -> tuple[str, str, str]:
        raise NotImplementedError

    def label_key(self, row: int) -> str | None:
        return None

    def fetch(self, row: int) -> dict:
        """{"image": bytes, "label": bytes} of the item (None for an object not in the store). From a remote store
        the image and the label are read at the same time (the label on a per-process pool): one round trip's wait
        per item, not two."""
        img_key, lk = self.item(row)[0], self.label_key(row)
        if not lk or self.store.local_path() is not None:  # nothing to pair, or a local read of microseconds
            return {"image": get_or_none(self.store, img_key), "label": get_or_none(self.store, lk) if lk else None}
        label = _LABEL_READS.get().submit(get_or_none, self.store, lk)
        try:
            image = get_or_none(self.store, img_key)
        except BaseException:
            label.cancel()
            raise
        return {"image": image, "label": label.result()}

    def size(self, row: int) -> tuple[int, int] | None:
        return None

    def label(self, row: int, h: int, w: int, where: str, fetched: dict | None = None) -> np.ndarray:
        raise NotImplementedError

    def label_counts(self, row: int, h: int, w: int, where: str, fetched: dict | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
        """(label(...), its pixels per trainId (256 int64)), what a conversion writes and counts. A type whose
        label reader has counted the values on the way gives the counts from those (256 sums), not another pass
        over the pixels."""
        label = self.label(row, h, w, where, fetched)
        return label, pixel_counts(label)

    def inspect(self, row: int, fetched: dict, hw: tuple[int, int] | None) -> dict:
        """{"train": trainId pixel counts (256), "values": {unmapped value: pixels}, "binary": bool} of the item's
        label, or LabelError; `hw` is the image's size when known (a mismatch is a LabelError)."""
        raise NotImplementedError

    def identity(self) -> bytes:
        raise NotImplementedError

    def check_pairs(self, skip_bad: bool) -> list[dict]:
        """The unpaired files: an error naming the first unless skip_bad (then they are returned, to be listed)."""
        if self.unpaired and not skip_bad:
            first = "; ".join(f"{u['key']}: {u['reason']}" for u in self.unpaired[:3])
            more = f" (and {len(self.unpaired) - 3} more)" if len(self.unpaired) > 3 else ""
            raise SourceError(f"{len(self.unpaired)} unpaired file(s) in {self.describe()}: {first}{more}; "
                              "skip_bad (--skip_bad) leaves them out, checkdataset.py lists them all")
        return list(self.unpaired)

    def describe(self) -> str:
        return f"{self.type} source {self.store.url_for(self.spec.key(self.spec.imagepath or self.spec.jsonpath))}"


def _label_pool():
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(LABEL_READS, thread_name_prefix="mllib-label")


LABEL_READS = 16  # label reads in flight per process beside their images' (a conversion reads 16 items ahead)
_LABEL_READS = PerProcess(_label_pool)  # a DataLoader worker or pool process makes its own


def get_or_none(store: Store, key: str) -> bytes | None:
    """An object's bytes, or None when it is not in the store (the item is then skipped and listed)."""
    try:
        return store.get_bytes(key)
    except NotFound:
        return None


# ---------------------------------------------------------------------------------------------------------------
# label images
# ---------------------------------------------------------------------------------------------------------------
def read_label(data: bytes, key: str, fmt: str = "auto", mat_field: str | None = None) -> tuple[np.ndarray, bool]:
    """(array, is_colour) of a label PNG: a palette PNG's indices (never its colours), 8- or 16-bit grey values,
    or with fmt "color" (or "auto" for an RGB PNG) its RGB colours (HxWx3; a palette PNG's colours then); a MATLAB
    .mat label (fmt "mat", or "auto" for a MAT-file): the integer array `mat_field` (SBD's GTcls.Segmentation)."""
    from PIL import Image

    if fmt == "mat" or (fmt == "auto" and data[:6] == b"MATLAB"):
        return read_mat(data, key, mat_field or MAT_FIELD), False
    try:
        kind, h, w, _ = images.info(data)
    except images.ImageError as e:
        raise LabelError(f"label {key} is unreadable: {e}") from None
    if kind not in ("png", "png-other"):
        raise LabelError(f"label {key} is a {kind.upper()}; labels must be PNG (a lossy format changes values)")
    images.check_size(h, w)
    depth, ctype = data[24], data[25]
    colour = fmt == "color" or (fmt == "auto" and ctype in (2, 6))
    if depth == 8 and ctype == 0 and not colour and _spng() is not None:
        return _grey8_spng(data, key, h, w), False
    if depth in (8, 16) and ctype in (0, 2, 6) and (ctype == 0) != colour:
        # grey (8/16-bit) or RGB(A): OpenCV decodes these ~2.5x faster than Pillow, to the same values
        import cv2

        try:
            a = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error:
            a = None
        if a is None:
            raise LabelError(f"label {key} is unreadable: cannot decode its PNG data")
        if colour:
            return cv2.cvtColor(a, cv2.COLOR_BGRA2RGB if a.shape[2] == 4 else cv2.COLOR_BGR2RGB), True
        return a, False
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for a broken file
        raise LabelError(f"label {key} is unreadable: {type(e).__name__}: {str(e)[:200]}") from None
    mode = im.mode
    if colour or (fmt == "auto" and mode in ("RGB", "RGBA")):
        if mode not in ("RGB", "RGBA", "P"):
            raise LabelError(f"label {key} is a {mode} PNG; label_format 'color' needs an RGB or palette PNG")
        return np.asarray(im.convert("RGB")), True
    if mode in ("P", "L"):  # a palette PNG's indices, never its colours
        return np.asarray(im), False
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im)
        if a.min() < 0 or a.max() > 65535:
            raise LabelError(f"label {key} holds values outside 0..65535")
        return a.astype(np.uint16, copy=False), False
    if mode in ("RGB", "RGBA"):
        raise LabelError(f"label {key} is an {mode} colour PNG; label_format 'index' needs a single-channel (L, P "
                         "or 16-bit) PNG: use label_format 'color' to map its colours through the class dictionary")
    raise LabelError(f"label {key} is a PNG of mode {mode}, not an index (L, P, 16-bit) or colour (RGB) label")


_SPNG: list = []


def _spng():
    """pyspng (libspng), or None where it is not installed: OpenCV decodes the same labels then."""
    if not _SPNG:
        try:
            import pyspng
        except ImportError:
            pyspng = None
        _SPNG.append(pyspng)
    return _SPNG[0]


def _grey8_spng(data: bytes, key: str, h: int, w: int) -> np.ndarray:
    """An 8-bit greyscale PNG's values through libspng: 1.5x faster than OpenCV's libpng for label PNGs as Pillow
    writes them (adaptive row filters: libspng unfilters with SIMD), the same values. libspng (as pyspng sets it up)
    ignores the chunks' CRCs and the data's Adler-32, so a flipped bit would decode to other values: the critical
    chunks' CRCs are checked here first, as libpng checks them (~3 us: a label's compressed data is small)."""
    try:
        images.check_png_crcs(data, critical_only=True)
    except images.ImageError as e:
        raise LabelError(f"label {key} is unreadable: {e}") from None
    try:
        a = _spng().load(data, format="L")
    except (RuntimeError, ValueError) as e:
        raise LabelError(f"label {key} is unreadable: {str(e)[:200]}") from None
    if a.shape != (h, w) or a.dtype != np.uint8:
        raise LabelError(f"label {key} is unreadable: decoded to {a.dtype} {a.shape}, its header says {h}x{w}")
    return a


def _mat_inflation(data: bytes, key: str) -> None:
    """Refuse a MAT-file (v5) whose compressed elements would unpack to more than MAT_MAX_INFLATED bytes, before
    scipy inflates them whole."""
    import struct
    import zlib

    order = "<" if data[126:128] == b"IM" else ">"
    pos = 128
    while pos + 8 <= len(data):
        typ, n = struct.unpack(order + "II", data[pos:pos + 8])
        if typ >> 16:  # small data element: tag and data in 8 bytes
            pos += 8
            continue
        if typ == 15:  # miCOMPRESSED
            d = zlib.decompressobj()
            try:
                d.decompress(data[pos + 8:pos + 8 + n], MAT_MAX_INFLATED)
            except zlib.error as e:
                raise LabelError(f"label {key} is unreadable: damaged compressed MAT element ({e})") from None
            if d.unconsumed_tail:
                raise LabelError(f"label {key}: a compressed MAT element unpacks to more than "
                                 f"{MAT_MAX_INFLATED >> 20} MiB; refusing")
            pos += 8 + n
        else:
            pos += 8 + n + (-n % 8)


def read_mat(data: bytes, key: str, field: str) -> np.ndarray:
    """The integer array `field` ("struct.field...", e.g. GTcls.Segmentation) of a MATLAB v5 .mat label, read with
    scipy; a file too large, a compression bomb, a missing field or anything but a 2-D integer map is a LabelError."""
    import scipy.io

    if len(data) > MAT_MAX_BYTES:
        raise LabelError(f"label {key} is {len(data) >> 20} MiB; .mat labels over {MAT_MAX_BYTES >> 20} MiB are refused")
    if data[:6] != b"MATLAB" or len(data) < 128:
        raise LabelError(f"label {key} is not a MATLAB .mat file")
    _mat_inflation(data, key)
    top, *rest = field.split(".")
    try:
        m = scipy.io.loadmat(io.BytesIO(data), variable_names=[top], struct_as_record=False, squeeze_me=True)
    except NotImplementedError:
        raise LabelError(f"label {key} is a MATLAB 7.3 (HDF5) file; save it as v5 (-v7) .mat") from None
    except Exception as e:  # noqa: BLE001 - scipy raises many types for a broken file
        raise LabelError(f"label {key} is unreadable: {type(e).__name__}: {str(e)[:200]}") from None
    if top not in m:
        raise LabelError(f"label {key} has no variable {top!r} (mat_field {field!r})")
    v = m[top]
    for f in rest:
        try:
            v = getattr(v, f)
        except AttributeError:
            raise LabelError(f"label {key}: {top} has no field {f!r} (mat_field {field!r})") from None
    a = np.asarray(v)
    if a.ndim != 2 or a.dtype.kind not in "uib":
        raise LabelError(f"label {key}: {field} is a {a.dtype} array of shape {a.shape}, not a 2-D integer map")
    images.check_size(*a.shape)
    if a.size and (a.min() < 0 or a.max() > 65535):
        raise LabelError(f"label {key}: {field} holds values outside 0..65535")
    return np.ascontiguousarray(a.astype(np.uint8 if a.size == 0 or a.max() <= 255 else np.uint16, copy=False))


def shift_table(n: int, offset: int, keep: int) -> np.ndarray:
    """value -> value + offset for values 0..n-1, except `keep` (the ignore value); a value shifted below 0 or past
    65535 becomes 65535 (unmapped). COCO-Stuff's maps hold COCO id - 1 and 255 for unlabeled."""
    table = np.arange(n, dtype=np.int64) + offset
    table[keep] = keep
    table[(table < 0) | (table > 65535)] = 65535
    return table


def value_counts(ids: np.ndarray) -> np.ndarray:
    """Pixels per value of an index label (256 entries for uint8, 65536 for uint16)."""
    if ids.dtype == np.uint8:
        return pixel_counts(ids)
    return np.bincount(ids.ravel(), minlength=65536)


def train_counts(counts: np.ndarray, d: mclasses.ClassDictionary) -> np.ndarray:
    """Pixels per trainId (256) from pixels per mapped value: 256 additions, not one lookup per pixel."""
    return np.bincount(d.lut, weights=counts[:256], minlength=256).astype(np.int64)


def unmapped_values(counts: np.ndarray, d: mclasses.ClassDictionary) -> dict[int, int]:
    """{value: pixels} of the values that `d` does not map (neither a listed id nor its ignore value)."""
    present = np.flatnonzero(counts)
    return {int(v): int(counts[v]) for v in present if v > 255 or not d.mapped[v]}


def is_binary_mask(counts: np.ndarray, d: mclasses.ClassDictionary) -> bool:
    """A label of only 0 and 255 where 255 is the dictionary's ignore and no class: most likely a mask saved as
    0/255 whose objects would all be ignored."""
    if d.ignore != 255 or not counts[0] or not counts[255] or counts[0] + counts[255] != counts.sum():
        return False
    return not any(o.id == 255 for o in d.objects)


def describe_values(values: dict, colour: bool = False) -> str:
    items = sorted(values.items(), key=lambda kv: -kv[1])
    shown = ", ".join(f"{_value_name(v, colour)} ({n:,d} px)" for v, n in items[:6])
    return shown + (f" and {len(items) - 6} more" if len(items) > 6 else "")


def _value_name(v, colour: bool) -> str:
    return f"#{int(v):06x}" if colour else str(v)


def rgb_codes(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 -> HxW int32 colour codes r << 16 | g << 8 | b."""
    rgb = rgb.astype(np.int32, copy=False)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


class ColorTable:
    """Colours to label ids: each colour of a label image must be in the table (else UnmappedLabel)."""

    def __init__(self, colors: dict[tuple[int, int, int], int], name: str):
        self.name = name
        pairs = sorted(((c[0] << 16) | (c[1] << 8) | c[2], i) for c, i in colors.items())
        self.codes = np.array([p[0] for p in pairs], np.int32)
        self.ids = np.array([p[1] for p in pairs], np.int64)

    @classmethod
    def of_dictionary(cls, d: mclasses.ClassDictionary) -> ColorTable:
        """Each object's colour -> its id, and the dictionary's "ignore_color" (if any) -> its ignore value; objects
        sharing a colour must share a trainId (else the colour is ambiguous: ClassDictionaryError naming both)."""
        table: dict[tuple[int, int, int], mclasses.ClassObject] = {}
        ic = d.raw.get("ignore_color")
        if ic is not None:
            table[tuple(ic)] = mclasses.ClassObject(d.ignore, "ignore", d.ignore, "", False, tuple(ic))
        for o in d.objects:
            first = table.setdefault(o.color, o)
            if first.trainId != o.trainId:
                raise mclasses.ClassDictionaryError(
                    f"class dictionary {d.name}: colour {list(o.color)} is given to {first.name!r} (trainId "
                    f"{first.trainId}) and {o.name!r} (trainId {o.trainId}): colour labels cannot tell them apart")
        return cls({c: o.id for c, o in table.items()}, d.name)

    def ids_of(self, rgb: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
        """(uint8 id image, {unmapped colour code: pixels})."""
        codes = rgb_codes(rgb)
        pos = np.searchsorted(self.codes, codes)
        np.minimum(pos, len(self.codes) - 1, out=pos)
        ok = self.codes[pos] == codes
        bad: dict[int, int] = {}
        if not ok.all():
            vals, counts = np.unique(codes[~ok], return_counts=True)
            bad = {int(v): int(c) for v, c in zip(vals, counts, strict=True)}
        return self.ids[pos].astype(np.uint8), bad


class LabelReader:
    """Label bytes -> trainIds for the sources whose labels are images: index values through the dictionary's lookup
    table, or colours through a ColorTable first; values it does not map are an UnmappedLabel naming the file."""

    def __init__(self, d: mclasses.ClassDictionary, fmt: str, colors: ColorTable | None, offset: int = 0,
                 mat_field: str | None = None):
        self.d, self.fmt, self._colors, self.offset, self.mat_field = d, fmt, colors, offset, mat_field
        self.binary_warned = False
        # with an offset, 8-bit labels stay as read: their pixel counts move through the shift table (256 sums) and
        # the dictionary's lookup table is composed with it, so no pixel is shifted one by one
        self.shift = shift_table(256, offset, d.ignore) if offset else None
        self.lut = d.lut if self.shift is None else d.lut[np.minimum(self.shift, 255)]
        self.steps = (self.lut.astype(np.int64) - np.arange(256)) % 256  # what each value's mapping adds, mod 256

    @property
    def colors(self) -> ColorTable:
        if self._colors is None:
            self._colors = ColorTable.of_dictionary(self.d)
        return self._colors

    def ids(self, data: bytes, key: str) -> tuple[np.ndarray, dict, bool, bool, np.ndarray | None]:
        """(id image, {unmapped value (or colour code): pixels}, is_colour, is a 0/255 mask, pixels per value or
        None) of label bytes."""
        arr, colour = read_label(data, key, self.fmt, self.mat_field)
        if colour:
            ids, bad = self.colors.ids_of(arr)
            return ids, bad, True, False, None
        if self.offset and arr.dtype != np.uint8:  # 16-bit: shifted pixel by pixel (mapped values are < 256)
            arr = shift_table(65536, self.offset, self.d.ignore).astype(np.uint16)[arr]
            counts = value_counts(arr)
        elif self.offset:
            counts = np.bincount(self.shift, weights=value_counts(arr), minlength=256).astype(np.int64)
        else:
            counts = value_counts(arr)
        return arr, unmapped_values(counts, self.d), False, is_binary_mask(counts, self.d), counts

    def train_ids(self, data: bytes, key: str, hw: tuple[int, int] | None) -> np.ndarray:
        return self.train_ids_counts(data, key, hw)[0]

    def train_ids_counts(self, data: bytes, key: str, hw: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
        """(trainIds, pixels per trainId): the counts from the values' histogram that the unmapped check made."""
        ids, bad, colour, binary, counts = self.ids(data, key)
        check_shape(ids, key, hw)
        if bad:
            raise UnmappedLabel(unmapped_message(key, self.d, bad, colour), bad)
        if binary and not self.binary_warned:
            self.binary_warned = True
            log.warning("%s", binary_warning(key, self.d))
        # (counts are of the values as read, but for an offset's: those are of the shifted values)
        step = one_step(self.steps, counts) if ids.dtype == np.uint8 and counts is not None and not self.offset \
            else None
        if step is not None:  # every value present maps by the same addition: one SIMD add, no table per pixel
            train = np.add(ids, np.uint8(step), dtype=np.uint8)
        else:
            train = map_ids(ids, self.lut if ids.dtype == np.uint8 else self.d.lut)
        return train, (pixel_counts(train) if counts is None else train_counts(counts, self.d))


def one_step(steps: np.ndarray, counts: np.ndarray) -> int | None:
    """k where every value present in a label (counts: pixels per value) maps to value + k modulo 256 (steps: what
    each value's mapping adds), else None. ADE20K's labels hold class + 1 with 0 for "other" (ignore): its dictionary
    maps every value to value - 1, 0 -> 255 included; VOC's maps each to itself."""
    ks = steps[np.flatnonzero(counts[:256])]
    return int(ks[0]) if ks.size and (ks == ks[0]).all() else None


def map_ids(ids: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """ids -> lut[ids] (every value already known to be <= 255): OpenCV's table lookup, ~4x numpy's indexing."""
    import cv2

    if ids.dtype != np.uint8:
        ids = ids.astype(np.uint8)
    return cv2.LUT(np.ascontiguousarray(ids), lut) if ids.ndim == 2 and ids.size else lut[ids]


def unmapped_message(key: str, d: mclasses.ClassDictionary, bad: dict, colour: bool) -> str:
    return (f"label {key} holds {'colours' if colour else 'values'} that class dictionary {d.name} does not map: "
            f"{describe_values(bad, colour)}")


def binary_warning(key: str, d: mclasses.ClassDictionary) -> str:
    return (f"label {key} holds only 0 and 255, and 255 is the ignore value of class dictionary {d.name}: its "
            "foreground is ignored in training. If 255 marks objects, map it (an object with id 255) or save the "
            "masks with class ids (0/1)")


def check_shape(ids: np.ndarray, key: str, hw: tuple[int, int] | None) -> None:
    if hw is not None and tuple(ids.shape[:2]) != tuple(hw):
        raise SizeMismatch(f"label {key} is {ids.shape[0]}x{ids.shape[1]} but its image is {hw[0]}x{hw[1]}")
