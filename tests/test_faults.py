"""Faults of real infrastructure (issue: the store goes away, shards rot, disks fill, the endpoint throttles).
Here: corrupted shards. Every TFRecord read checks each record's length and data CRCs and each shard's sha256
against description.json: an error naming the shard and the byte offset, or with skip_bad a counted replacement;
datasets/checkrecords.py names the bad shards, and a cocorecord.py re-run re-writes exactly those."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from mllib.records import read as records
from mllib.records.tfrecord import RecordError

from .cocofake import put_coco
from .conftest import load_script


def make_set(store, tmp_path, n_train=6, shard_images=2):
    put_coco(store, tmp_path, "train2017", n_train, seed=1, hw=(40, 56))
    put_coco(store, tmp_path, "val2017", 2, seed=2, hw=(40, 56))
    rec = load_script("datasets/cocorecord.py")
    assert rec.main(["-trainingset_name", "r", "--store", store.url, "--no_progress", "--shard_images",
                     str(shard_images)]) == 0
    return records.shard_keys(store, "r", "train")


def frames(data: bytes) -> list[tuple[int, int]]:
    """(offset, data length) of each record frame."""
    out, off = [], 0
    while off < len(data):
        (n,) = struct.unpack("<Q", data[off:off + 8])
        out.append((off, n))
        off += 16 + n
    return out


def samples(store, skip_bad=False):
    ds = records.RecordsDataset(store, "r", "train", height=32, width=32, shuffle=False, skip_bad=skip_bad)
    return ds, [(img.numpy().copy(), lab.numpy().copy()) for img, lab in ds]


def path_of(store, key):
    return store.local_path(key)


def test_a_flipped_bit_names_the_shard_and_the_record_offset(local_store, tmp_path):
    keys = make_set(local_store, tmp_path)
    clean = samples(local_store)[1]
    p = path_of(local_store, keys[1])
    data = bytearray(p.read_bytes())
    (off, n) = frames(bytes(data))[1]  # the shard's second record
    data[off + 12 + n // 2] ^= 0x10
    p.write_bytes(bytes(data))
    with pytest.raises(RecordError, match=rf"{keys[1]}: record 1 at byte {off}: data CRC mismatch"):
        samples(local_store)
    ds, got = samples(local_store, skip_bad=True)
    assert ds.bad_count() == 1 and len(got) == len(clean) == 6
    # every other record exactly as before; the bad one replaced by the previous good record, warped as itself
    same = [k for k in range(6) if np.array_equal(got[k][0], clean[k][0]) and np.array_equal(got[k][1], clean[k][1])]
    assert same == [0, 1, 2, 4, 5]
    tf_bad = []
    ds_tf = records.tf_dataset(local_store, "r", "train", skip_bad=True, bad=tf_bad)
    assert sum(1 for _ in ds_tf) == 5 and len(tf_bad) == 1 and f"at byte {off}" in str(tf_bad[0])
    with pytest.raises(Exception, match=rf"{keys[1]}: record 1 at byte {off}"):
        list(records.tf_dataset(local_store, "r", "train"))


def test_truncated_shard_wrong_length_and_replaced_shard(local_store, tmp_path):
    keys = make_set(local_store, tmp_path)
    p0, p1 = path_of(local_store, keys[0]), path_of(local_store, keys[1])
    original = p0.read_bytes()
    (off, n) = frames(original)[1]
    p0.write_bytes(original[: off + 12 + n // 3])  # cut inside the second record
    with pytest.raises(RecordError, match=rf"{keys[0]}: record 1 at byte {off}: truncated record"):
        samples(local_store)
    ds, got = samples(local_store, skip_bad=True)
    assert ds.bad_count() == 1 and len(got) == 6
    bad_len = bytearray(original)
    bad_len[off + 2] ^= 0x01  # the length field: its CRC no longer matches, nothing after it can be framed
    p0.write_bytes(bytes(bad_len))
    with pytest.raises(RecordError, match=rf"record 1 at byte {off}: corrupt length field"):
        samples(local_store)
    p0.write_bytes(original[:off])  # cut exactly at a record boundary: only the description's count tells
    with pytest.raises(RecordError, match=rf"{keys[0]}: 1 records, description.json says 2"):
        samples(local_store)
    p0.write_bytes(p1.read_bytes())  # another shard's valid bytes: every frame sound, the sha256 differs
    with pytest.raises(RecordError, match=rf"{keys[0]}: its sha256 .* differs from description.json"):
        samples(local_store)


def corrupt(data: bytes, rng) -> tuple[bytes, str]:
    kind = rng.choice(["flip", "truncate", "overwrite", "append", "zero"])
    b = bytearray(data)
    if kind == "flip":
        i = int(rng.integers(len(b)))
        b[i] ^= 1 << int(rng.integers(8))
    elif kind == "truncate":
        b = b[: int(rng.integers(1, len(b)))]
    elif kind == "overwrite":
        i = int(rng.integers(len(b) - 8))
        b[i:i + 8] = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
    elif kind == "append":
        b += rng.integers(0, 256, int(rng.integers(1, 40)), dtype=np.uint8).tobytes()
    else:
        i = int(rng.integers(len(b) - 64))
        b[i:i + 64] = bytes(64)
    return bytes(b), kind


@pytest.mark.timeout(300)
def test_fuzz_200_corruptions_each_gets_the_error_or_a_counted_skip(local_store, tmp_path):
    """200 random corruptions of one shard (bit flips, truncations, overwritten and zeroed runs, appended bytes):
    every one either raises RecordError naming the shard, or with skip_bad is counted; the records before the
    corruption are exactly the clean ones; nothing hangs."""
    keys = make_set(local_store, tmp_path, n_train=4, shard_images=4)
    assert len(keys) == 1
    clean = samples(local_store)[1]
    p = path_of(local_store, keys[0])
    original = p.read_bytes()
    starts = [off for off, _ in frames(original)]
    rng = np.random.default_rng(2026)
    survived = kinds = 0
    seen = set()
    for _ in range(200):
        data, kind = corrupt(original, rng)
        if data == original:
            continue
        kinds += 1
        seen.add(kind)
        p.write_bytes(data)
        with pytest.raises(RecordError) as e:
            samples(local_store)
        assert keys[0] in str(e.value)
        ds, got = samples(local_store, skip_bad=True)
        assert ds.bad_count() >= 1, kind
        first = next((k for k in range(len(starts)) if k + 1 == len(starts) or starts[k + 1] > e.value.offset), 0)
        for k in range(min(first, len(got))):  # records wholly before the damage are untouched
            assert np.array_equal(got[k][0], clean[k][0]) and np.array_equal(got[k][1], clean[k][1])
        survived += 1
    p.write_bytes(original)
    assert survived == kinds >= 190 and seen == {"flip", "truncate", "overwrite", "append", "zero"}
    print(f"{kinds} corruptions injected, {survived} caught (error or counted skip), 0 silently wrong")


def test_checkrecords_names_bad_shards_and_cocorecord_rewrites_them(local_store, tmp_path, capsys):
    keys = make_set(local_store, tmp_path)
    check = load_script("datasets/checkrecords.py")
    assert check.main(["r", "--store", local_store.url, "--no_progress"]) == 0
    assert "checked 4 shards, 8 records" in capsys.readouterr().out and "0 bad shards"
    before = {k: path_of(local_store, k).read_bytes() for k in keys}
    p = path_of(local_store, keys[2])
    data = bytearray(before[keys[2]])
    data[frames(bytes(data))[0][1] // 2 + 12] ^= 0xFF
    p.write_bytes(bytes(data))
    assert check.main(["r", "--store", local_store.url, "--no_progress", "--report", str(tmp_path / "c.json")]) == 1
    out = capsys.readouterr().out
    assert f"bad: {keys[2]}: record 0 at byte 0: data CRC mismatch" in out
    assert "1 bad shards" in out and "python3 datasets/cocorecord.py -trainingset_name r" in out
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["bad"] == [keys[2]] and not report["ok"]
    mtimes = {k: path_of(local_store, k).stat().st_mtime_ns for k in keys}
    rec = load_script("datasets/cocorecord.py")
    assert rec.main(["-trainingset_name", "r", "--store", local_store.url, "--no_progress", "--shard_images",
                     "2"]) == 0
    assert {k: path_of(local_store, k).read_bytes() for k in keys} == before  # re-written byte for byte
    assert [k for k in keys if path_of(local_store, k).stat().st_mtime_ns != mtimes[k]] == [keys[2]]
    assert check.main(["r", "--store", local_store.url, "--no_progress"]) == 0


def test_network2d_on_a_corrupted_shard(local_store, tmp_path, capsys):
    keys = make_set(local_store, tmp_path)
    p = path_of(local_store, keys[0])
    data = bytearray(p.read_bytes())
    data[40] ^= 0x04
    p.write_bytes(bytes(data))
    net = load_script("networks/network2d.py")
    common = ["--store", local_store.url, "--records", "r", "--height", "32", "--width", "32", "--batch_size", "2",
              "--model_width", "4", "--model_depth", "2", "--num_workers", "0", "--no_progress", "--epochs", "1",
              "--model_name", "c", "--metrics_file", str(tmp_path / "run" / "m.jsonl")]
    assert net.main(common) == 1
    assert f"{keys[0]}: record 0 at byte 0: data CRC mismatch" in capsys.readouterr().err
    assert net.main([*common, "--skip_bad"]) == 0
    line = json.loads((tmp_path / "run" / "m.jsonl").read_text().splitlines()[-1])
    assert line["bad_samples"] == 1 and line["step"] == 3  # 6 records: every step taken, one replaced


# -- throttling: 503 SlowDown, 429, resets; Retry-After; the user's retry settings ---------------------------------
def test_retry_after_values():
    from mllib.get.fetch import MAX_RETRY_AFTER, retry_after

    assert retry_after("3") == 3.0 and retry_after(None) is None and retry_after("soon") is None
    assert retry_after("999999") == MAX_RETRY_AFTER
    assert retry_after("Sun, 06 Dec 2026 12:00:10 GMT", now=1796558400.0) == pytest.approx(10.0)
    assert retry_after("Sun, 06 Dec 2026 11:00:00 GMT", now=1796558400.0) == 0.0  # in the past: now


def test_a_download_waits_as_long_as_retry_after_says(tmp_path, caplog):
    import logging
    import time

    from mllib.get import fetch as fetching

    from .crafted import Crafted

    body = b"x" * 1000

    def respond(h, n):
        if n == 0:
            return 503, {"Retry-After": "1"}, b"slow down"
        if n == 1:
            return 429, {"Retry-After": "1"}, b"too many"
        return 200, {}, body

    caplog.set_level(logging.WARNING)
    with Crafted(respond) as srv:
        t0 = time.monotonic()
        got = fetching.fetch(fetching.FileSpec("f.bin", srv.url + "/f.bin", size=1000), tmp_path, bar=False,
                             retries=5, backoff=0.001)
        waited = time.monotonic() - t0
    assert got.read_bytes() == body and len(srv.requests) == 3
    assert waited >= 2.0  # the backoff alone would have waited milliseconds
    assert caplog.text.count("the server's Retry-After") == 2


def test_s3_retries_are_the_users_when_set(monkeypatch, tmp_path):
    from mllib.store import S3Store

    monkeypatch.delenv("AWS_RETRY_MODE", raising=False)
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    retries = S3Store("s3://bkt", endpoint_url="http://127.0.0.1:9").client.meta.config.retries
    assert retries == {"mode": "standard", "total_max_attempts": 9}  # mllib's default
    monkeypatch.setenv("AWS_RETRY_MODE", "adaptive")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    retries = S3Store("s3://bkt", endpoint_url="http://127.0.0.1:9").client.meta.config.retries
    assert retries == {"mode": "adaptive", "total_max_attempts": 3}  # AWS_MAX_ATTEMPTS counts every try
    monkeypatch.delenv("AWS_RETRY_MODE")
    monkeypatch.delenv("AWS_MAX_ATTEMPTS")
    (tmp_path / "config").write_text("[profile p]\nretry_mode = legacy\nmax_attempts = 2\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_PROFILE", "p")
    retries = S3Store("s3://bkt", endpoint_url="http://127.0.0.1:9").client.meta.config.retries
    assert retries == {"mode": "legacy", "total_max_attempts": 2}


def test_the_fault_proxy_injects_what_it_is_asked_and_no_more():
    import socket

    from mllib.testing.latency import LatencyProxy

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    with LatencyProxy(srv.getsockname(), 0.0, faults={"503": 1.0}, max_faults=2, retry_after=0) as proxy:
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as c:
                c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert c.recv(4096).startswith(b"HTTP/1.1 503 Slow Down\r\n")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as c:
            c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            got = []  # the proxy opens a server connection per client: the third one carries the request
            for _ in range(3):
                conn, _ = srv.accept()
                conn.settimeout(5)
                got.append(conn.recv(4096))
                conn.close()
            assert got[:2] == [b"", b""] and got[2].startswith(b"GET / HTTP/1.1")  # the bound is reached
        assert proxy.injected == {"503": 2, "429": 0, "reset": 0}
    srv.close()
    with pytest.raises(ValueError):
        LatencyProxy(("127.0.0.1", 9), 0.0, faults={"503": 0.7, "reset": 0.6})


@pytest.mark.s3
def test_conversion_and_reading_under_injected_503s_and_resets(s3_server, s3_store, tmp_path):
    """cocorecord through a proxy answering 5% of requests with 503 SlowDown and resetting 2% of connections
    completes with the records of a direct run, byte for byte; RecordsDataset reads them through it unchanged."""
    from mllib.store import S3Store
    from mllib.testing.latency import LatencyProxy

    put_coco(s3_store, tmp_path, "train2017", 12, seed=1, hw=(40, 56))
    put_coco(s3_store, tmp_path, "val2017", 4, seed=2, hw=(40, 56))
    rec = load_script("datasets/cocorecord.py")
    assert rec.main(["-trainingset_name", "direct", "--store", s3_store.url, "--no_progress", "--shard_images",
                     "4"]) == 0
    host, port = s3_server.endpoint.split("//")[1].split(":")
    with LatencyProxy((host, int(port)), 0.0, faults={"503": 0.05, "reset": 0.02}, seed=7, retry_after=0,
                      max_seconds=300) as proxy:
        far = S3Store(s3_store.url, endpoint_url=proxy.url)
        assert rec.main(["-trainingset_name", "faulty", "--store", s3_store.url, "--endpoint_url", proxy.url,
                         "--no_progress", "--shard_images", "4"]) == 0
        got = [(a.numpy(), b.numpy()) for a, b in records.RecordsDataset(far, "faulty", "train", height=32, width=32,
                                                                          shuffle=False)]
        injected = dict(proxy.injected)
    assert sum(injected.values()) >= 3, injected
    a, b = (records.description(s3_store, n) for n in ("direct", "faulty"))
    for set_name in ("train", "val"):
        assert [s["sha256"] for s in a["sets"][set_name]["shards"]] == \
            [s["sha256"] for s in b["sets"][set_name]["shards"]]
    want = [(x.numpy(), y.numpy()) for x, y in records.RecordsDataset(s3_store, "direct", "train", height=32,
                                                                      width=32, shuffle=False)]
    assert len(got) == len(want) == 12
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(got, want, strict=True))
    print(f"faults injected {injected}: all survived, 0 lost")


# -- full disks -------------------------------------------------------------------------------------------------------
@pytest.fixture
def small_fs(tmp_path):
    """mount(size_mb) -> a tmpfs folder of that size (root only; the test is skipped elsewhere); unmounted after."""
    import subprocess

    mounted = []

    def mount(size_mb: float, name: str = "fs"):
        d = tmp_path / name
        d.mkdir(exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(size_mb * 1024)}k", "tmpfs", str(d)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()[:100]}): needs root")
        mounted.append(d)
        return d

    def grow(d, size_mb: float):
        subprocess.run(["mount", "-o", f"remount,size={int(size_mb * 1024)}k", str(d)], check=True)

    mount.grow = grow
    yield mount
    for d in reversed(mounted):
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def leftovers(folder) -> list[str]:
    from mllib.atomic import TMP_MARK

    return [p.name for p in folder.rglob("*") if TMP_MARK in p.name]


def test_a_full_local_store_loses_nothing(small_fs):
    from mllib import store as mstore
    from mllib.store import StoreError

    d = small_fs(2)
    st = mstore.connect(str(d / "store"))
    st.put_bytes("a/keep.bin", b"k" * 500_000)
    with pytest.raises(StoreError, match=r"writing .*big.bin: no space left on the filesystem of .* \(3,000,000 "
                                         r"bytes needed, [\d,]+ bytes free\)"):
        st.put_bytes("a/big.bin", b"b" * 3_000_000)
    assert not st.exists("a/big.bin") and leftovers(d) == [] and st.get_bytes("a/keep.bin") == b"k" * 500_000
    with pytest.raises(StoreError, match="no space left"):  # replacing an object: the old one stays whole
        st.put_bytes("a/keep.bin", b"n" * 3_000_000)
    assert st.get_bytes("a/keep.bin") == b"k" * 500_000
    small_fs.grow(d, 8)
    st.put_bytes("a/big.bin", b"b" * 3_000_000)
    assert st.size("a/big.bin") == 3_000_000


def test_a_full_workdir_stops_a_download_with_one_line_and_resumes(small_fs, tmp_path):

    from mllib.get import fetch as fetching
    from mllib.testing.mirror import Mirror

    site = tmp_path / "site"
    site.mkdir()
    payload = np.random.default_rng(0).integers(0, 256, 3_000_000, dtype=np.uint8).tobytes()
    (site / "f.bin").write_bytes(payload)
    work = small_fs(1, "work")
    with Mirror(site) as m:
        spec = fetching.FileSpec("f.bin", m.url + "/f.bin", size=len(payload))
        with pytest.raises(fetching.DownloadError, match=r"f.bin: no space left on the filesystem of .*work "
                                                         r"\([\d,]+ bytes needed"):
            fetching.fetch(spec, work, bar=False, retries=1, backoff=0.001)
        assert not (work / "f.bin").exists()  # only the .part, which a re-run resumes from
        have = (work / "f.bin.part").stat().st_size
        assert 0 < have < len(payload)
        small_fs.grow(work, 8)
        got = fetching.fetch(spec, work, bar=False, retries=1, backoff=0.001)
    assert got.read_bytes() == payload


def test_a_full_checkpoint_target_keeps_the_previous_checkpoint(small_fs, tmp_path, capsys):
    """network2d's store on a filesystem whose free space is under a checkpoint's size (the next one is written
    beside the last before it replaces it): one line naming the store and the space; the previous checkpoint
    loads; --resume after space is freed completes."""
    from mllib import store as mstore
    from mllib.training import train

    d = small_fs(8, "ckpt")
    st = mstore.connect(str(d / "store"))
    put_coco(st, tmp_path, "train2017", 4, seed=1, hw=(40, 56))
    put_coco(st, tmp_path, "val2017", 1, seed=2, hw=(40, 56))
    net = load_script("networks/network2d.py")
    common = ["--store", st.url, "--height", "32", "--width", "32", "--batch_size", "2", "--model_width", "16",
              "--model_depth", "2", "--num_workers", "0", "--no_progress", "--model_name", "c", "--metrics_file",
              str(tmp_path / "run" / "m.jsonl"), "--checkpoint_every", "1", "--checkpoint_minutes", "0"]
    assert net.main([*common, "--max_steps", "1"]) == 0
    size = st.size("models/c/checkpoint.pt")
    import shutil

    used = shutil.disk_usage(d).used
    small_fs.grow(d, (used + size * 0.5) / 2**20)  # the next checkpoint's temporary file does not fit
    assert shutil.disk_usage(d).free < size
    free_before = st.get_bytes("models/c/checkpoint.pt")
    assert net.main([*common, "--max_steps", "4", "--resume"]) == 1
    err = capsys.readouterr().err
    assert "no space left on the filesystem of" in err and "bytes needed" in err and len(err.strip().splitlines()) == 1
    ck = train.load_checkpoint(st, "c", "cpu")  # the last whole checkpoint loads
    assert ck["step"] >= 1 and leftovers(d) == []
    assert free_before == st.get_bytes("models/c/checkpoint.pt") or ck["step"] > 1
    small_fs.grow(d, 64)
    assert net.main([*common, "--max_steps", "4", "--resume"]) == 0
    assert train.load_checkpoint(st, "c", "cpu")["step"] == 4


@pytest.mark.long
@pytest.mark.s3
@pytest.mark.timeout(400)
def test_seaweedfs_with_full_volumes_loses_nothing(tmp_path, monkeypatch, capsys):
    """A SeaweedFS server with room for a few MB (1 MB volumes, 3 of them) is filled. It answers writes with 500
    InternalError: after the outage budget (2 s here) one line names the object, the bytes to write and the fix. A
    conversion stops with nothing under a final name; network2d keeps its last checkpoint loadable, writes the new
    one to the run folder and exits 75. With volumes added (the server restarted with more), the re-runs complete:
    the records equal a conversion into a local store, and --resume goes on from the rescued checkpoint."""
    import os

    import torch

    from mllib import store as mstore
    from mllib.store import StoreUnavailable
    from mllib.testing.seaweed import SeaweedS3
    from mllib.training import train

    monkeypatch.setenv("MLLIB_STORE_OUTAGE_S", "2")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    local = mstore.connect(str(tmp_path / "local"))
    make_set(local, tmp_path)  # the reference records
    server = SeaweedS3(tmp_path / "weed", volume_size_mb=1, volumes=3).start()
    try:
        with server.environment():
            server.create_bucket("bkt")
            st = mstore.connect("s3://bkt")
            put_coco(st, tmp_path, "train2017", 6, seed=1, hw=(40, 56))
            put_coco(st, tmp_path, "val2017", 2, seed=2, hw=(40, 56))
            net = load_script("networks/network2d.py")
            common = ["--store", "s3://bkt", "--height", "32", "--width", "32", "--batch_size", "2", "--model_width",
                      "4", "--model_depth", "2", "--num_workers", "0", "--no_progress", "--model_name", "c",
                      "--metrics_file", str(tmp_path / "run" / "m.jsonl"), "--checkpoint_every", "1",
                      "--checkpoint_minutes", "0", "--no_tensorboard"]
            assert net.main([*common, "--max_steps", "1"]) == 0
            before = st.get_bytes("models/c/checkpoint.pt")
            filled = 0
            with pytest.raises(StoreUnavailable, match=r"s3://bkt/fill/\d+: the S3 server at http://127.0.0.1:\d+ "
                                                       r"refused PutObject for \d+ s \(500 InternalError.*out of "
                                                       r"space \(200,000 bytes to write; .*add volumes"):
                for filled in range(1000):
                    st.put_bytes(f"fill/{filled}", os.urandom(200_000))
            capsys.readouterr()
            rec = load_script("datasets/cocorecord.py")
            args = ["-trainingset_name", "r", "--store", "s3://bkt", "--no_progress", "--shard_images", "2"]
            assert rec.main(args) == 75
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "out of space" in err[0] and "Traceback" not in err[0], err
            assert not st.exists("trainingsets/r/description.json")
            assert net.main([*common, "--max_steps", "4", "--resume"]) == train.EXIT_STOPPED
            last = capsys.readouterr().err.strip().splitlines()[-1]
            assert "stopped, the store is away (s3://bkt/models/c/checkpoint.pt: the S3 server" in last, last
            assert "out of space" in last and str(tmp_path / "run" / "c.checkpoint.pt") in last, last
            assert st.get_bytes("models/c/checkpoint.pt") == before  # the previous checkpoint, whole
            assert train.load_checkpoint(st, "c", "cpu")["step"] == 1
            assert torch.load(tmp_path / "run" / "c.checkpoint.pt", weights_only=True)["step"] == 2

            server.kill()  # more room: the server again on the same ports and data, with more volumes
            server.volumes = 40
            server.start()
            assert rec.main(args) == 0
            a, b = (records.description(x, "r")["sets"] for x in (local, st))
            assert {k: [s["sha256"] for s in v["shards"]] for k, v in a.items()} == \
                {k: [s["sha256"] for s in v["shards"]] for k, v in b.items()}
            assert net.main([*common, "--max_steps", "4", "--resume"]) == 0
            assert train.load_checkpoint(st, "c", "cpu")["step"] == 4
            assert not (tmp_path / "run" / "c.checkpoint.pt").exists()
    finally:
        server.stop()
    print(f"SeaweedFS full after {filled} objects of 200 KB: 3 writes refused (a put, a conversion, a checkpoint), "
          "each one line, 0 lost; all completed after volumes were added")


# -- the store restarts mid-job ---------------------------------------------------------------------------------------
@pytest.fixture
def own_server(tmp_path):
    """A SeaweedFS server of the test's own (the session's stays up), with its environment set."""
    from mllib.testing.seaweed import SeaweedS3

    server = SeaweedS3(tmp_path / "weed").start()
    try:
        with server.environment():
            server.create_bucket("bkt")
            yield server
    finally:
        server.stop()


@pytest.mark.long
@pytest.mark.s3
@pytest.mark.timeout(300)
def test_a_conversion_rides_through_a_store_restart(own_server, tmp_path, caplog):
    """The server is SIGKILLed when the conversion has written its first shard and started again 5 s later on the
    same ports and data: cocorecord completes, with the records of an uninterrupted run byte for byte."""
    import logging

    from mllib import store as mstore

    st = mstore.connect("s3://bkt")
    put_coco(st, tmp_path, "val2017", 90, seed=3, hw=(120, 160))
    rec = load_script("datasets/cocorecord.py")
    common = ["--store", "s3://bkt", "--no_progress", "--shard_images", "6"]
    assert rec.main(["-trainingset_name", "ref", *common]) == 0
    caplog.set_level(logging.WARNING)
    outage = own_server.outage(5.0, when=lambda: any(True for _ in st.list("trainingsets/cut/.shards/")))
    assert rec.main(["-trainingset_name", "cut", *common]) == 0
    outage.join(60)
    assert [e[0] for e in outage.events] == ["killed", "started"]
    assert "the S3 endpoint is away" in caplog.text  # it waited, and went on
    a, b = (records.description(st, n)["sets"]["val"]["shards"] for n in ("ref", "cut"))
    assert [s["sha256"] for s in a] == [s["sha256"] for s in b] and len(a) == 15
    print(f"1 store restart injected during cocorecord: survived, 0 lost ({outage.events})")


@pytest.mark.long
@pytest.mark.s3
@pytest.mark.timeout(300)
def test_reading_records_rides_through_a_store_restart(own_server, tmp_path):
    from mllib import store as mstore

    st = mstore.connect("s3://bkt")
    put_coco(st, tmp_path, "val2017", 24, seed=3, hw=(120, 160))
    rec = load_script("datasets/cocorecord.py")
    assert rec.main(["-trainingset_name", "r", "--store", "s3://bkt", "--no_progress", "--shard_images", "4"]) == 0
    ds = records.RecordsDataset(mstore.connect("s3://bkt"), "r", "val", height=48, width=48, shuffle=False)
    want = [(a.numpy(), b.numpy()) for a, b in ds]
    it = iter(ds)
    got = [tuple(t.numpy() for t in next(it))]
    outage = own_server.outage(4.0)  # now, with a shard being read
    got += [(a.numpy(), b.numpy()) for a, b in it]
    outage.join(60)
    assert [e[0] for e in outage.events] == ["killed", "started"]
    assert len(got) == len(want) == 24
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(got, want, strict=True))


@pytest.mark.long
@pytest.mark.s3
@pytest.mark.timeout(300)
def test_downloads_ride_through_a_store_restart(own_server, tmp_path, caplog):
    """getcoco.py and getdataset.py extract into SeaweedFS, which is SIGKILLed when the first extracted object has
    landed and started again 5 s later: both complete, every object byte for byte as in the archive, and a second
    run finds nothing to do."""
    import logging
    import os

    from mllib import store as mstore
    from mllib.testing.mirror import Mirror

    from . import publicfake as pf
    from .cocofake import make_coco_zips
    from .test_getcoco import FILES, assert_stored, run_getcoco

    st = mstore.connect("s3://bkt")
    caplog.set_level(logging.WARNING)
    members = {f"val2017/{i:012d}.jpg": os.urandom(20_000) for i in range(300)}
    contents = make_coco_zips(tmp_path / "coco", extra={"val2017.zip": members})
    with Mirror(tmp_path / "coco") as m:
        outage = own_server.outage(5.0, when=lambda: any(True for _ in st.list("datasets/coco/val2017/")), poll_s=0.01)
        assert run_getcoco("s3://bkt", tmp_path / "coco", m.url, tmp_path / "w1") == 0
        outage.join(60)
        assert [e[0] for e in outage.events] == ["killed", "started"]
        assert_stored(st, contents)
        n = len(m.requests)
        assert run_getcoco("s3://bkt", tmp_path / "coco", m.url, tmp_path / "w1") == 0 and len(m.requests) == n
    assert "the S3 endpoint is away" in caplog.text
    caplog.clear()

    site = tmp_path / "voc"
    pf.make_voc(site, extra_jpegs=300)
    pf.checksum_table(site)
    with Mirror(site) as m:
        outage = own_server.outage(5.0, when=lambda: any(True for _ in st.list("datasets/voc2012/")), poll_s=0.01)
        assert getdataset_main(["voc2012", "--store", "s3://bkt", "--base_url", m.url, "--checksums",
                                str(site / "checksums.tsv"), "--workdir", str(tmp_path / "w2"), "--no_progress",
                                "--jobs", "4"]) == 0
        outage.join(60)
        assert [e[0] for e in outage.events] == ["killed", "started"]
    assert "the S3 endpoint is away" in caplog.text
    import tarfile

    with tarfile.open(site / "VOCtrainval_11-May-2012.tar") as tf:
        files = {i.name: tf.extractfile(i).read() for i in tf.getmembers() if i.isfile()}
    assert len(files) > 300
    for name, data in files.items():
        assert st.get_bytes(f"datasets/voc2012/{name}") == data, name
    print(f"2 store restarts injected during getcoco ({len(FILES)} zips) and getdataset voc2012 ({len(files)} tar "
          "members): both survived, 0 lost")


def getdataset_main(argv):
    return load_script("datasets/getdataset.py").main(argv)


@pytest.mark.long
@pytest.mark.s3
@pytest.mark.timeout(120)
def test_an_outage_longer_than_the_budget_is_one_line(own_server, monkeypatch):
    import time

    from mllib import store as mstore
    from mllib.store import StoreError

    monkeypatch.setenv("MLLIB_STORE_OUTAGE_S", "2")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own retries off: the budget alone
    st = mstore.connect("s3://bkt")
    st.put_bytes("k", b"v")
    own_server.kill()
    t0 = time.monotonic()
    with pytest.raises(StoreError, match=r"s3://bkt/k: the S3 endpoint http://127.0.0.1:\d+ has not answered "
                                         r"GetObject for \d s .*MLLIB_STORE_OUTAGE_S=2.*re-run the same command"):
        st.get_bytes("k")
    assert 2 <= time.monotonic() - t0 < 30
    own_server.start()
    assert st.get_bytes("k") == b"v"  # back: the data survived the kill


@pytest.mark.long
@pytest.mark.s3
@pytest.mark.timeout(400)
def test_training_stops_with_a_checkpoint_when_the_store_stays_away_and_resumes_exactly(own_server, tmp_path):
    """network2d reads from SeaweedFS, which is SIGKILLed mid-epoch and stays away past the outage budget (3 s): a
    DataLoader worker's read raises StoreUnavailable, the run writes a checkpoint at the last step taken (the store
    is away, so in the run folder), exits 75 with one line; with the store back, --resume ends as the uninterrupted
    run, sample for sample and bit for bit."""
    import os
    import subprocess
    import sys
    import time

    import torch

    from mllib import store as mstore
    from mllib.training import train

    from .test_resume import TRAINER, assert_same_weights, flags, put_data, steps_of, trainer

    st = mstore.connect("s3://bkt")
    put_data(st, tmp_path, n=40)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", MLLIB_STORE_OUTAGE_S="3",
               AWS_MAX_ATTEMPTS="1")
    digests = tmp_path / "o.txt"
    args = flags(st, tmp_path, "o", "--epochs", "2")
    p = subprocess.Popen([sys.executable, str(TRAINER), "--digests", str(digests), "--", *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (digests.exists() and len(digests.read_text().splitlines()) >= 4):  # training, mid-epoch 0
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()[1][-4000:]
            time.sleep(0.05)
        own_server.kill()
        _, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == train.EXIT_STOPPED, err[-4000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert "stopped, the store is away (s3://bkt/" in last and "MLLIB_STORE_OUTAGE_S=3" in last, last
    rescue = tmp_path / "o.checkpoint.pt"
    assert str(rescue) in last and "--resume once the store is back" in last, last
    ck = torch.load(rescue, weights_only=True)
    stopped = ck["step"]
    assert not ck["epoch_complete"] and 4 <= stopped < 20
    assert len(steps_of(digests)) == stopped and ck["position"]["samples"] == 2 * stopped
    own_server.start()
    total = stopped + 22  # into epoch 1 (20 steps an epoch)
    r = trainer([*args, "--resume", "--max_steps", str(total)], ["--digests", str(digests)], env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    assert not rescue.exists()  # the store holds the newer checkpoint now
    ref = trainer(flags(st, tmp_path, "ref", "--epochs", "2", "--max_steps", str(total)),
                  ["--digests", str(tmp_path / "ref.txt")], env=env)
    assert ref.returncode == 0, ref.stderr[-4000:]
    assert steps_of(digests) == steps_of(tmp_path / "ref.txt")
    assert_same_weights(train.load_checkpoint(st, "o", "cpu")["model"], train.load_checkpoint(st, "ref", "cpu")["model"])
    print(f"1 store outage past the budget injected during network2d: stopped at step {stopped} with a checkpoint "
          "(exit 75), resumed bit for bit, 0 lost")


# -- load ---------------------------------------------------------------------------------------------------------------
@pytest.mark.s3
@pytest.mark.long
@pytest.mark.timeout(300)
def test_eight_loader_workers_and_a_conversion_at_once(own_server, tmp_path):
    """8 DataLoader workers read a COCO set from one SeaweedFS while cocorecord --jobs 2 converts both sets from it,
    for a bounded time (the conversion's, at least 20 s): no errors, every sample equal to the same sample read
    alone; the samples per second are printed (a figure, not asserted)."""
    import threading
    import time

    import torch

    from mllib import store as mstore
    from mllib.loaders.cocodataset import CocoDataset

    st = mstore.connect("s3://bkt")
    put_coco(st, tmp_path, "val2017", 48, seed=3, hw=(120, 160))
    put_coco(st, tmp_path, "train2017", 96, seed=4, hw=(120, 160))

    def ds():
        return CocoDataset(mstore.connect("s3://bkt"), astype="uint8", normalize="none", label_dtype="uint8",
                           height=64, width=64, seed=5)

    alone = ds()
    want = [tuple(t.clone() for t in alone[i][:2]) for i in range(len(alone))]
    rec = load_script("datasets/cocorecord.py")
    done = {}

    def convert():
        done["rc"] = rec.main(["-trainingset_name", "load", "--store", "s3://bkt", "--no_progress", "--jobs", "2",
                               "--dataset", "coco", "--shard_images", "8"])

    conv = threading.Thread(target=convert)
    seen, t0 = 0, time.monotonic()
    loader = torch.utils.data.DataLoader(ds(), batch_size=4, num_workers=8, shuffle=False, persistent_workers=True,
                                         timeout=120)  # a worker that stops answering fails the test, not hangs it
    # The 8 workers are forked before the conversion's thread starts, as they would be in a training process of
    # their own: a fork while another thread imports a module (or holds any lock) leaves that lock held in the
    # child for ever, and the child hangs at its first use of it.
    batches = iter(loader)
    conv.start()
    rounds = 0
    while time.monotonic() - t0 < 20 or conv.is_alive():  # bounded: the conversion's time, at least 20 s
        for k, (img, lab, _, _) in enumerate(batches):
            for j in range(len(img)):
                i = 4 * k + j
                assert torch.equal(img[j], want[i][0]) and torch.equal(lab[j], want[i][1]), i
                seen += 1
        rounds += 1
        batches = iter(loader)  # the same persistent workers, the next pass
        if time.monotonic() - t0 > 120:
            break
    seconds = time.monotonic() - t0
    conv.join(120)
    assert done.get("rc") == 0
    desc = records.description(st, "load")
    assert sum(v["length"] for v in desc["sets"].values()) == 144
    print(f"load: {seen} samples ({rounds} passes, 8 workers, one GET each) in {seconds:.1f} s = "
          f"{seen / seconds:.0f} samples/s, beside cocorecord --jobs 2 of 144 images (its own time: see above): "
          f"0 errors, every sample correct")
