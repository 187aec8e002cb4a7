"""cocorecord.py: records that TensorFlow parses, labels equal to the renderer's, resume, combining datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mllib import images, tflib
from mllib.labels import classes
from mllib.labels.cocoindex import CocoIndex
from mllib.labels.render import Renderer
from mllib.records import read as records
from mllib.records import tfrecord

from .cocofake import jpeg, png, put_coco
from .conftest import load_script, put_real_val2017, shared_path

ROOT = Path(__file__).resolve().parents[1]
cocorecord = load_script("datasets/cocorecord.py")


def put_val_train(store, tmp_path, n_val=7, n_train=5):
    return (put_coco(store, tmp_path, "val2017", n_val, seed=1, hw=(48, 64)),
            put_coco(store, tmp_path, "train2017", n_train, seed=2, hw=(48, 64)))


def convert(store, name="t", *extra):
    return cocorecord.main(["-trainingset_name", name, "--store", store.url, "--no_progress", "--shard_images", "3",
                            *extra])


def all_records(store, name, set_name):
    return list(records.iter_serialized(store, records.shard_keys(store, name, set_name)))


def test_records_parse_with_tf_and_labels_equal_renderer(any_store, tmp_path, capsys):
    tf = tflib.tensorflow()

    val, _ = put_val_train(any_store, tmp_path)
    assert convert(any_store) == 0
    assert "wrote 12 records to 5 shards" in capsys.readouterr().out
    desc = records.description(any_store, "t")
    assert desc["sets"]["val"]["length"] == 7 and len(desc["sets"]["val"]["shards"]) == 3
    assert desc["classes"]["classes"] == 4 and desc["seed"] == 0
    names = [s["name"] for s in desc["sets"]["val"]["shards"]]
    assert names == [f"val-{i:05d}-of-00003.tfrecord" for i in range(3)]
    idx = CocoIndex.from_json(val)
    render = Renderer(classes.load("coco"))
    by_id = {str(int(idx.image_id[i])): i for i in range(idx.images)}
    seen = set()
    pixels = np.zeros(256, np.int64)
    for image, label in records.tf_dataset(any_store, "t", "val"):
        assert image.dtype == tf.uint8 and image.shape[-1] == 3 and label.dtype == tf.uint8
    for rec in all_records(any_store, "t", "val"):
        ex = tf.train.Example.FromString(rec)
        f = ex.features.feature
        sid = f["image/source_id"].bytes_list.value[0].decode()
        i = by_id[sid]
        img_bytes = f["image/encoded"].bytes_list.value[0]
        assert img_bytes == any_store.get_bytes(f"datasets/coco/val2017/{idx.file_name(i)}")  # original bytes
        assert f["image/format"].bytes_list.value[0] == b"jpeg" and f["label/format"].bytes_list.value[0] == b"png"
        assert (f["image/height"].int64_list.value[0], f["image/width"].int64_list.value[0]) == idx.size(i)
        assert f["image/depth"].int64_list.value[0] == 3
        label = tf.io.decode_png(f["label/encoded"].bytes_list.value[0]).numpy()[..., 0]
        want = render.render(idx, i)
        assert np.array_equal(label, want)
        present = np.array(f["label/classes"].float_list.value)
        assert present.tolist() == [float((want == c).any()) for c in range(4)]
        seen.add(sid)
        pixels += np.bincount(want.ravel(), minlength=256)
    assert seen == set(by_id)
    assert desc["sets"]["val"]["pixels"] == {str(k): int(v) for k, v in enumerate(pixels) if v}


def test_seeded_order_and_resume_gives_identical_shards(local_store, tmp_path):
    put_val_train(local_store, tmp_path, n_val=10, n_train=3)
    assert convert(local_store, "r", "--seed", "5") == 0
    desc = records.description(local_store, "r")
    first = {s["name"]: s["sha256"] for s in desc["sets"]["val"]["shards"]}
    ids = [records.parse(r)["source_id"] for r in all_records(local_store, "r", "val")]
    assert len(ids) == 10 and sorted(ids) != ids  # shuffled (seed 5)
    # an interruption: two shards and the description are gone, the rest is kept
    shard_dir = local_store.root / "trainingsets" / "r"
    keep = shard_dir / "val-00000-of-00004.tfrecord"
    mtime = keep.stat().st_mtime_ns
    for n in ("val-00001-of-00004.tfrecord", "val-00003-of-00004.tfrecord"):
        (shard_dir / n).unlink()
    (shard_dir / ".shards" / "val-00002-of-00004.tfrecord.json").unlink()
    (shard_dir / "description.json").unlink()
    assert convert(local_store, "r", "--seed", "5") == 0
    again = {s["name"]: s["sha256"] for s in records.description(local_store, "r")["sets"]["val"]["shards"]}
    assert again == first
    assert keep.stat().st_mtime_ns == mtime  # finished shards are not redone
    for name, sha in first.items():
        import hashlib

        assert hashlib.sha256((shard_dir / name).read_bytes()).hexdigest() == sha
    # another seed: another order, and no stale shards left behind
    assert convert(local_store, "r", "--seed", "6", "--shard_images", "5") == 0
    files = sorted(p.name for p in shard_dir.glob("val-*.tfrecord"))
    assert files == ["val-00000-of-00002.tfrecord", "val-00001-of-00002.tfrecord"]


def test_jobs_2_gives_the_same_records(local_store, tmp_path):
    put_val_train(local_store, tmp_path, n_val=9, n_train=2)
    assert convert(local_store, "one") == 0
    assert convert(local_store, "two", "--jobs", "2") == 0
    a = records.description(local_store, "one")["sets"]["val"]["shards"]
    b = records.description(local_store, "two")["sets"]["val"]["shards"]
    assert [s["sha256"] for s in a] == [s["sha256"] for s in b]


def test_grayscale_becomes_rgb_and_corrupt_is_skipped(local_store, tmp_path, capsys):
    val, _ = put_val_train(local_store, tmp_path, n_val=4, n_train=1)
    ims = val["images"]
    local_store.put_bytes(f"datasets/coco/val2017/{ims[0]['file_name']}", jpeg(48, 64, 9, gray=True))
    good = local_store.get_bytes(f"datasets/coco/val2017/{ims[1]['file_name']}")
    local_store.put_bytes(f"datasets/coco/val2017/{ims[1]['file_name']}", good[: len(good) // 2])
    local_store.delete(f"datasets/coco/val2017/{ims[2]['file_name']}")
    assert convert(local_store) == 0
    out = capsys.readouterr().out
    desc = records.description(local_store, "t")
    skipped = {s["key"].rsplit("/", 1)[-1]: s["reason"] for s in desc["sets"]["val"]["skipped"]}
    assert set(skipped) == {ims[1]["file_name"], ims[2]["file_name"]}
    assert "corrupt" in skipped[ims[1]["file_name"]] and "missing" in skipped[ims[2]["file_name"]]
    assert f"skipped datasets/coco/val2017/{ims[1]['file_name']}" in out
    recs = {r["source_id"]: r for r in map(records.parse, all_records(local_store, "t", "val"))}
    assert len(recs) == 2
    gray = recs[str(ims[0]["id"])]
    assert gray["image"].shape == (48, 64, 3)


def test_unknown_category_fails_unless_skip_bad(local_store, tmp_path, capsys):
    val, _ = put_val_train(local_store, tmp_path, n_val=3, n_train=1)
    val["annotations"][0]["category_id"] = 250
    local_store.put_bytes("datasets/coco/annotations/instances_val2017.json", json.dumps(val).encode())
    assert convert(local_store) == 1
    err = capsys.readouterr().err
    assert "category 250" in err and f"annotation {val['annotations'][0]['id']}" in err
    assert not local_store.exists("trainingsets/t/description.json")
    assert convert(local_store, "t", "--skip_bad") == 0
    desc = records.description(local_store, "t")
    assert desc["sets"]["val"]["length"] == 2 and "category 250" in desc["sets"]["val"]["skipped"][0]["reason"]


def test_size_mismatch_is_reported(local_store, tmp_path):
    val, _ = put_val_train(local_store, tmp_path, n_val=2, n_train=1)
    val["images"][0]["height"] = 47
    local_store.put_bytes("datasets/coco/annotations/instances_val2017.json", json.dumps(val).encode())
    assert convert(local_store, "t", "--skip_bad") == 0
    reasons = [s["reason"] for s in records.description(local_store, "t")["sets"]["val"]["skipped"]]
    assert len(reasons) == 1 and "48x64" in reasons[0] and "47x64" in reasons[0]


def _put_cityscapes(store):
    real = Path(str(shared_path("cityscapes-real")))
    frame = "frankfurt/frankfurt_000000_000294"
    store.put_file(f"datasets/cityscapes/leftImg8bit/val/{frame}_leftImg8bit.png",
                   real / f"leftImg8bit/val/{frame}_leftImg8bit.png")
    store.put_file(f"datasets/cityscapes/gtFine/val/{frame}_gtFine_labelIds.png",
                   real / f"gtFine/val/{frame}_gtFine_labelIds.png")
    return real / f"gtFine/val/{frame}_gtFine_labelIds.png"


def test_coco_and_cityscapes_combine_into_one_set(any_store, tmp_path):
    put_val_train(any_store, tmp_path, n_val=3, n_train=1)
    ids_path = _put_cityscapes(any_store)
    entries = [{"jsonpath": "annotations/instances_val2017.json", "imagepath": "val2017", "set": "val"},
               {"type": "cityscapes", "dataset": "cityscapes", "imagepath": "leftImg8bit/val",
                "labelpath": "gtFine/val", "set": "val"}]
    assert convert(any_store, "mix", "--datasets", json.dumps(entries)) == 0
    recs = list(map(records.parse, all_records(any_store, "mix", "val")))
    assert len(recs) == 4
    cs = [r for r in recs if r["source_id"].startswith("frankfurt")]
    assert len(cs) == 1
    ids = images.decode(ids_path.read_bytes(), flags=images.cv2.IMREAD_UNCHANGED)
    want = classes.load("cityscapes_coco").lut[ids]
    assert np.array_equal(cs[0]["label"], want)
    assert set(np.unique(cs[0]["label"])) <= {0, 1, 2}
    assert cs[0]["image"].shape == (128, 256, 3)
    ex = tfrecord.decode_example(all_records(any_store, "mix", "val")[0])
    assert ex["label/classes"] and len(ex["label/classes"]) == 4


def test_torch_records_split_across_workers(local_store, tmp_path):
    import torch

    put_val_train(local_store, tmp_path, n_val=8, n_train=1)
    assert convert(local_store, "t", "--shard_images", "2") == 0
    ds = records.TorchRecords(local_store, "t", "val")
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    got = [(img.shape, lab.dtype) for img, lab in loader]
    assert len(got) == 8 and got[0] == (torch.Size([48, 64, 3]), torch.int64)
    halves = [len(list(records.TorchRecords(local_store, "t", "val", rank=r, world_size=2))) for r in (0, 1)]
    assert halves == [4, 4]


def test_viewdataset_writes_a_picture(local_store, tmp_path):
    put_val_train(local_store, tmp_path, n_val=3, n_train=1)
    assert convert(local_store) == 0
    mod = load_script("datasets/viewdataset.py")
    out = tmp_path / "sheet.png"
    assert mod.main(["-trainingset_name", "t", "--store", local_store.url, "--set", "val", "-n", "3",
                     "--out", str(out), "--size", "64", "--cols", "3"]) == 0
    pic = images.decode(out.read_bytes())
    assert pic.shape[1] == 192 and pic.shape[0] > 64
    assert (pic[:64, :64] != 32).any()  # a tile was drawn


def test_real_coco_sample(local_store):
    real = put_real_val2017(local_store)
    entries = [{"jsonpath": "annotations/instances_val2017.json", "imagepath": "val2017", "set": "val"}]
    assert convert(local_store, "real", "--datasets", json.dumps(entries), "--shard_images", "20") == 0
    desc = records.description(local_store, "real")
    assert desc["sets"]["val"]["length"] == 50 and desc["sets"]["val"]["skipped"] == []
    src = sum(p.stat().st_size for p in (real / "val2017").glob("*.jpg"))
    recs = all_records(local_store, "real", "val")
    labels_bytes = sum(len(tfrecord.decode_example(r)["label/encoded"][0]) for r in recs)
    total = sum(s["bytes"] for s in desc["sets"]["val"]["shards"])
    assert total <= 1.15 * (src + labels_bytes)
    assert int(desc["sets"]["val"]["pixels"]["1"]) > 0 and int(desc["sets"]["val"]["pixels"]["3"]) > 0


def test_bad_datasets_json_is_a_clear_error(local_store, capsys):
    assert cocorecord.main(["-trainingset_name", "x", "--store", local_store.url, "--datasets", "[{\"bogus\": 1}]"]) == 1
    assert "unknown field" in capsys.readouterr().err
    assert cocorecord.main(["-trainingset_name", "x", "--store", local_store.url]) == 1
    assert "getcoco.py" in capsys.readouterr().err
    for spec, says in [("[1, 2]", "entry 0: must be a JSON object"), ("[]", "must be a JSON list of objects"),
                       ('"coco"', "must be a JSON list of objects"),
                       ('[{"jsonpath": 5, "imagepath": "val2017"}]', "['jsonpath'] must be strings")]:
        assert cocorecord.main(["-trainingset_name", "x", "--store", local_store.url, "--datasets", spec]) == 1
        err = capsys.readouterr().err
        assert says in err and "internal error" not in err, spec


def test_png_helper_is_valid():
    assert images.info(png(4, 5, 0))[:3] == ("png", 4, 5)


def test_killed_conversion_resumes_to_the_same_records(local_store, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    put_val_train(local_store, tmp_path, n_val=600, n_train=1)
    entries = json.dumps([{"jsonpath": "annotations/instances_val2017.json", "imagepath": "val2017", "set": "val"}])
    args = ["--store", local_store.url, "--no_progress", "--shard_images", "2", "--datasets", entries]
    assert convert(local_store, "clean", *args[3:]) == 0
    stats_dir = local_store.root / "trainingsets" / "killed" / ".shards"
    p = subprocess.Popen([sys.executable, str(ROOT / "datasets" / "cocorecord.py"), "-trainingset_name", "killed",
                          *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    t0 = time.time()
    while time.time() - t0 < 60 and not (stats_dir.exists() and len(os.listdir(stats_dir)) >= 20):
        time.sleep(0.01)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    done = len(os.listdir(stats_dir))
    assert 20 <= done < 300, done  # killed part-way
    assert not local_store.exists("trainingsets/killed/description.json")
    assert convert(local_store, "killed", *args[3:]) == 0
    clean = records.description(local_store, "clean")["sets"]["val"]["shards"]
    killed = records.description(local_store, "killed")["sets"]["val"]["shards"]
    assert [(s["name"], s["sha256"]) for s in killed] == [(s["name"], s["sha256"]) for s in clean]
    assert len(list((local_store.root / "trainingsets" / "killed").glob("*.tfrecord"))) == 300
