"""The public datasets end to end against a local mirror on 127.0.0.1: getdataset.py downloads, verifies and
extracts (zip, tar, tgz) each into the store, checkdataset.py checks it and cocorecord.py converts it; the records'
labels equal, pixel for pixel, each dataset's own rule applied to its labels read independently (Pillow palette
indices, scipy for .mat)."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from mllib import sources
from mllib.get import extract
from mllib.get.fetch import DownloadError
from mllib.loaders import SegmentationDataset
from mllib.testing.mirror import Faults, Mirror

from . import publicfake as pf
from .conftest import load_script
from .test_sources import record_labels

getdataset = load_script("datasets/getdataset.py")
cocorecord = load_script("datasets/cocorecord.py")
checkdataset = load_script("datasets/checkdataset.py")


def get(store, name, site, url, workdir, *extra):
    return getdataset.main([name, "--store", store.url, "--base_url", url, "--checksums", str(site / "checksums.tsv"),
                            "--workdir", str(workdir), "--no_progress", "--jobs", "4", *extra])


def convert(store, name, *extra):
    return cocorecord.main(["-trainingset_name", name, "--store", store.url, "--no_progress", "--shard_images", "3",
                            *extra])


def ade_rule(a):  # ADE20K: 0 (other) ignored, v -> v - 1
    return np.where(a == 0, 255, a.astype(np.int32) - 1).astype(np.uint8)


def test_ade20k_download_check_convert_in_one_command(any_store, tmp_path, capsys):
    site = tmp_path / "site"
    truth = pf.make_ade(site)
    pf.checksum_table(site)
    with Mirror(site) as m:
        assert get(any_store, "ade20k", site, m.url, tmp_path / "w", "--check", "--convert", "ade") == 0
        out = capsys.readouterr().out
        assert f"ade20k in {any_store.url_for('datasets/ade20k')}" in out
        assert "0 problem(s)" in out
        assert json.loads((tmp_path / "w" / "checkdataset_ade20k.json").read_text())["problems"]["unmapped"] == 0
        # stored at datasets/ade20k/<member path>, a manifest last; a re-run downloads nothing
        key = "datasets/ade20k/ADEChallengeData2016/images/training/ADE_train_00000001.jpg"
        assert any_store.exists(key)
        assert any_store.exists("datasets/ade20k/.manifests/ADEChallengeData2016.zip.json")
        n = len(m.requests)
        assert get(any_store, "ade20k", site, m.url, tmp_path / "w") == 0
        assert len(m.requests) == n
    desc = json.loads(any_store.get_bytes("trainingsets/ade/description.json"))
    assert desc["sets"]["train"]["length"] == 3 and desc["sets"]["val"]["length"] == 2
    for split in ("train", "val"):
        labels = record_labels(any_store, "ade", split)
        for stem, lab in labels.items():
            raw = np.asarray(Image.open(io.BytesIO(any_store.get_bytes(
                f"datasets/ade20k/ADEChallengeData2016/annotations/{'training' if split == 'train' else 'validation'}"
                f"/{stem}.png"))))
            assert np.array_equal(raw, truth[stem])
            assert np.array_equal(lab, ade_rule(truth[stem])), stem
    # the PyTorch dataset reads it by name too
    ds = SegmentationDataset.from_store(any_store.url, "ade20k", split="val", height=30, width=40,
                                        enable_transform=False)
    assert len(ds) == 2 and ds.classes.classes == 150
    _, label, _, _ = ds[0]
    assert np.array_equal(label.numpy(), ade_rule(truth[ds.source.item(0)[1]]))


@pytest.fixture
def voc_site(tmp_path):
    site = tmp_path / "site"
    voc = pf.make_voc(site)
    sbd = pf.make_sbd(site)
    pf.checksum_table(site)
    return site, voc, sbd


def test_voc2012_aug_from_tar_and_tgz(any_store, voc_site, tmp_path):
    import scipy.io

    site, voc, sbd = voc_site
    with Mirror(site) as m:
        assert get(any_store, "voc2012-aug", site, m.url, tmp_path / "w", "--convert", "aug") == 0
        got = {p for (_, p, _) in m.requests}
    assert got == {"/VOCtrainval_11-May-2012.tar", "/benchmark.tgz", "/train_noval.txt"}
    assert any_store.get_bytes("datasets/sbd/train_noval.txt") == (site / "train_noval.txt").read_bytes()
    want_train = (set(pf.VOC_TRAIN) | set(pf.SBD_TRAIN) | set(pf.SBD_VAL)) - set(pf.VOC_VAL)
    train = record_labels(any_store, "aug", "train")
    val = record_labels(any_store, "aug", "val")
    assert set(train) == want_train and set(val) == set(pf.VOC_VAL)
    for stem, lab in {**train, **val}.items():
        if stem in voc:  # VOC's label wins: the palette PNG's indices, read with Pillow
            im = Image.open(io.BytesIO(any_store.get_bytes(f"datasets/voc2012/{pf.VOC}/SegmentationClass/{stem}.png")))
            assert im.mode == "P"
            want = np.asarray(im)
        else:  # SBD's GTcls.Segmentation, read with scipy
            m_ = scipy.io.loadmat(io.BytesIO(any_store.get_bytes(f"datasets/sbd/{pf.SBD}/cls/{stem}.mat")),
                                  struct_as_record=False, squeeze_me=True)
            want = m_["GTcls"].Segmentation
        truth = voc.get(stem, sbd.get(stem))
        assert np.array_equal(want, truth)
        assert np.array_equal(lab, want), stem  # VOC ids are trainIds; 255 borders stay 255


def test_sbd_and_voc_alone_and_the_four_class_combination(local_store, voc_site, tmp_path):
    site, voc, sbd = voc_site
    ade_truth = pf.make_ade(site)
    pf.checksum_table(site)
    with Mirror(site) as m:
        for name in ("voc2012", "sbd", "ade20k"):
            assert get(local_store, name, site, m.url, tmp_path / "w") == 0
    assert convert(local_store, "sbd", "--dataset", "sbd") == 0
    assert set(record_labels(local_store, "sbd", "val")) == set(pf.SBD_VAL)
    # one person/vehicle/animal set from VOC and ADE20K through their maps onto coco.json's 4 classes
    assert convert(local_store, "pva", "--dataset", "voc2012,ade20k", "--classes_file", "coco") == 0
    desc = json.loads(local_store.get_bytes("trainingsets/pva/description.json"))
    assert desc["classes"]["names"] == ["void", "person", "vehicle", "animal"]
    voc4 = {0: 0, 1: 2, 3: 3, 7: 2, 15: 1, 20: 0, 255: 255}  # background, aeroplane, bird, car, person, tvmonitor
    ade4 = {0: 255, 1: 0, 13: 1, 21: 2, 127: 3, 150: 0}  # other, wall, person, car, animal, flag
    labels = record_labels(local_store, "pva", "train")
    assert set(labels) == set(pf.VOC_TRAIN) | {s for s in ade_truth if "train" in s}
    for stem, lab in labels.items():
        table, raw = (voc4, voc[stem]) if stem in voc else (ade4, ade_truth[stem])
        assert np.array_equal(lab, np.vectorize(table.get, otypes=[np.uint8])(raw)), stem


def test_cocostuff_as_coco_ids_under_both_dictionaries(local_store, tmp_path, capsys):
    site = tmp_path / "site"
    truth = pf.make_cocostuff(site, local_store)
    pf.checksum_table(site)
    with Mirror(site) as m:
        assert get(local_store, "cocostuff", site, m.url, tmp_path / "w") == 0
    assert convert(local_store, "stuff171", "--dataset", "cocostuff") == 0
    assert convert(local_store, "stuff4", "--dataset", "cocostuff", "--classes_file", "coco") == 0
    native = {0: 0, 2: 2, 16: 15, 99: 88, 181: 170, 255: 255}  # PNG value -> mmseg trainId (cocostuff171.tsv)
    four = {0: 1, 2: 2, 16: 3, 99: 0, 181: 0, 255: 255}  # PNG value + 1 = COCO id -> coco.json
    for name, table in (("stuff171", native), ("stuff4", four)):
        for split in ("train", "val"):
            for stem, lab in record_labels(local_store, name, split).items():
                want = np.vectorize(table.get, otypes=[np.uint8])(truth[stem])
                assert np.array_equal(lab, want), (name, stem)
    # PNG value 11 (COCO id 12, street sign: a thing without masks) is not in the 171 classes: an error naming it
    bad = pf.blocks(9, (0, 11))
    local_store.put_bytes("datasets/cocostuff/val2017/000000000450.png", pf.png_l(bad))
    assert checkdataset.main(["cocostuff", "--set", "val", "--store", local_store.url, "--no_progress",
                              "--report", str(tmp_path / "r.json"), "--sheet", ""]) == 1
    assert "000000000450.png" in capsys.readouterr().err


def test_login_datasets_from_the_users_downloads(local_store, tmp_path, capsys):
    dl = tmp_path / "Downloads"
    mtruth = pf.make_mapillary(dl)
    btruth = pf.make_bdd(dl)
    pf.checksum_table(dl)
    base = ["--store", local_store.url, "--workdir", str(tmp_path / "w"), "--no_progress"]
    # without --from_dir: where to download and what to pass
    assert getdataset.main(["mapillary", *base]) == 2
    err = capsys.readouterr().err
    assert "https://www.mapillary.com/dataset/vistas" in err and "--from_dir" in err
    # the registry's md5 for BDD100K's zips: the test's zips are other files, refused naming the file
    assert getdataset.main(["bdd100k", *base, "--from_dir", str(dl)]) == 1
    err = capsys.readouterr().err
    assert "bdd100k_images_10k.zip" in err and "md5" in err
    assert list(local_store.list("datasets/bdd100k/")) == []
    assert getdataset.main(["bdd100k", *base, "--from_dir", str(dl), "--checksums", str(dl / "checksums.tsv"),
                            "--check", "--convert", "bdd"]) == 0
    assert getdataset.main(["mapillary", *base, "--from_dir", str(dl), "--convert", "vistas"]) == 0
    assert (dl / "bdd100k_images_10k.zip").exists()  # the user's files are never deleted
    for name, truth, rule in (("bdd", btruth, lambda a: a), ("vistas", mtruth, lambda a: np.where(a == 65, 255, a))):
        labels = {**record_labels(local_store, name, "train"), **record_labels(local_store, name, "val")}
        assert set(labels) == set(truth)
        for stem, lab in labels.items():
            assert np.array_equal(lab, rule(truth[stem]).astype(np.uint8)), stem


def test_checksum_mismatch_downloads_once_more_then_fails_naming_the_file(local_store, voc_site, tmp_path, capsys):
    site, _, _ = voc_site
    with Mirror(site, faults=Faults(corrupt={"benchmark.tgz": 1})) as m:
        assert get(local_store, "sbd", site, m.url, tmp_path / "w") == 0
        assert sum(1 for (_, p, _) in m.requests if p == "/benchmark.tgz") == 2
    with Mirror(site, faults=Faults(corrupt={"VOCtrainval_11-May-2012.tar": 5})) as m:
        assert get(local_store, "voc2012", site, m.url, tmp_path / "w2") == 1
    err = capsys.readouterr().err
    assert "VOCtrainval_11-May-2012.tar" in err and "failed verification twice" in err
    assert list(local_store.list("datasets/voc2012/")) == []


# ---------------------------------------------------------------------------------------------------------------
# hostile tars
# ---------------------------------------------------------------------------------------------------------------
def _tar(path, infos, mode="w"):
    with tarfile.open(path, mode) as tf:
        tf.addfile(_reg("ok/first.txt", b"fine"), io.BytesIO(b"fine"))
        for ti, data in infos:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return path


def _reg(name, data=b"x"):
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    return ti


def _special(name, kind, link=""):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = link
    return ti


@pytest.mark.parametrize("case,why", [
    ("dotdot", "escapes the folder"), ("absolute", "absolute path"), ("symlink", "symbolic link"),
    ("hardlink", "hard link"), ("chardev", "device"), ("fifo", "device or FIFO"), ("dup", "appears twice"),
    ("manifest", ".manifests"), ("longer", "longer than its header"), ("truncated", "damaged"),
])
def test_hostile_tars_are_refused_and_nothing_is_stored(local_store, tmp_path, case, why):
    p = tmp_path / "bad.tar"
    if case == "dotdot":
        _tar(p, [(_reg("ok/../../etc/passwd"), b"x")])
    elif case == "absolute":
        _tar(p, [(_reg("/etc/passwd"), b"x")])
    elif case == "symlink":
        _tar(p, [(_special("ok/link", tarfile.SYMTYPE, "/etc/passwd"), None)])
    elif case == "hardlink":
        _tar(p, [(_special("ok/hard", tarfile.LNKTYPE, "ok/first.txt"), None)])
    elif case == "chardev":
        _tar(p, [(_special("ok/null", tarfile.CHRTYPE), None)])
    elif case == "fifo":
        _tar(p, [(_special("ok/fifo", tarfile.FIFOTYPE), None)])
    elif case == "dup":
        _tar(p, [(_reg("ok/first.txt", b"other"), b"other")])
    elif case == "manifest":
        _tar(p, [(_reg(".manifests/bad.tar.json", b"{}"), b"{}")])
    elif case == "longer":  # a header says 4 bytes, 1 KiB follows: the rest must not pass for the end of the archive
        good = _reg("ok/first.txt", b"fine")
        bad = _reg("ok/second.txt", b"abcd")
        p.write_bytes(good.tobuf() + b"fine".ljust(512, b"\0") + bad.tobuf() + b"abcd" * 256 + b"\0" * 10240)
    elif case == "truncated":
        _tar(p, [(_reg("ok/big.bin", b"y" * 100_000), b"y" * 100_000)])
        p.write_bytes(p.read_bytes()[:30_000])
    with pytest.raises(DownloadError, match=why):
        extract.extract_to_store(p, local_store, "datasets/bad", bar=False)
    assert list(local_store.list("datasets/")) == []


def test_tgz_bomb_and_not_a_tar(local_store, tmp_path):
    p = tmp_path / "bomb.tgz"
    big = b"\0" * (40 << 20)
    _tar(p, [(_reg("ok/zeros.bin", big), big)], "w:gz")
    with pytest.raises(DownloadError, match="tar bomb"):
        extract.extract_to_store(p, local_store, "datasets/bad", bar=False)
    q = tmp_path / "fake.tar"
    q.write_bytes(b"hello" * 200)
    with pytest.raises(DownloadError, match="not a valid tar"):
        extract.extract_to_store(q, local_store, "datasets/bad", bar=False)
    assert list(local_store.list("datasets/")) == []


def test_tar_extraction_resumes_and_equals_the_zip_of_the_same_members(any_store, tmp_path):
    members = {f"d/{i:03d}.bin": bytes([i]) * (1000 + i) for i in range(40)}
    pf.write_tar(tmp_path / "a.tgz", members, "w:gz")
    pf.write_zip(tmp_path / "a.zip", members)
    r = extract.extract_to_store(tmp_path / "a.tgz", any_store, "datasets/t", bar=False, jobs=3)
    assert r.stored == 40
    zr = extract.extract_to_store(tmp_path / "a.zip", any_store, "datasets/z", bar=False, jobs=3)
    mt = json.loads(any_store.get_bytes("datasets/t/.manifests/a.tgz.json"))
    mz = json.loads(any_store.get_bytes("datasets/z/.manifests/a.zip.json"))
    assert [(m["size"], m["crc"]) for m in mt["members"]] == [(m["size"], m["crc"]) for m in mz["members"]]
    for k, v in members.items():
        assert any_store.get_bytes(f"datasets/t/{k}") == v
    assert zr.stored == 40
    again = extract.extract_to_store(tmp_path / "a.tgz", any_store, "datasets/t", bar=False)
    assert again.stored == 0 and again.skipped == 40


# ---------------------------------------------------------------------------------------------------------------
# .mat labels
# ---------------------------------------------------------------------------------------------------------------
def test_mat_labels_refuse_bombs_and_name_missing_fields():
    import zlib

    from mllib.sources import base

    a = pf.blocks(1, (0, 3, 15))
    assert np.array_equal(base.read_mat(pf.mat(a), "x.mat", "GTcls.Segmentation"), a)
    with pytest.raises(sources.LabelError, match="no field 'Nope'"):
        base.read_mat(pf.mat(a), "x.mat", "GTcls.Nope")
    # a compressed element that unpacks to more than the cap: refused before scipy inflates it
    payload = zlib.compress(b"\0" * (base.MAT_MAX_INFLATED + 1024), 9)
    head = b"MATLAB 5.0 MAT-file".ljust(124, b" ") + b"\x00\x01IM"
    bomb = head + (15).to_bytes(4, "little") + len(payload).to_bytes(4, "little") + payload
    with pytest.raises(sources.LabelError, match="unpacks to more than"):
        base.read_mat(bomb, "bomb.mat", "GTcls.Segmentation")
    with pytest.raises(sources.LabelError, match="not a MATLAB"):
        base.read_mat(b"\x89PNG" + b"\0" * 200, "x.mat", "GTcls.Segmentation")


def test_registry_tables_are_complete_and_their_dictionaries_load():
    from mllib.labels import classes
    from mllib.sources import registry

    assert {"ade20k", "voc2012", "sbd", "voc2012-aug", "cocostuff", "mapillary", "bdd100k", "coco",
            "cityscapes"} <= set(registry.names())
    for n in registry.names():
        t = registry.table(n)
        classes.load(t.classes)
        for target, d in t.class_maps.items():
            assert classes.load(d).classes == classes.load(target).classes, (n, target)
        for f in t.files:
            assert f["name"] and f["url"].startswith("http") and "source" in f
        if not t.script:
            assert {s["set"] for s in t.sets} == {"train", "val"}
            sources.named(n)  # every set parses as source specs
    assert registry.table("ade20k").files[0]["size"] == 967_382_037
    with pytest.raises(sources.SourceError, match="no class dictionary onto"):
        sources.resolve("ade20k", classes_file="cityscapes")
