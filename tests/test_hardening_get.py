"""Hostile and broken inputs, downloads and the store: a clear error, nothing escapes its folder, nothing hangs.

Downloads and extraction run through getcoco.py against the local mirror or a crafted HTTP server on 127.0.0.1
(tests/crafted.py); the store against SeaweedFS, a TLS endpoint with a private CA, and crafted listings."""

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

import pytest
import requests

from mllib import store as mstore
from mllib.get import download, extract
from mllib.get import fetch as fetching
from mllib.get.cityscapes import CityscapesError, specs
from mllib.testing.mirror import Faults, Mirror

from .cocofake import make_coco_zips
from .crafted import Crafted, tls
from .test_getcoco import getcoco, run_getcoco

ROOT = Path(__file__).resolve().parents[1]
DATA = os.urandom(3000)
SPEC_UNKNOWN = fetching.FileSpec("f.zip", "", None, None, hashlib.md5(DATA).hexdigest())


def _fetch(url, tmp_path, spec=SPEC_UNKNOWN, retries=3):
    return fetching.fetch(fetching.FileSpec(spec.name, url + "/f.zip", spec.size, spec.sha256, spec.md5),
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
        assert run_getcoco(local_store.url, site, m.url, tmp_path / "w", ["image_info_test2017.zip"]) == 1
    assert list(local_store.list()) == []  # refused before anything was stored


def test_zip_cannot_replace_what_another_zip_stored(local_store, tmp_path, capsys):
    site, contents = _site_with(tmp_path, {"image_info_test2017.zip": {
        "annotations/instances_val2017.json": b'{"images": []}'}})
    with Mirror(site) as m:
        assert run_getcoco(local_store.url, site, m.url, tmp_path / "w", ["annotations_trainval2017.zip"]) == 0
        assert run_getcoco(local_store.url, site, m.url, tmp_path / "w", ["image_info_test2017.zip"]) == 1
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
    pinned = getcoco.specs_for(getcoco.file_names(getcoco.parse_args([])), getcoco.BASE_URL, None)
    assert [s.name for s in pinned] == list(getcoco.COCO_FILES) and all(s.sha256 and s.size for s in pinned)
    both = getcoco.specs_for(getcoco.file_names(getcoco.parse_args(["--unpinned"])), getcoco.BASE_URL, None)
    extra = [s for s in both if s.name in getcoco.UNPINNED_FILES]
    assert [s.name for s in both][: len(pinned)] == list(getcoco.COCO_FILES)
    assert [s.name for s in extra] == list(getcoco.UNPINNED_FILES) and all(s.md5 and not s.sha256 for s in extra)


def test_unpinned_file_on_request_warns(caplog):
    specs_ = getcoco.specs_for(["image_info_unlabeled2017.zip"], "https://example.invalid", None)
    assert specs_[0].md5 and specs_[0].sha256 is None
    assert "not pinned" in caplog.text


# -- 3. a 206 without Content-Range: counted, backed off, given up -----------------------------------------------
def test_206_without_content_range_gives_up(tmp_path):
    with Crafted(lambda h, n: (206, {}, DATA)) as srv:
        with pytest.raises(fetching.DownloadError, match="giving up after 3 retries") as e:
            _fetch(srv.url, tmp_path)
    assert len(srv.requests) == 4  # bounded: 1 + 3 retries, not a tight loop
    assert "Content-Range" in str(e.value)


# -- 3b. a server that trickles: never silent long enough for the read timeout ------------------------------------
def _trickled(tmp_path, trickles: int, retries: int):
    site = tmp_path / "site"
    site.mkdir()
    (site / "f.zip").write_bytes(DATA)
    spec = fetching.FileSpec("f.zip", "", len(DATA), hashlib.sha256(DATA).hexdigest(), None)
    with Mirror(site, faults=Faults(trickle={"f.zip": trickles})) as m:
        t0 = time.monotonic()
        try:
            return fetching.fetch(fetching.FileSpec("f.zip", m.url + "/f.zip", spec.size, spec.sha256, None),
                                  tmp_path / "w", bar=False, retries=retries, backoff=0.001, timeout=10, stall_s=1.0,
                                  min_rate=500)
        finally:
            assert time.monotonic() - t0 < 20  # the 20 bytes/s responses were cut after ~1 s each


def test_a_trickling_response_is_retried_and_resumed(tmp_path, caplog):
    path = _trickled(tmp_path, trickles=1, retries=2)
    assert path.read_bytes() == DATA
    assert "stalled at byte" in caplog.text and "under 500 bytes/s" in caplog.text


def test_a_server_that_only_trickles_is_given_up(tmp_path):
    with pytest.raises(fetching.DownloadError, match=r"giving up after 1 retries \(stalled at byte"):
        _trickled(tmp_path, trickles=99, retries=1)
    assert not (tmp_path / "w" / "f.zip").exists()


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
    assert fetching.safe_url("https://user:s3cret@host:8443/a/b.zip?token=t0k") == "https://host:8443/a/b.zip"
    site, _ = _site_with(tmp_path, {})
    with Crafted(lambda h, n: (404, {}, b"")) as srv:
        url = srv.url.replace("http://", "http://user:s3cret@")
        assert run_getcoco(local_store.url, site, url, tmp_path / "w", ["val2017.zip"]) == 1
    err = capsys.readouterr().err
    assert "not found" in err and "s3cret" not in err and "s3cret" not in caplog.text
    with Crafted(lambda h, n: (503, {}, b"")) as srv:
        spec = fetching.FileSpec("f.zip", srv.url.replace("http://", "http://u:s3cret@") + "/f.zip")
        with pytest.raises(fetching.DownloadError) as e:
            fetching.fetch(spec, tmp_path / "w2", bar=False, retries=1, backoff=0.001)
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
    with pytest.raises(fetching.DownloadError, match=why):
        extract.extract_to_store(z, local_store, "datasets/coco", bar=False)
    assert list(local_store.list()) == []


def test_total_size_cap(tmp_path):
    z = _zip(tmp_path / "big.zip", [("a/1.bin", os.urandom(1000)), ("a/2.bin", os.urandom(1000))])
    with zipfile.ZipFile(z) as zf, pytest.raises(fetching.DownloadError, match="more than"):
        extract.check_members(zf, "big.zip", max_total=1500)


# -- 8. Ctrl-C during extraction ----------------------------------------------------------------------------------
@pytest.mark.s3
def test_ctrl_c_during_extraction_stops_within_seconds(s3_server, s3_bucket, tmp_path):
    n = 3000
    site = tmp_path / "site"
    make_coco_zips(site, extra={"val2017.zip": {f"val2017/{i:06d}.jpg": b"j%d" % i for i in range(n)}})
    env = dict(os.environ, **s3_server.env(), PYTHONUNBUFFERED="1")
    with Mirror(site) as m:
        # a child inherits an ignored SIGINT (pytest started as `cmd &` from a script ignores it): give it the default
        # disposition, so that its Python turns Ctrl-C into KeyboardInterrupt as it does in a terminal
        was = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            p = subprocess.Popen([sys.executable, str(ROOT / "datasets" / "getcoco.py"), "--store",
                                  f"s3://{s3_bucket}", "--base_url", m.url, "--checksums", str(site / "checksums.tsv"),
                                  "--workdir", str(tmp_path / "w"), "--files", "val2017.zip", "--no_progress", "--jobs",
                                  "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        finally:
            signal.signal(signal.SIGINT, was)
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
        assert run_getcoco(local_store.url, site, m.url, tmp_path / "w", ["val2017.zip"], ["--keep_zips"]) == 0
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
    srv, url, cert = tls(lambda h, n: (404, {"Content-Type": "application/xml"},
                                       b"<Error><Code>NoSuchBucket</Code><Message>no</Message></Error>"), tmp_path)
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


