"""Small archives in the exact layouts of the public segmentation datasets (ADE20K's zip, VOC 2012's tar, SBD's tgz
with .mat labels made by scipy, COCO-Stuff's label-map zip, Mapillary's and BDD100K's zips), with a checksum table
for the mirror. Each maker returns the ground truth: every label's raw values (PNG indices, .mat maps) by stem, from
which a test computes the expected trainIds by the dataset's own rule."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from .cocofake import jpeg

HW = (30, 40)
# the VOC devkit colormap for indices 0..20 and 255 (VOClabelcolormap.m)


def voc_palette() -> list[int]:
    out = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out += [r, g, b]
    return out


def blocks(seed: int, values, hw=HW, border: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = np.full(hw, values[0], np.uint8)
    for _ in range(8):
        y, x = int(rng.integers(0, hw[0] - 6)), int(rng.integers(0, hw[1] - 6))
        a[y:y + int(rng.integers(3, 12)), x:x + int(rng.integers(3, 15))] = rng.choice(values)
    if border is not None:
        a[hw[0] // 2, 5:-5] = border
    return a


def png_l(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a, "L").save(buf, format="PNG")
    return buf.getvalue()


def png_p(a: np.ndarray, palette: list[int]) -> bytes:
    buf = io.BytesIO()
    im = Image.frombytes("P", a.shape[::-1], a.tobytes())
    im.putpalette(palette)
    im.save(buf, format="PNG")
    return buf.getvalue()


def mat(seg: np.ndarray) -> bytes:
    """An SBD cls .mat: struct GTcls with Segmentation (the class map) and Boundaries, compressed as SBD's are."""
    import scipy.io

    buf = io.BytesIO()
    bnd = np.empty((20, 1), dtype=object)
    for i in range(20):
        bnd[i, 0] = np.zeros((1, 1), np.uint8)
    scipy.io.savemat(buf, {"GTcls": {"Segmentation": seg, "Boundaries": bnd, "CategoriesPresent": np.unique(seg)}},
                     do_compression=True)
    return buf.getvalue()


def write_zip(path: Path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for k, v in members.items():
            z.writestr(k, v)


def write_tar(path: Path, members: dict[str, bytes], mode: str = "w") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode) as tf:
        dirs = sorted({str(Path(k).parent) for k in members})
        for d in dirs:  # directory entries, as tar writes them
            ti = tarfile.TarInfo(d)
            ti.type = tarfile.DIRTYPE
            ti.mode = 0o755
            tf.addfile(ti)
        for k, v in members.items():
            ti = tarfile.TarInfo(k)
            ti.size = len(v)
            tf.addfile(ti, io.BytesIO(v))


def checksum_table(site: Path) -> Path:
    """checksums.tsv (url size sha256 md5) of every file in site, for --checksums."""
    lines = ["url\tsize\tsha256\tmd5"]
    for p in sorted(site.iterdir()):
        if p.is_file() and p.name != "checksums.tsv":
            b = p.read_bytes()
            lines.append(f"http://mirror/{p.name}\t{len(b)}\t{hashlib.sha256(b).hexdigest()}\t{hashlib.md5(b).hexdigest()}")
    out = site / "checksums.tsv"
    out.write_text("\n".join(lines) + "\n")
    return out


def make_ade(site: Path) -> dict:
    """ADEChallengeData2016.zip: 3 training + 2 validation images with index PNGs (0 other, 1..150), objectInfo150."""
    root = "ADEChallengeData2016"
    m: dict[str, bytes] = {f"{root}/objectInfo150.txt": b"Idx\tRatio\tTrain\tVal\tName\n1\t0.1\t1\t1\twall\n"}
    truth = {}
    for split, prefix, n in (("training", "ADE_train", 3), ("validation", "ADE_val", 2)):
        for i in range(1, n + 1):
            stem = f"{prefix}_{i:08d}"
            a = blocks(i * 7 + n, (0, 1, 13, 21, 127, 150))
            m[f"{root}/images/{split}/{stem}.jpg"] = jpeg(*HW, seed=i)
            m[f"{root}/annotations/{split}/{stem}.png"] = png_l(a)
            truth[stem] = a
    write_zip(site / "ADEChallengeData2016.zip", m)
    return truth


VOC = "VOCdevkit/VOC2012"
SBD = "benchmark_RELEASE/dataset"
# VOC: train a,b,c; val d,e; JPEGs x,y without segmentation. SBD: train b,f,g,d; val h,c. aug train = a,b,c,f,g,h
VOC_TRAIN, VOC_VAL, VOC_ONLY_JPEG = ["2007_000001", "2007_000002", "2007_000003"], ["2007_000004", "2007_000005"], \
    ["2007_000098", "2007_000099"]
SBD_TRAIN, SBD_VAL = ["2007_000002", "2008_000006", "2008_000007", "2007_000004"], ["2008_000008", "2007_000003"]


