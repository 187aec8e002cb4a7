"""cocorecord.py --engine ray on a real two-node Ray cluster (tests/raycluster.py) in a network namespace of its
own: the same records as --jobs 2, a worker node killed mid-run changes nothing, a re-run writes nothing; and the
one-line errors without Ray or without a cluster at --ray_address."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mllib import store as mstore
from mllib.records import read as records

from .cocofake import put_coco
from .conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


def have_ray() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return shutil.which("unshare") is not None


def make_data(tmp_path) -> mstore.Store:
    s = mstore.connect(tmp_path / "store")
    put_coco(s, tmp_path, "train2017", 160, seed=1, hw=(240, 320))
    put_coco(s, tmp_path, "val2017", 20, seed=2, hw=(240, 320))
    return s


def shards(store, name) -> list[str]:
    desc = records.description(store, name)
    return [sh["sha256"] for set_ in ("train", "val") for sh in desc["sets"][set_]["shards"]]


def on_cluster(store, name, *driver, timeout=300):
    cmd = ["unshare", "-n", "--", sys.executable, str(ROOT / "tests" / "raycluster.py"), *driver, "--",
           "-trainingset_name", name, "--store", store.url, "--shard_images", "10", "--no_progress"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                       env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"))
    return p


@pytest.mark.parametrize("kill", [False, True], ids=["whole", "worker_node_killed"])
@pytest.mark.ray
@pytest.mark.skipif(not have_ray(), reason="ray or unshare not installed")
def test_ray_engine_writes_the_records_of_jobs_2(tmp_path, kill):
    s = make_data(tmp_path)
    rec = load_script("datasets/cocorecord.py")
    assert rec.main(["-trainingset_name", "local", "--store", s.url, "--shard_images", "10", "--jobs", "2",
                     "--no_progress"]) == 0
    p = on_cluster(s, "onray", *(["--kill_after", "4"] if kill else []))
    assert p.returncode == 0 and p.stdout.strip().endswith("exit 0"), (p.stdout[-3000:], p.stderr[-3000:])
    if kill:
        assert "killed a worker node after 4 shards" in p.stdout
    assert shards(s, "onray") == shards(s, "local") and len(shards(s, "local")) == 18
    desc = records.description(s, "onray")
    assert desc["sets"]["train"]["length"] == 160 and desc["sets"]["val"]["length"] == 20
    folder = s.local_path("trainingsets/onray")
    listed = {o.key.rsplit("/", 1)[-1] for o in s.list("trainingsets/onray/")}
    assert listed == {o.key.rsplit("/", 1)[-1] for o in s.list("trainingsets/local/")}  # nothing partial listed
    if not kill:  # a re-run writes nothing: every shard is already there
        before = {f: f.stat().st_mtime_ns for f in folder.glob("*.tfrecord")}
        again = on_cluster(s, "onray")
        assert again.returncode == 0, again.stderr[-3000:]
        assert "18 of 18 shards already written" in again.stderr
        assert {f: f.stat().st_mtime_ns for f in folder.glob("*.tfrecord")} == before


def test_engine_ray_without_ray_is_one_line(tmp_path):
    code = ("import sys; sys.modules['ray'] = None\n"  # import ray fails, as where it is not installed
            "import runpy; sys.argv = ['cocorecord.py'] + sys.argv[1:]\n"
            f"runpy.run_path({str(ROOT / 'datasets' / 'cocorecord.py')!r}, run_name='__main__')")
    p = subprocess.run([sys.executable, "-c", code, "-trainingset_name", "x", "--store", str(tmp_path / "store"),
                        "--engine", "ray"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr
    assert p.stderr.strip().splitlines() == [
        "mllib-cocorecord: error: --engine ray needs Ray, which is not installed: pip install 'mllib[ray]' (or pip "
        "install -r requirements-ray.txt in a checkout)"]
    assert not (tmp_path / "store").exists()  # refused before the store was opened


@pytest.mark.skipif(not have_ray(), reason="ray not installed")
def test_unreachable_ray_address_is_one_line_within_seconds(tmp_path, capsys):
    from mllib.testing.seaweed import free_port

    rec = load_script("datasets/cocorecord.py")
    address = f"127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    assert rec.main(["-trainingset_name", "x", "--store", str(tmp_path / "store"), "--engine", "ray",
                     "--ray_address", address]) == 1
    assert time.monotonic() - t0 < 30
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--ray_address {address}: no Ray cluster answers there" in err[0], err
    assert rec.main(["-trainingset_name", "x", "--store", str(tmp_path / "store"), "--ray_address", address]) == 2
    assert "--ray_address goes with --engine ray" in capsys.readouterr().err


@pytest.mark.s3
def test_what_a_ray_task_carries_holds_no_credential(s3_server, s3_store):
    """The store travels to Ray tasks (and to local worker processes) pickled: URL and endpoint, never a key."""
    from mllib.records.convert import Entry

    s3_store.put_bytes("x", b"1")  # a client was made: it must not travel either
    blob = pickle.dumps((s3_store, [Entry("annotations/instances_val2017.json", "val2017", "val")], "coco"))
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    assert secret and secret.encode() not in blob and os.environ["AWS_ACCESS_KEY_ID"].encode() not in blob
    assert pickle.loads(blob)[0].get_bytes("x") == b"1"  # and it still reads the store, with its own client

