"""getcoco.py against a local mirror on 127.0.0.1: resume, verification, faults, kills, nested zips, both stores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from mllib.get import download, extract
from mllib.get import fetch as fetching
from mllib.store import TMP_MARK
from mllib.testing.mirror import Faults, Mirror

from .cocofake import make_coco_zips, nested_zip_bytes
from .conftest import load_script, shared_path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "datasets" / "getcoco.py"


getcoco = load_script("datasets/getcoco.py")
FILES = ["annotations_trainval2017.zip", "stuff_annotations_trainval2017.zip",
         "panoptic_annotations_trainval2017.zip", "val2017.zip"]


@pytest.fixture
def site(tmp_path):
    contents = make_coco_zips(tmp_path / "site")
    return tmp_path / "site", contents


def run_getcoco(store_url, site_dir, url, workdir, files=FILES, extra=()):
    return getcoco.main(["--store", str(store_url), "--base_url", url, "--checksums", str(site_dir / "checksums.tsv"),
                         "--workdir", str(workdir), "--files", ",".join(files), "--no_progress", "--jobs", "4",
                         *extra])


def store_url(store):
    return store.url


def assert_stored(store, contents, files=FILES):
    for name in files:
        for member, data in contents[name].items():
            assert store.get_bytes(f"datasets/coco/{member}") == data, member
        man = json.loads(store.get_bytes(f"datasets/coco/.manifests/{name}.json"))
        assert man["objects"] == len(contents[name])


def test_end_to_end_both_stores_and_second_run_transfers_nothing(any_store, site, tmp_path, capsys):
    site_dir, contents = site
    with Mirror(site_dir) as m:
        assert run_getcoco(store_url(any_store), site_dir, m.url, tmp_path / "work") == 0
        out = capsys.readouterr().out
        assert f"COCO in {any_store.url_for('datasets/coco')}" in out
        assert_stored(any_store, contents)
        # nested zips land beside the inner zip, as unzip in its folder would put them
        some = next(k for k in contents["panoptic_annotations_trainval2017.zip"] if k.endswith(".png"))
        assert some.startswith("annotations/panoptic_val2017/")
        assert any_store.exists(f"datasets/coco/{some}")
        assert not list((tmp_path / "work").glob("*.zip"))  # zips deleted after verified extraction
        n_requests = len(m.requests)
        objects = sorted((i.key, i.size) for i in any_store.list("datasets/coco/"))
        assert run_getcoco(store_url(any_store), site_dir, m.url, tmp_path / "work") == 0
        assert len(m.requests) == n_requests  # nothing downloaded
        assert sorted((i.key, i.size) for i in any_store.list("datasets/coco/")) == objects
        assert "0.00 GB downloaded, 0 objects stored" in capsys.readouterr().out


@pytest.fixture
def big_site(tmp_path):
    """val2017.zip of ~600 KB, so a connection can drop after several network chunks."""
    extra = {"val2017.zip": {f"val2017/{i:012d}.jpg": os.urandom(150_000) for i in range(4)}}
    return tmp_path / "site", make_coco_zips(tmp_path / "site", extra=extra)


def test_dropped_connection_resumes_with_range(local_store, big_site, tmp_path):
    site_dir, contents = big_site
    size = (site_dir / "zips" / "val2017.zip").stat().st_size
    faults = Faults(drop_after={"val2017.zip": size // 2})
    with Mirror(site_dir, faults=faults) as m:
        assert run_getcoco(local_store.url, site_dir, m.url, tmp_path / "w", ["val2017.zip"], ["--keep_zips"]) == 0
        ranges = [r for (_, p, r) in m.requests if p.endswith("val2017.zip")]
    assert len(ranges) == 2 and ranges[0] is None
    resumed_at = int(ranges[1][len("bytes="):-1])
    assert size // 4 < resumed_at <= size // 2  # appended after the bytes it had, not from zero
    assert (tmp_path / "w" / "val2017.zip").read_bytes() == (site_dir / "zips" / "val2017.zip").read_bytes()
    assert_stored(local_store, contents, ["val2017.zip"])


def test_server_ignoring_range_restarts_from_zero(local_store, big_site, tmp_path):
    site_dir, contents = big_site
    size = (site_dir / "zips" / "val2017.zip").stat().st_size
    faults = Faults(drop_after={"val2017.zip": size // 2}, ignore_range=True)
    with Mirror(site_dir, faults=faults) as m:
        assert run_getcoco(local_store.url, site_dir, m.url, tmp_path / "w", ["val2017.zip"], ["--keep_zips"]) == 0
    assert (tmp_path / "w" / "val2017.zip").read_bytes() == (site_dir / "zips" / "val2017.zip").read_bytes()
    assert_stored(local_store, contents, ["val2017.zip"])


def test_503_is_retried(local_store, site, tmp_path):
    site_dir, contents = site
    with Mirror(site_dir, faults=Faults(fail_503={"val2017.zip": 2})) as m:
        code = run_getcoco(local_store.url, site_dir, m.url, tmp_path / "w", ["val2017.zip"])
    assert code == 0
    assert_stored(local_store, contents, ["val2017.zip"])


def test_corrupt_once_is_downloaded_again(local_store, site, tmp_path):
    site_dir, contents = site
    with Mirror(site_dir, faults=Faults(corrupt={"val2017.zip": 1})) as m:
        assert run_getcoco(local_store.url, site_dir, m.url, tmp_path / "w", ["val2017.zip"]) == 0
        assert sum(1 for (_, p, _) in m.requests if p.endswith("val2017.zip")) == 2
    assert_stored(local_store, contents, ["val2017.zip"])


def test_corrupt_file_fails_and_stores_nothing(any_store, site, tmp_path, capsys):
    site_dir, _ = site
    with Mirror(site_dir, faults=Faults(corrupt={"val2017.zip": 5})) as m:
        code = run_getcoco(store_url(any_store), site_dir, m.url, tmp_path / "w", ["val2017.zip"])
    assert code == 1
    err = capsys.readouterr().err
    assert "failed verification twice" in err and "sha256" in err
    assert list(any_store.list("datasets/")) == []
    assert list((tmp_path / "w").iterdir()) == []  # the bad file was deleted


def test_unsafe_member_is_refused(local_store, tmp_path):
    extra = {"image_info_test2017.zip": {"annotations/ok.json": b"{}", "../evil.txt": b"x"}}
    site_dir = tmp_path / "site"
    make_coco_zips(site_dir, extra=extra)
    with Mirror(site_dir) as m:
        code = run_getcoco(local_store.url, site_dir, m.url, tmp_path / "w", ["image_info_test2017.zip"])
    assert code == 1
    assert list(local_store.list()) == []
    assert not (tmp_path / "evil.txt").exists() and not (local_store.root.parent / "evil.txt").exists()


def test_check_members_refuses_links_and_absolute(tmp_path):
    for name, attr in (("/etc/passwd", 0), ("a/../../b", 0), ("link", (0o120777 << 16))):
        p = tmp_path / "z.zip"
        with zipfile.ZipFile(p, "w") as z:
            info = zipfile.ZipInfo(name)
            info.external_attr = attr
            z.writestr(info, b"target")
        with zipfile.ZipFile(p) as z, pytest.raises(fetching.DownloadError) as e:
            extract.check_members(z, "z.zip")
        assert "refusing" in str(e.value)


def test_unknown_file_name_is_an_error(local_store, capsys):
    assert getcoco.main(["--store", local_store.url, "--files", "nope.zip", "--no_progress"]) == 2
    assert "unknown COCO file 'nope.zip'" in capsys.readouterr().err


def _spawn(store, site_dir, url, workdir, files, extra=()):
    cmd = [sys.executable, str(SCRIPT), "--store", store, "--base_url", url, "--checksums",
           str(site_dir / "checksums.tsv"), "--workdir", str(workdir), "--files", ",".join(files), "--no_progress",
           "--jobs", "1", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _wait_for(cond, timeout=60):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_killed_mid_download_then_rerun(any_store, big_site, tmp_path):
    site_dir, contents = big_site
    part = tmp_path / "w" / "val2017.zip.part"
    faults = Faults(rate=200_000)  # slow enough to be killed half-way
    with Mirror(site_dir, faults=faults) as m:
        p = _spawn(any_store.url, site_dir, m.url, tmp_path / "w", ["val2017.zip"])
        assert _wait_for(lambda: part.exists() and part.stat().st_size > 100_000)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        have = part.stat().st_size
        faults.rate = None
        assert run_getcoco(any_store.url, site_dir, m.url, tmp_path / "w", ["val2017.zip"]) == 0
        assert (None if have == 0 else f"bytes={have}-") in [r for (_, p_, r) in m.requests if p_.endswith("val2017.zip")]
    assert_stored(any_store, contents, ["val2017.zip"])


def test_killed_mid_extraction_then_rerun(local_store, tmp_path):
    many = {f"annotations/many/{i:05d}.txt": os.urandom(2000) for i in range(3000)}
    site_dir = tmp_path / "site"
    contents = make_coco_zips(site_dir, extra={"image_info_test2017.zip": many})
    files = ["image_info_test2017.zip"]
    d = local_store.root / "datasets" / "coco" / "annotations" / "many"
    with Mirror(site_dir) as m:
        p = _spawn(local_store.url, site_dir, m.url, tmp_path / "w", files)
        assert _wait_for(lambda: d.exists() and len(os.listdir(d)) > 50)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        stored_before = len([k for k in local_store.list("datasets/coco/annotations/many/")])
        assert 0 < stored_before < 3000
        assert not extract.is_extracted(local_store, "datasets/coco", files[0])
        # every object already there is complete (atomic writes)
        for info in local_store.list("datasets/coco/annotations/many/"):
            assert local_store.get_bytes(info.key) == contents[files[0]][info.key[len("datasets/coco/"):]]
        assert run_getcoco(local_store.url, site_dir, m.url, tmp_path / "w", files) == 0
    assert_stored(local_store, contents, files)
    keys = [i.key for i in local_store.list("datasets/coco/")]
    assert len(keys) == len(set(keys)) == len(contents[files[0]]) + 1  # + the manifest
    # a temporary file the kill left behind is never listed as an object
    assert not any(TMP_MARK in k for k in keys)


def test_nested_zip_extracted_in_place(local_store, tmp_path):
    z = tmp_path / "outer.zip"
    inner = nested_zip_bytes({"panoptic_val2017/x.png": b"PNG1", "panoptic_val2017/y.png": b"PNG2"})
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("annotations/panoptic_val2017.zip", inner)
        zf.writestr("annotations/panoptic_val2017.json", b"{}")
    r = extract.extract_to_store(z, local_store, "datasets/coco", bar=False)
    assert local_store.get_bytes("datasets/coco/annotations/panoptic_val2017/x.png") == b"PNG1"
    assert local_store.get_bytes("datasets/coco/annotations/panoptic_val2017/y.png") == b"PNG2"
    assert r.stored == 3 and r.members == 4
    assert extract.is_extracted(local_store, "datasets/coco", "outer.zip")


def test_checksum_table_reads_official_and_unknowns():
    t = download.read_checksums()
    assert t["val2017.zip"].size == 815585330 and t["val2017.zip"].md5 == "442b8da7639aecaf257c1dceb8ba8c80"
    assert t["stuff_annotations_trainval2017.zip"].size is None
    assert t["stuff_annotations_trainval2017.zip"].md5 == "2a27c15a2dfcbd2e1c9276dc23cac101"
    assert t["image_info_unlabeled2017.zip"] == fetching.FileSpec(
        "image_info_unlabeled2017.zip", "https://images.cocodataset.org/annotations/image_info_unlabeled2017.zip",
        md5="ede38355d5c3e5251bb7f8b68e2c068f")


def test_real_coco_sample_through_the_mirror(any_store, tmp_path):
    real = shared_path("coco-real")
    files = {f"val2017/{p.name}": p.read_bytes() for p in sorted((real / "val2017").glob("*.jpg"))}
    ann = {"annotations/instances_val2017.json": (real / "annotations" / "instances_val2017.json").read_bytes()}
    site_dir = tmp_path / "site"
    contents = make_coco_zips(site_dir, extra={"val2017.zip": files, "annotations_trainval2017.zip": ann})
    with Mirror(site_dir) as m:
        assert run_getcoco(any_store.url, site_dir, m.url, tmp_path / "w",
                           ["val2017.zip", "annotations_trainval2017.zip"]) == 0
    assert_stored(any_store, contents, ["val2017.zip", "annotations_trainval2017.zip"])
    assert len(list(any_store.list("datasets/coco/val2017/"))) == 50


def test_time_estimate_from_measured_speeds(local_store, tmp_path):
    job = download.Job([], local_store, "datasets/coco", tmp_path, jobs=4, bar=False)
    assert job.estimate(10**9, 10**9) is None  # nothing measured yet
    job.progress.downloaded, job.progress.download_seconds = 50 * 10**6, 5.0  # 10 MB/s
    # 40 MB extracted in 2 s of wall-clock time (the upload threads' summed 8 s do not count): 20 MB/s
    job.progress.extracted, job.progress.extract_seconds, job.progress.extract_wall = 40 * 10**6, 8.0, 2.0
    seconds, msg = job.estimate(600 * 10**6, 2000 * 10**6)
    # download 60 s, extraction 100 s: the job ends with the slower of the two
    assert seconds == 100 and "1m40s left" in msg and "download 0.60 GB at 10.0 MB/s: 1m00s" in msg
