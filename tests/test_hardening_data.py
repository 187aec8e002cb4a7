"""Hostile and broken inputs, conversion and loading: crafted annotation files and images through cocorecord.py
and CocoDataset, a conversion worker killed mid-shard, the index cache, stale shards, the SeaweedFS helper."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from mllib import images
from mllib import store as mstore

from .cocofake import jpeg, put_coco
from .conftest import SHARED, load_script

ROOT = Path(__file__).resolve().parents[1]


# -- 12-15. crafted annotation files through cocorecord.py ---------------------------------------------------------------
def _ann_store(tmp_path, mutate, n=3):
    s = mstore.connect(tmp_path / "store")
    d = put_coco(s, tmp_path, n=n, hw=(40, 50))
    mutate(d)
    s.put_bytes("datasets/coco/annotations/instances_val2017.json", json.dumps(d).encode())
    return s, d


def _cocorecord(store, *extra):
    rec = load_script("datasets/cocorecord.py")
    spec = json.dumps([{"jsonpath": "annotations/instances_val2017.json", "imagepath": "val2017", "set": "val"}])
    return rec.main(["-trainingset_name", "t", "--store", store.url, "--no_progress", "--datasets", spec, *extra])


def _poly(d, value):
    d["annotations"][0]["segmentation"] = [[1, 1, value, 1, 20, 20]]


ANN_CASES = {
    "nan": (lambda d: _poly(d, float("nan")), "non-finite"),
    "infinity": (lambda d: _poly(d, float("inf")), "non-finite"),
    "huge": (lambda d: _poly(d, 1e12), "far outside"),
    "no category_id": (lambda d: d["annotations"][0].pop("category_id"), "category_id"),
    "flat polygon": (lambda d: d["annotations"][0].update(segmentation=[1, 1, 30, 1, 20, 20]), "flat list"),
    "iscrowd 300": (lambda d: d["annotations"][0].update(iscrowd=300), "iscrowd"),
    "RLE counts too long": (lambda d: d["annotations"][0].update(
        segmentation={"size": [40, 50], "counts": [0, 2500, 10]}, iscrowd=1), "RLE counts cover"),
}


@pytest.mark.parametrize("case", sorted(ANN_CASES))
def test_bad_annotation_is_one_line_or_a_counted_skip(tmp_path, capsys, case):
    mutate, why = ANN_CASES[case]
    s, d = _ann_store(tmp_path, mutate)
    aid, iid = d["annotations"][0]["id"], d["annotations"][0]["image_id"]
    assert _cocorecord(s) == 1
    err = capsys.readouterr().err
    assert why in err and f"annotation {aid}" in err and f"image {iid}" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert _cocorecord(s, "--skip_bad") == 0
    desc = json.loads(s.get_bytes("trainingsets/t/description.json"))
    assert desc["sets"]["val"]["length"] == 2 and len(desc["sets"]["val"]["skipped"]) == 1
    assert why in desc["sets"]["val"]["skipped"][0]["reason"]


@pytest.mark.parametrize("mutate, why", [
    (lambda d: d["images"][1].pop("file_name"), "'file_name'"),
    (lambda d: d["images"][1].pop("height"), "'height'"),
    (lambda d: d["images"][1].pop("id"), "'id'"),
    (lambda d: d["images"][1].update(id=d["images"][0]["id"]), "appears 2 times"),
])
def test_bad_image_entry_or_duplicate_id_is_one_line(tmp_path, capsys, mutate, why):
    s, d = _ann_store(tmp_path, mutate)
    assert _cocorecord(s) == 1
    err = capsys.readouterr().err
    assert why in err and "instances_val2017.json" in err and len(err.strip().splitlines()) == 1
    if why == "appears 2 times":
        assert str(d["images"][0]["id"]) in err


def test_unexpected_exception_is_one_line_and_a_traceback_file(capsys, monkeypatch, tmp_path):
    from mllib import cli

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)

    def body():
        raise ZeroDivisionError("boom")

    assert cli.run(body, "x.py") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "internal error: ZeroDivisionError: boom" in err and "Traceback" not in err
    path = err.rsplit("full traceback: ", 1)[1].rstrip(")")
    assert "ZeroDivisionError" in Path(path).read_text() and (os.stat(path).st_mode & 0o077) == 0


# -- 13. a dying conversion worker --------------------------------------------------------------------------------------------
def _children(pid: int) -> list[str]:
    """Child process ids of pid, from /proc (no procps needed)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(d)
    return out


def _open_files(pid: str) -> list[str]:
    """What the process's file descriptors point at now; fds that close while being read are left out."""
    names = []
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return names
    for fd in fds:
        try:
            names.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:  # closed between listdir and readlink, or the process has gone
            continue
    return names