def make_voc(site: Path, extra_jpegs: int = 0) -> dict:
    """VOCtrainval_11-May-2012.tar: palette PNG labels (indices 0..20, 255 borders), split lists, JPEGs without
    labels (`extra_jpegs` more of them: a longer extraction), and detection files the sources never read."""
    m: dict[str, bytes] = {}
    truth = {}
    pal = voc_palette()
    for k, stem in enumerate(VOC_TRAIN + VOC_VAL):
        a = blocks(100 + k, (0, 1, 3, 7, 15, 20), border=255)
        m[f"{VOC}/JPEGImages/{stem}.jpg"] = jpeg(*HW, seed=100 + k)
        m[f"{VOC}/SegmentationClass/{stem}.png"] = png_p(a, pal)
        m[f"{VOC}/SegmentationObject/{stem}.png"] = png_p((a > 0).astype(np.uint8), pal)
        m[f"{VOC}/Annotations/{stem}.xml"] = b"<annotation><source><image>flickr</image></source></annotation>"
        truth[stem] = a
    for k, stem in enumerate(VOC_ONLY_JPEG + [f"2012_{i:06d}" for i in range(extra_jpegs)]):
        m[f"{VOC}/JPEGImages/{stem}.jpg"] = jpeg(*HW, seed=200 + k)
    m[f"{VOC}/ImageSets/Segmentation/train.txt"] = ("\n".join(VOC_TRAIN) + "\n").encode()
    m[f"{VOC}/ImageSets/Segmentation/val.txt"] = ("\n".join(VOC_VAL) + "\n").encode()
    m[f"{VOC}/ImageSets/Segmentation/trainval.txt"] = ("\n".join(VOC_TRAIN + VOC_VAL) + "\n").encode()
    m[f"{VOC}/ImageSets/Main/train.txt"] = b"2007_000098\n"
    write_tar(site / "VOCtrainval_11-May-2012.tar", m)
    return truth


def make_sbd(site: Path) -> dict:
    """benchmark.tgz: img/*.jpg, cls/*.mat (GTcls.Segmentation), train.txt, val.txt; and train_noval.txt beside it."""
    m: dict[str, bytes] = {}
    truth = {}
    for k, stem in enumerate(SBD_TRAIN + SBD_VAL):
        a = blocks(300 + k, (0, 2, 8, 12, 15))  # SBD maps: no 255 borders
        m[f"{SBD}/img/{stem}.jpg"] = jpeg(*HW, seed=300 + k)
        m[f"{SBD}/cls/{stem}.mat"] = mat(a)
        m[f"{SBD}/inst/{stem}.mat"] = mat((a > 0).astype(np.uint8))
        truth[stem] = a
    m[f"{SBD}/train.txt"] = ("\n".join(SBD_TRAIN) + "\n").encode()
    m[f"{SBD}/val.txt"] = ("\n".join(SBD_VAL) + "\n").encode()
    write_tar(site / "benchmark.tgz", m, "w:gz")
    (site / "train_noval.txt").write_text("\n".join(s for s in SBD_TRAIN if s not in VOC_VAL) + "\n")
    return truth


COCOSTUFF_VALUES = (0, 2, 16, 99, 181, 255)  # person, car, cat, cardboard, wood (PNG = COCO id - 1), unlabeled


def make_cocostuff(site: Path, store, n_train: int = 3, n_val: int = 2) -> dict:
    """stuffthingmaps_trainval2017.zip (PNG value = COCO id - 1, 255 unlabeled) and the COCO images it labels, put
    in the store where getcoco.py puts them."""
    m: dict[str, bytes] = {}
    truth = {}
    for split, n in (("train2017", n_train), ("val2017", n_val)):
        for i in range(n):
            stem = f"{400 + i + (0 if split == 'train2017' else 50):012d}"
            a = blocks(400 + i + len(split), COCOSTUFF_VALUES)
            m[f"{split}/{stem}.png"] = png_l(a)
            store.put_bytes(f"datasets/coco/{split}/{stem}.jpg", jpeg(*HW, seed=400 + i))
            truth[stem] = a
    write_zip(site / "stuffthingmaps_trainval2017.zip", m)
    return truth


def make_mapillary(folder: Path, name: str = "mapillary-vistas-dataset_public_v1.2.zip", labels: str = "labels") -> dict:
    """The Vistas zip as downloaded: {training,validation}/images/*.jpg, .../labels/*.png (palette, 0..65)."""
    m: dict[str, bytes] = {}
    truth = {}
    pal = voc_palette()
    for split, n in (("training", 2), ("validation", 1)):
        for i in range(n):
            stem = f"{split[:1]}Mq{i:04d}"
            a = blocks(500 + i + n, (13, 19, 55, 0, 65))
            m[f"{split}/images/{stem}.jpg"] = jpeg(*HW, seed=500 + i)
            m[f"{split}/{labels}/{stem}.png"] = png_p(a, pal)
            truth[stem] = a
    m["LICENSE"] = b"Mapillary Vistas Dataset Research Use License (test copy)\n"
    write_zip(folder / name, m)
    return truth


def make_bdd(folder: Path) -> dict:
    """bdd100k_images_10k.zip (more images than masks) and bdd100k_sem_seg_labels_trainval.zip (trainIds, 255)."""
    imgs: dict[str, bytes] = {}
    labels: dict[str, bytes] = {}
    truth = {}
    for split, n in (("train", 2), ("val", 1)):
        for i in range(n):
            stem = f"{split[:1]}bdd{i:04d}"
            a = blocks(600 + i + n, (0, 11, 12, 13, 18, 255))
            imgs[f"bdd100k/images/10k/{split}/{stem}.jpg"] = jpeg(*HW, seed=600 + i)
            labels[f"bdd100k/labels/sem_seg/masks/{split}/{stem}.png"] = png_l(a)
            labels[f"bdd100k/labels/sem_seg/colormaps/{split}/{stem}.png"] = png_l(a)
            truth[stem] = a
    imgs["bdd100k/images/10k/test/tbdd0000.jpg"] = jpeg(*HW, seed=699)
    write_zip(folder / "bdd100k_images_10k.zip", imgs)
    write_zip(folder / "bdd100k_sem_seg_labels_trainval.zip", labels)
    return truth
