"""Hostile and broken inputs (issue 10): each gets a clear error, nothing escapes its folder, nothing hangs.

Downloads and extraction run through getcoco.py against the local mirror or a crafted HTTP server on 127.0.0.1;
conversion and loading through cocorecord.py and CocoDataset over crafted annotation files."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests

from mllib import images
from mllib import store as mstore
from mllib.get import download
from mllib.get.cityscapes import CityscapesError, specs
from mllib.testing.mirror import Mirror

from .cocofake import jpeg, make_coco, make_coco_zips, put_coco
from .conftest import load_script
from .crafted import Crafted
from .test_getcoco import getcoco, run_getcoco

ROOT = Path(__file__).resolve().parents[1]
DATA = os.urandom(3000)
SPEC_UNKNOWN = download.FileSpec("f.zip", "", None, None, hashlib.md5(DATA).hexdigest())


def _fetch(url, tmp_path, spec=SPEC_UNKNOWN, retries=3):
    return download.fetch(download.FileSpec(spec.name, url + "/f.zip", spec.size, spec.sha256, spec.md5),
                          tmp_path / "w", bar=False, retries=retries, backoff=0.001, timeout=10)


def _range_start(h) -> int:
    r = h.headers.get("Range")
    return int(r[len("bytes="):-1]) if r else 0


# -- 1. a zip may only write its own objects -------------------------------------------------------------------
def _site_with(tmp_path, extra):
    site = tmp_path / "site"
    return site, make_coco_zips(site, extra=extra)


def test_zip_member_under_manifests_is_refused(local_store, tmp_path):
    site, _ = _site_with(tmp_path, {"image_info_test2017.zip": {".manifests/val2017.zip.json": b"{}",
                                                                 "annotations/ok.json": b"{}"}})
    with Mirror(site) as m:
        assert run_getcoco(local_store.url, site, m.url, tmp_path / "w", ["image_info_test2017.zip"]) == 2
    assert list(local_store.list()) == []  # refused before anything was stored


def test_zip_cannot_replace_what_another_zip_stored(local_store, tmp_path, capsys):
    site, contents = _site_with(tmp_path, {"image_info_test2017.zip": {
        "annotations/instances_val2017.json": b'{"images": []}'}})
    with Mirror(site) as m:
        assert run_getcoco(local_store.url, site, m.url, tmp_path / "w", ["annotations_trainval2017.zip"]) == 0
        assert run_getcoco(local_store.url, site, m.url, tmp_path / "w", ["image_info_test2017.zip"]) == 2
    assert "annotations_trainval2017.zip stored" in capsys.readouterr().err
    key = "datasets/coco/annotations/instances_val2017.json"
    assert local_store.get_bytes(key) == contents["annotations_trainval2017.zip"]["annotations/instances_val2017.json"]
    assert not local_store.exists("datasets/coco/.manifests/image_info_test2017.zip.json")


def test_manifest_is_tied_to_its_zip(local_store, tmp_path):
    site, contents = _site_with(tmp_path, {})
    forged = {"zip": "val2017.zip", "size": 1, "sha256": "0" * 64, "members": [], "objects": 0}
    local_store.put_bytes("datasets/coco/.manifests/val2017.zip.json", json.dumps(forged).encode())
    with Mirror(site) as m:
        assert run_getcoco(local_store.url, site, m.url, tmp_path / "w", ["val2017.zip"]) == 0
    for member, data in contents["val2017.zip"].items():  # extracted, not skipped on the forged manifest's word
        assert local_store.get_bytes(f"datasets/coco/{member}") == data
    man = json.loads(local_store.get_bytes("datasets/coco/.manifests/val2017.zip.json"))
    assert man["sha256"] == hashlib.sha256((site / "zips" / "val2017.zip").read_bytes()).hexdigest()


# -- 2. every default file pinned -------------------------------------------------------------------------------
def test_every_default_file_is_pinned_and_https():
    table = download.read_checksums(None)
    for name in getcoco.COCO_FILES:
        assert table[name].size and table[name].sha256 and len(table[name].sha256) == 64, name
        assert table[name].url.startswith("https://"), name
    assert getcoco.BASE_URL.startswith("https://")
    assert set(getcoco.UNPINNED_FILES).isdisjoint(getcoco.COCO_FILES)
    args = getcoco.parse_args(["--unpinned"])
    assert args.unpinned


def test_unpinned_file_on_request_warns(caplog):
    specs_ = getcoco.specs_for(["image_info_unlabeled2017.zip"], "https://example.invalid", None)
    assert specs_[0].md5 and specs_[0].sha256 is None
    assert "not pinned" in caplog.text


# -- 3. a 206 without Content-Range: counted, backed off, given up -----------------------------------------------
def test_206_without_content_range_gives_up(tmp_path):
    with Crafted(lambda h, n: (206, {}, DATA)) as srv:
        with pytest.raises(download.DownloadError, match="giving up after 3 retries") as e:
            _fetch(srv.url, tmp_path)
    assert len(srv.requests) == 4  # bounded: 1 + 3 retries, not a tight loop
    assert "Content-Range" in str(e.value)


# -- 4. resume without a known size ------------------------------------------------------------------------------
def test_200_to_a_range_request_keeps_verified_bytes(tmp_path):
    (tmp_path / "w").mkdir()
    part = tmp_path / "w" / "f.zip.part"
    part.write_bytes(DATA[:1000])

    def respond(h, n):
        if n == 0:  # ignores Range: the whole file, but the connection drops after 500 bytes
            return 200, {}, DATA, 500
        s = _range_start(h)
        return 206, {"Content-Range": f"bytes {s}-{len(DATA) - 1}/{len(DATA)}"}, DATA[s:]

    with Crafted(respond) as srv:
        path = _fetch(srv.url, tmp_path)
    assert path.read_bytes() == DATA
    assert srv.requests[1][2] == "bytes=1000-"  # the 1000 bytes were kept through the broken 200


def test_200_with_different_bytes_keeps_only_what_matches(tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "f.zip.part").write_bytes(DATA[:600] + b"x" * 400)  # its last 400 bytes are wrong
    with Crafted(lambda h, n: (200, {}, DATA)) as srv:
        assert _fetch(srv.url, tmp_path).read_bytes() == DATA


def test_part_longer_than_the_remote_file_on_416(tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "f.zip.part").write_bytes(DATA + b"junk")

    def respond(h, n):
        if h.headers.get("Range"):
            return 416, {"Content-Range": f"bytes */{len(DATA)}"}, b""
        return 200, {}, DATA

    with Crafted(respond) as srv:
        assert _fetch(srv.url, tmp_path).read_bytes() == DATA
    assert [r[2] for r in srv.requests] == ["bytes=3004-", None]


def test_206_body_longer_than_its_range_is_not_appended(tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "f.zip.part").write_bytes(DATA[:1000])

    def respond(h, n):
        s = _range_start(h)
        if n == 0:  # announces 1000 bytes, sends 2000 (the tail is garbage)
            return 206, {"Content-Range": f"bytes {s}-{s + 999}/{len(DATA)}"}, DATA[s : s + 1000] + b"z" * 1000
        return 206, {"Content-Range": f"bytes {s}-{len(DATA) - 1}/{len(DATA)}"}, DATA[s:]

    with Crafted(respond) as srv:
        assert _fetch(srv.url, tmp_path).read_bytes() == DATA
    assert len(srv.requests) == 2


def test_416_and_mismatched_content_range(tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "f.zip.part").write_bytes(DATA)  # complete: the server says so with 416
    with Crafted(lambda h, n: (416, {"Content-Range": f"bytes */{len(DATA)}"}, b"")) as srv:
        assert _fetch(srv.url, tmp_path).read_bytes() == DATA
    (tmp_path / "w" / "f.zip").unlink()
    (tmp_path / "w" / "f.zip.part").write_bytes(DATA[:100])

    def respond(h, n):  # answers a different range than asked, then the right one
        s = 0 if n == 0 else _range_start(h)
        return 206, {"Content-Range": f"bytes {s}-{len(DATA) - 1}/{len(DATA)}"}, DATA[s:]

    with Crafted(respond) as srv:
        assert _fetch(srv.url, tmp_path).read_bytes() == DATA
    assert len(srv.requests) == 2


# -- 5. Cityscapes server data ------------------------------------------------------------------------------------
def _cityscapes_site(name, md5_body):
    def respond(h, n):
        if h.path.startswith("/downloads"):
            return 200, {"Content-Type": "application/json"}, json.dumps(
                [{"packageID": 1, "name": name, "size": "1 MB"}]).encode()
        if h.path.startswith("/md5-sum"):
            return 200, {}, md5_body
        return 404, {}, b""
    return Crafted(respond)


@pytest.mark.parametrize("name", ["../outside.zip", "/etc/passwd", "a/b.zip", "..", ""])
def test_cityscapes_package_name_must_be_a_plain_file_name(name, tmp_path):
    with _cityscapes_site(name, b"0" * 32 + b"  x.zip") as srv:
        with pytest.raises(CityscapesError, match="unsafe file name"):
            specs(requests.Session(), srv.url, [1])


def test_cityscapes_md5_must_be_32_hex(tmp_path):
    with _cityscapes_site("gtFine.zip", b"<!DOCTYPE html><html>login</html>") as srv:
        with pytest.raises(CityscapesError, match="not 32 hex digits"):
            specs(requests.Session(), srv.url, [1])
    good = hashlib.md5(b"x").hexdigest()
    with _cityscapes_site("gtFine.zip", f"{good}  gtFine.zip\n".encode()) as srv:
        assert specs(requests.Session(), srv.url, [1])[0].md5 == good


# -- 6. credentials in URLs ------------------------------------------------------------------------------------------
def test_userinfo_never_shown(local_store, tmp_path, capsys, caplog):
    assert download.safe_url("https://user:s3cret@host:8443/a/b.zip?token=t0k") == "https://host:8443/a/b.zip"
    site, _ = _site_with(tmp_path, {})
    with Crafted(lambda h, n: (404, {}, b"")) as srv:
        url = srv.url.replace("http://", "http://user:s3cret@")
        assert run_getcoco(local_store.url, site, url, tmp_path / "w", ["val2017.zip"]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "s3cret" not in err and "s3cret" not in caplog.text
    with Crafted(lambda h, n: (503, {}, b"")) as srv:
        spec = download.FileSpec("f.zip", srv.url.replace("http://", "http://u:s3cret@") + "/f.zip")
        with pytest.raises(download.DownloadError) as e:
            download.fetch(spec, tmp_path / "w2", bar=False, retries=1, backoff=0.001)
    assert "s3cret" not in str(e.value) and "s3cret" not in caplog.text


# -- 7. zip members checked up front; zip bombs ---------------------------------------------------------------------
def _zip(path: Path, members: list[tuple[str, bytes]]) -> Path:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about a duplicate name: that is the point
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in members:
                z.writestr(name, data)
    return path


@pytest.mark.parametrize("members, why", [
    ([("a/x.json", b"1"), ("a/x.json", b"2")], "twice"),
    ([("a/ok.json", b"1"), ("a//b.json", b"2")], "empty or '.'"),
    ([("a/ok.json", b"1"), ("./a.json", b"2")], "empty or '.'"),
    ([("a/ok.json", b"1"), ("a/" + "n" * 300 + ".json", b"2")], "too long"),
    ([("a/ok.json", b"1"), ("a/zeros.bin", bytes(20 << 20))], "zip bomb"),
])
def test_bad_members_are_found_before_anything_is_stored(local_store, tmp_path, members, why):
    z = _zip(tmp_path / "bad.zip", members)
    with pytest.raises(download.DownloadError, match=why):
        download.extract_to_store(z, local_store, "datasets/coco", bar=False)
    assert list(local_store.list()) == []


def test_total_size_cap(tmp_path):
    z = _zip(tmp_path / "big.zip", [("a/1.bin", os.urandom(1000)), ("a/2.bin", os.urandom(1000))])
    with zipfile.ZipFile(z) as zf, pytest.raises(download.DownloadError, match="more than"):
        download.check_members(zf, "big.zip", max_total=1500)


# -- 8. Ctrl-C during extraction ----------------------------------------------------------------------------------
@pytest.mark.s3
def test_ctrl_c_during_extraction_stops_within_seconds(s3_server, s3_bucket, tmp_path):
    n = 3000
    site = tmp_path / "site"
    make_coco_zips(site, extra={"val2017.zip": {f"val2017/{i:06d}.jpg": b"j%d" % i for i in range(n)}})
    env = dict(os.environ, **s3_server.env(), PYTHONUNBUFFERED="1")
    with Mirror(site) as m:
        p = subprocess.Popen([sys.executable, str(ROOT / "datasets" / "getcoco.py"), "--store", f"s3://{s3_bucket}",
                              "--base_url", m.url, "--checksums", str(site / "checksums.tsv"), "--workdir",
                              str(tmp_path / "w"), "--files", "val2017.zip", "--no_progress", "--jobs", "2"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        s = mstore.connect(f"s3://{s3_bucket}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(True for _ in s.list("datasets/coco/val2017/")):
            time.sleep(0.05)
        p.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        try:
            out, err = p.communicate(timeout=30)
        finally:
            p.kill()
        stopped_in = time.monotonic() - t0
    assert p.returncode == 130, err[-2000:]
    assert "interrupted" in err
    stored = sum(1 for _ in s.list("datasets/coco/val2017/"))
    assert 0 < stored < n and stopped_in < 10, (stored, stopped_in)
    assert not s.exists("datasets/coco/.manifests/val2017.zip.json")


# -- 9. get_dir stays in its folder -----------------------------------------------------------------------------------
class _Listed(mstore.LocalStore):
    """A local store whose listing holds keys an S3 bucket can hold (a real LocalStore refuses to write them)."""

    def __init__(self, root, keys):
        super().__init__(root)
        self.keys = keys

    def list(self, prefix=""):
        return iter([mstore.ObjectInfo(k, 1) for k in self.keys if k.startswith(prefix)])

    def open(self, key):
        return io.BytesIO(b"x")


@pytest.mark.parametrize("bad", ["p/../../evil.txt", "p//evil.txt", "p/./evil.txt", "p/a\\..\\..\\evil.txt"])
def test_get_dir_refuses_keys_that_escape(tmp_path, bad):
    s = _Listed(tmp_path / "store", ["p/ok.txt", bad])
    dest = tmp_path / "a" / "b"
    with pytest.raises(mstore.StoreError, match="refusing"):
        s.get_dir("p", dest)
    assert not dest.exists() and not (tmp_path / "evil.txt").exists() and not (tmp_path / "a" / "evil.txt").exists()


def test_get_dir_with_leading_slash_key_on_s3_refused(tmp_path):
    s = _Listed(tmp_path / "store", ["p//etc/x"])
    with pytest.raises(mstore.StoreError, match="refusing"):
        s.get_dir("p/", tmp_path / "d")


# -- 10. durable local writes -------------------------------------------------------------------------------------------
def test_local_writes_fsync_file_and_folder(local_store, tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    local_store.put_bytes("a/b.json", b"{}")
    path = str(local_store.root / "a" / "b.json")
    assert any(".mllib-tmp-" in p for p in synced)  # the file, before the rename
    assert str(local_store.root / "a") in synced  # the folder, after it
    assert open(path, "rb").read() == b"{}"
    synced.clear()
    site, _ = _site_with(tmp_path, {})
    with Mirror(site) as m:
        assert run_getcoco(local_store.url, site, m.url, tmp_path / "w", ["image_info_test2017.zip"]
                           if False else ["val2017.zip"], ["--keep_zips"]) == 0
    assert str(tmp_path / "w") in synced  # the verified download, renamed into place durably
    assert str(local_store.root / "datasets" / "coco" / ".manifests") in synced  # and the manifest


# -- 11. AWS_CA_BUNDLE and the profile's ca_bundle are honoured ----------------------------------------------------------
def test_ca_bundle_from_environment_and_config(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_CA_BUNDLE", str(tmp_path / "env-ca.pem"))
    s = mstore.S3Store("s3://b", endpoint_url="https://127.0.0.1:1")
    assert s.client._endpoint.http_session._verify == str(tmp_path / "env-ca.pem")
    assert s.ca_bundle() == str(tmp_path / "env-ca.pem")
    monkeypatch.delenv("AWS_CA_BUNDLE")
    cfg = tmp_path / "config"
    cfg.write_text(f"[default]\nca_bundle = {tmp_path / 'cfg-ca.pem'}\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(cfg))
    s = mstore.S3Store("s3://b", endpoint_url="https://127.0.0.1:1")
    assert s.client._endpoint.http_session._verify == str(tmp_path / "cfg-ca.pem")
    explicit = mstore.S3Store("s3://b", endpoint_url="https://127.0.0.1:1", ca_bundle=str(tmp_path / "x.pem"))
    assert explicit.client._endpoint.http_session._verify == str(tmp_path / "x.pem")
    off = mstore.S3Store("s3://b", endpoint_url="https://127.0.0.1:1", verify=False)
    assert off.client._endpoint.http_session._verify is False


def test_ca_bundle_against_a_tls_server(tmp_path, monkeypatch):
    """A real TLS endpoint with a private CA: refused without the bundle, trusted with AWS_CA_BUNDLE."""
    import shutil
    import ssl

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    srv = Crafted(lambda h, n: (404, {"Content-Type": "application/xml"},
                                b"<Error><Code>NoSuchBucket</Code><Message>no</Message></Error>"))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.server.socket = ctx.wrap_socket(srv.server.socket, server_side=True)
    url = srv.url.replace("http://", "https://")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    with srv:
        with pytest.raises(mstore.StoreError) as untrusted:
            mstore.connect("s3://b", endpoint_url=url, check=True)
        monkeypatch.setenv("AWS_CA_BUNDLE", str(cert))
        with pytest.raises(mstore.StoreError) as trusted:
            mstore.connect("s3://b", endpoint_url=url, check=True)
    assert "does not exist" in str(trusted.value)  # the TLS handshake passed: the server's answer came through
    assert "does not exist" not in str(untrusted.value)


# -- 12-15. crafted annotation files through cocorecord.py ---------------------------------------------------------------
def _ann_store(tmp_path, mutate, n=3):
    s = mstore.connect(tmp_path / "store")
    d = make_coco(tmp_path / "src", "val2017", n, seed=1, hw=(40, 50))
    for im in d["images"]:
        s.put_file(f"datasets/coco/val2017/{im['file_name']}", tmp_path / "src" / "val2017" / im["file_name"])
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
    assert _cocorecord(s) == 2
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
    assert _cocorecord(s) == 2
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
        kids = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
        for kid in kids:  # a pool worker: it has started writing a shard once a temp record file is open
            try:
                cmd = Path(f"/proc/{kid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"multiprocessing" in cmd and b"resource_tracker" not in cmd and any(
                    ".tfrecord.tmp" in os.readlink(f"/proc/{kid}/fd/{fd}")
                    for fd in os.listdir(f"/proc/{kid}/fd") if os.path.exists(f"/proc/{kid}/fd/{fd}")):
                os.kill(int(kid), signal.SIGKILL)
                killed = kid
                break
        time.sleep(0.02)
    try:
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert killed is not None, "no worker was caught writing a shard"
    assert p.returncode == 2, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("cocorecord.py: error:") and "Traceback" not in err
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
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "nopython"))
    with pytest.raises(Exception, match="not installed"):
        s.start()
    assert modes == [] or modes == [0o600]