def test_dead_worker_is_an_error_naming_the_shard_not_a_hang(tmp_path):
    s = mstore.connect(tmp_path / "store")
    put_coco(s, tmp_path, n=300, hw=(200, 260))
    spec = json.dumps([{"jsonpath": "annotations/instances_val2017.json", "imagepath": "val2017", "set": "val"}])
    p = subprocess.Popen([sys.executable, str(ROOT / "datasets" / "cocorecord.py"), "-trainingset_name", "t",
                          "--store", s.url, "--datasets", spec, "--jobs", "2", "--shard_images", "10",
                          "--no_progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.monotonic() + 90
    while killed is None and time.monotonic() < deadline and p.poll() is None:
        kids = _children(p.pid)
        for kid in kids:  # a pool worker: it has started writing a shard once the shard's temporary file is open
            try:
                cmd = Path(f"/proc/{kid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"multiprocessing" in cmd and b"resource_tracker" not in cmd and any(
                    ".tfrecord.mllib-tmp-" in name for name in _open_files(kid)):
                os.kill(int(kid), signal.SIGKILL)
                killed = kid
                break
        time.sleep(0.02)
    try:
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert killed is not None, "no worker was caught writing a shard"
    assert p.returncode == 1, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("mllib-cocorecord: error:") and "Traceback" not in err
    assert "worker process died" in last and "val-000" in last and "re-run" in last


# -- 16, 17. decompression bombs and images corrupt in the middle ------------------------------------------------------------
def _png_header(w: int, h: int, gray: bool = True) -> bytes:
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0 if gray else 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_a_bad_sample(local_store, tmp_path):
    from mllib.loaders.cocodataset import CocoDataset, SampleError

    bomb = _png_header(30000, 30000)
    with pytest.raises(images.ImageError, match="over the limit"):
        images.decode(bomb)
    with pytest.raises(images.ImageError, match="over the limit"):
        images.uniform_rgb(bomb)
    d = put_coco(local_store, tmp_path, n=3, hw=(30, 40))
    local_store.put_bytes(f"datasets/coco/val2017/{d['images'][1]['file_name']}", bomb)
    ds = CocoDataset.from_store(local_store, split="val2017", height=32, width=32, seed=0)
    with pytest.raises(SampleError, match="over the limit"):
        ds[1]
    ok = CocoDataset.from_store(local_store, split="val2017", height=32, width=32, seed=0, skip_bad=True)
    assert ok[1][0].shape == (3, 32, 32) and ok.bad_count() == 1


def _corrupt_middle(data: bytes) -> bytes:
    b = bytearray(data)
    mid = len(b) // 2
    b[mid : mid + 200] = bytes((x * 7 + 13) & 0xFF for x in b[mid : mid + 200])
    return bytes(b)


def test_image_corrupt_in_the_middle_is_skipped_in_conversion(tmp_path):
    good = jpeg(120, 160, 3)
    images.verify(good)
    bad = _corrupt_middle(good)
    assert bad[-2:] == b"\xff\xd9" and images.info(bad)[0] == "jpeg"  # end marker intact
    with pytest.raises(images.ImageError, match="corrupt"):
        images.uniform_rgb(bad)
    ok, png = cv2.imencode(".png", np.full((30, 40, 3), 7, np.uint8))
    png = png.tobytes()
    assert images.uniform_rgb(png)[0] == png  # a good PNG still passes through byte for byte
    with pytest.raises(images.ImageError, match="corrupt PNG"):
        images.uniform_rgb(png[:40] + bytes([png[40] ^ 0xFF]) + png[41:])

    def mutate(d):
        pass

    s, d = _ann_store(tmp_path, mutate)
    name = d["images"][2]["file_name"]
    s.put_bytes(f"datasets/coco/val2017/{name}", _corrupt_middle(s.get_bytes(f"datasets/coco/val2017/{name}")))
    assert _cocorecord(s) == 0
    desc = json.loads(s.get_bytes("trainingsets/t/description.json"))
    skipped = desc["sets"]["val"]["skipped"]
    assert desc["sets"]["val"]["length"] == 2 and len(skipped) == 1 and name in skipped[0]["key"]


def _full_decode_verdict(data: bytes) -> str | None:
    """What a full-size strict decode says of a JPEG: None (clean) or its error."""
    import simplejpeg

    try:
        simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
        return None
    except ValueError as e:
        return str(e)


def test_jpeg_check_at_one_eighth_scale_refuses_what_a_full_decode_refuses():
    """images.verify decodes a JPEG's pixels at 1/8 scale (every coefficient still entropy-decoded): over 300 random
    corruptions (bit flips, overwritten runs, truncations, some in the last rows) it refuses exactly those a full
    decode refuses, and passes the others."""
    import random

    samples = [jpeg(240, 320, 5), jpeg(480, 640, 6, gray=True)]
    real = SHARED / "coco-real" / "val2017"
    if real.is_dir():  # and two real COCO images where the shared sample data is present
        samples += [p.read_bytes() for p in sorted(real.glob("*.jpg"))[:2]]
    rng = random.Random(0)
    verdicts = {"refused": 0, "passed": 0}
    for k in range(300):
        b = bytearray(samples[k % len(samples)])
        kind = ("flip", "run", "truncate", "tail")[k % 4]
        if kind == "flip":
            b[rng.randrange(700, len(b) - 2)] ^= 1 << rng.randrange(8)
        elif kind == "run":
            i = rng.randrange(700, len(b) - 40)
            b[i : i + 20] = bytes(rng.randrange(256) for _ in range(20))
        elif kind == "truncate":
            b = b[: rng.randrange(700, len(b) - 2)]
        else:  # the scan's last bytes: the bottom rows
            i = len(b) - 2 - rng.randrange(1, 60)
            b[i] ^= 0xFF
        data = bytes(b)
        full = _full_decode_verdict(data)
        try:
            images.verify(data)
            ours = None
        except images.ImageError as e:
            ours = str(e)
        assert (ours is None) == (full is None), (kind, k, ours, full)
        verdicts["passed" if ours is None else "refused"] += 1
    assert verdicts["refused"] >= 100 and verdicts["passed"] >= 30, verdicts


# -- 19. the index cache is tied to the JSON's content ----------------------------------------------------------------------
def test_index_cache_follows_content_not_size(any_store, tmp_path):
    from mllib.labels.cocoindex import CocoIndex

    d = put_coco(any_store, tmp_path, n=3)
    key = "datasets/coco/annotations/instances_val2017.json"
    first = CocoIndex.load(any_store, key)
    assert any_store.exists(key + ".mllib-index.npz")
    raw = any_store.get_bytes(key)
    d["images"][0]["file_name"] = "x" * len(d["images"][0]["file_name"])  # same length: same JSON size
    new = json.dumps(d).encode()
    assert len(new) == len(raw) and new != raw
    any_store.put_bytes(key, new)
    again = CocoIndex.load(any_store, key)
    assert again.file_name(0) == d["images"][0]["file_name"] != first.file_name(0)


# -- 20. stale-shard cleanup stays at its set's level ---------------------------------------------------------------------------
def test_stale_cleanup_does_not_touch_a_nested_set(tmp_path):
    s, _ = _ann_store(tmp_path, lambda d: None)
    rec = load_script("datasets/cocorecord.py")
    spec = json.dumps([{"jsonpath": "annotations/instances_val2017.json", "imagepath": "val2017", "set": "val"}])
    assert rec.main(["-trainingset_name", "coco/small", "--store", s.url, "--no_progress", "--datasets", spec]) == 0
    nested = sorted(i.key for i in s.list("trainingsets/coco/small/"))
    assert any(k.endswith(".tfrecord") for k in nested)
    s.put_bytes("trainingsets/coco/val-00000-of-00009.tfrecord", b"stale")  # of an earlier conversion
    assert rec.main(["-trainingset_name", "coco", "--store", s.url, "--no_progress", "--datasets", spec]) == 0
    assert sorted(i.key for i in s.list("trainingsets/coco/small/")) == nested
    assert not s.exists("trainingsets/coco/val-00000-of-00009.tfrecord")


# -- 21. the SeaweedFS helper's files ---------------------------------------------------------------------------------------------
@pytest.mark.s3
def test_seaweed_helper_files_are_private(s3_server):
    import stat

    assert stat.S_IMODE(os.stat(s3_server.dir / "s3.json").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(s3_server.dir / "data").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(s3_server.dir / "weed.log").st_mode) == 0o600
    help_text = subprocess.run([sys.executable, "-m", "mllib.testing.seaweed", "--help"], capture_output=True,
                               text=True).stdout
    assert "unauthenticated" in help_text and "127.0.0.1" in help_text


def test_seaweed_identities_file_never_world_readable(tmp_path, monkeypatch):
    """Created 0600 from its first byte (not written, then chmod-ed): watch the mode at creation."""
    import stat

    from mllib.testing.seaweed import SeaweedS3

    modes = []
    real_open = os.open

    def spy(path, flags, mode=0o777, *a, **kw):
        fd = real_open(path, flags, mode, *a, **kw)
        if str(path).endswith("s3.json"):
            modes.append(os.fstat(fd).st_mode & 0o777)
        return fd

    monkeypatch.setattr(os, "open", spy)
    s = SeaweedS3(tmp_path / "sw")
    cfg = s.prepare()
    assert modes == [0o600]  # the mode it was created with, before a byte was written
    assert stat.S_IMODE(os.stat(cfg).st_mode) == 0o600 and stat.S_IMODE(os.stat(tmp_path / "sw").st_mode) == 0o700
    assert s.secret_key in cfg.read_text()
