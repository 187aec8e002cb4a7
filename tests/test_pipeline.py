"""The store-to-GPU data path: compact uint8 samples, exact crop/pad, concurrent fetches over a slow S3 endpoint,
the TFRecord training path, the device-side batch preparation and the training step's bookkeeping."""

from __future__ import annotations

import hashlib
import io
import json
import time

import cv2
import numpy as np
import pytest
import torch

from mllib import layout
from mllib.augment import Augment, chw_uint8
from mllib.loaders.cocodataset import CocoDataset, worker_init_fn
from mllib.loaders.gpu import BatchPrep, DevicePrefetcher
from mllib.records.read import RecordsDataset
from mllib.testing.latency import LatencyProxy
from mllib.training import train
from mllib.training.unet import UNet

from .cocofake import put_coco
from .conftest import load_script


def dataset(store, **kw):
    kw.setdefault("height", 64)
    kw.setdefault("width", 72)
    kw.setdefault("seed", 5)
    return CocoDataset.from_store(store, split="val2017", **kw)


def compact(store, **kw):
    return dataset(store, astype="uint8", normalize="none", label_dtype="uint8", **kw)


def test_compact_samples_equal_the_float_path(local_store, tmp_path):
    put_coco(local_store, tmp_path)
    fl = dataset(local_store, normalize="none")
    cp = compact(local_store)
    for i in range(len(fl)):
        a, b = fl[i], cp[i]
        assert b[0].dtype == torch.uint8 and b[0].shape == (3, 64, 72) and b[0].is_contiguous()
        assert b[1].dtype == torch.uint8 and b[1].shape == (64, 72)
        assert torch.equal(b[0].float(), a[0]) and torch.equal(b[1].long(), a[1])
    # one sample's bytes: 3 + 1 per pixel, against 4 x 3 + 8 for float32 + int64
    assert sum(t.numel() * t.element_size() for t in cp[0][:2]) * 5 == sum(t.numel() * t.element_size()
                                                                          for t in fl[0][:2])
    with pytest.raises(Exception, match="uint8"):
        dataset(local_store, astype="uint8")  # a uint8 image cannot hold normalized values


def test_chw_uint8_planes_of_every_layout():
    """RGBA working copies give their 3 RGB planes, RGB its 3, one channel and gray 1: contiguous, values exact."""
    rng = np.random.default_rng(3)
    for shape, planes in (((37, 53, 4), 3), ((37, 53, 3), 3), ((37, 53, 1), 1), ((37, 53), 1)):
        img = rng.integers(0, 256, shape, np.uint8)
        out = chw_uint8(img)
        want = img[None] if img.ndim == 2 else img.transpose(2, 0, 1)[:planes]
        assert out.shape == (planes, 37, 53) and out.dtype == np.uint8 and out.flags.c_contiguous
        assert np.array_equal(out, want)
    view = rng.integers(0, 256, (40, 60, 4), np.uint8)[2:39, 3:56]  # a non-contiguous source
    assert np.array_equal(chw_uint8(view), view.transpose(2, 0, 1)[:3])


def test_without_augmentation_pixels_are_copied_exactly(local_store, tmp_path):
    """A 427-row image padded to 640: integer offsets, no resampling; the label covers exactly 427 rows."""
    d = put_coco(local_store, tmp_path, n=2, hw=(427, 150))
    ds = compact(local_store, height=640, width=160, enable_transform=False)
    raw_img, raw_lab = ds.raw(0)
    img, lab = ds[0][0].numpy().transpose(1, 2, 0), ds[0][1].numpy()
    dy, dx = (640 - 427) // 2, (160 - 150) // 2
    assert np.array_equal(img[dy : dy + 427, dx : dx + 150], raw_img)
    assert np.array_equal(lab[dy : dy + 427, dx : dx + 150], raw_lab)
    assert ((lab != 255).any(axis=1)).sum() == 427 and (lab[:dy] == 255).all() and (lab[dy + 427 :] == 255).all()
    assert (img[:dy] == 0).all()
    # cropping: a 427 x 150 image center-cropped to 400 x 100
    small = compact(local_store, height=400, width=100, enable_transform=False)
    y0, x0 = (427 - 400) // 2, (150 - 100) // 2
    assert np.array_equal(small[0][0].numpy().transpose(1, 2, 0), raw_img[y0 : y0 + 400, x0 : x0 + 100])
    assert d["images"][0]["height"] == 427


def test_seed_normalize_flags_and_transforms(local_store, tmp_path):
    put_coco(local_store, tmp_path, n=2)
    per_image = dataset(local_store, normalize=True)[0]
    assert torch.equal(per_image[0], dataset(local_store, normalize="image")[0][0])
    raw = dataset(local_store, normalize=False)[0]
    assert torch.equal(raw[0], dataset(local_store, normalize="none")[0][0]) and raw[0].max() > 1.0
    calls = []
    ds = dataset(local_store, image_transform=lambda x: x * 2, label_transform=lambda y: calls.append(1) or y + 1)
    img, lab, _, _ = ds[0]
    assert torch.equal(img, per_image[0] * 2) and torch.equal(lab, per_image[1] + 1) and calls == [1]


def test_getitems_matches_getitem_and_worker_counts(any_store, tmp_path):
    put_coco(any_store, tmp_path)
    ds = compact(any_store)
    batch = ds.__getitems__([3, 0, 5])
    for i, s in zip([3, 0, 5], batch, strict=True):
        one = ds[i]
        assert torch.equal(s[0], one[0]) and torch.equal(s[1], one[1])

    def run(workers):
        dl = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=workers, worker_init_fn=worker_init_fn)
        return [b[0] for b in dl]

    for a, b in zip(run(0), run(2), strict=True):
        assert torch.equal(a, b)


def test_skip_bad_in_a_concurrent_batch(any_store, tmp_path):
    d = put_coco(any_store, tmp_path)
    any_store.delete(f"datasets/coco/val2017/{d['images'][2]['file_name']}")
    ds = compact(any_store, skip_bad=True)
    out = ds.__getitems__([1, 2, 4])
    assert len(out) == 3 and ds.bad_count() == 1
    assert torch.equal(out[1][0], compact(any_store, skip_bad=True)[2][0])  # 2 replaced as __getitem__ does
    with pytest.raises(Exception, match="missing"):
        compact(any_store).__getitems__([1, 2])


@pytest.mark.s3
def test_batch_fetched_concurrently_through_a_slow_endpoint(s3_server, s3_store, tmp_path):
    """A proxy adds 50 ms to every request: a batch's images are in flight together, and samples are unchanged."""
    from mllib.store import S3Store

    put_coco(s3_store, tmp_path, n=8)
    host, port = s3_server.endpoint.split("//")[1].split(":")
    near = compact(s3_store).__getitems__(list(range(8)))
    with LatencyProxy((host, int(port)), 0.05, max_seconds=120) as proxy:
        far = S3Store(s3_store.url, endpoint_url=proxy.url)
        ds = compact(far)
        got = ds.__getitems__(list(range(8)))
        assert proxy.peak >= 4, proxy.peak  # several GETs waited on the endpoint at once
    for a, b in zip(near, got, strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with LatencyProxy((host, int(port)), 0.05, max_seconds=120) as proxy:
        compact(S3Store(s3_store.url, endpoint_url=proxy.url), fetch_threads=1).__getitems__(list(range(4)))
        assert proxy.peak == 1  # one at a time without the pool: what the pool changes


def test_latency_proxy_is_bounded():
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    proxy = LatencyProxy(srv.getsockname(), 0.0, max_seconds=0.5).start()
    proxy._thread.join(timeout=5)
    assert not proxy._thread.is_alive()  # stopped by itself at its deadline
    proxy.stop()
    srv.close()


def test_batch_prep_normalizes_on_the_device_side():
    x = torch.randint(0, 256, (2, 3, 8, 10), dtype=torch.uint8)
    y = torch.randint(0, 4, (2, 8, 10), dtype=torch.uint8)
    images, labels = BatchPrep("cpu")((x, y))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(images, (x.float() / 255 - mean) / std, atol=1e-5)
    assert images.is_contiguous(memory_format=torch.channels_last) and labels.dtype == torch.int64
    per = BatchPrep("cpu", normalize="image").images(x)
    assert per.mean(dim=(2, 3)).abs().max() < 1e-4 and (per.std(dim=(2, 3)) - 1).abs().max() < 1e-3
    assert torch.allclose(BatchPrep("cpu", normalize="none", channels_last=False).images(x), x.float() / 255)
    gray = BatchPrep("cpu", normalize=((0.5,), (0.25,))).images(x[:, 0])
    assert gray.shape == (2, 1, 8, 10) and torch.allclose(gray, (x[:, :1].float() / 255 - 0.5) / 0.25, atol=1e-5)


def test_device_prefetcher_yields_every_batch_and_counts_wait():
    batches = [(torch.full((2, 3, 4, 4), k, dtype=torch.uint8), torch.zeros(2, 4, 4, dtype=torch.uint8))
               for k in range(5)]
    feed = DevicePrefetcher(batches, BatchPrep("cpu", normalize="none"))
    got = [round(float(x[0, 0, 0, 0]) * 255) for x, _ in feed]
    assert got == [0, 1, 2, 3, 4] and len(feed) == 5

    def slow():  # a loader that takes 50 ms per batch: the consumer waits for each
        for b in batches:
            time.sleep(0.05)
            yield b

    slow_feed = DevicePrefetcher(slow(), BatchPrep("cpu", normalize="none"))
    assert len([x for x, _ in slow_feed]) == 5
    assert 0.2 <= slow_feed.wait <= 5.0, slow_feed.wait


# -- the TFRecord path ---------------------------------------------------------------------------------------------
def make_set(store, tmp_path, n=12, shard=3):
    put_coco(store, tmp_path, split="train2017", n=n, seed=3)
    put_coco(store, tmp_path, split="val2017", n=4, seed=4)
    rec = load_script("datasets/cocorecord.py")
    assert rec.main(["-trainingset_name", "t", "--store", store.url, "--no_progress", "--shard_images",
                     str(shard)]) == 0
    return json.loads(store.get_bytes(layout.description("t")))


def _digests(ds, workers, batch=1):
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers)
    return [hashlib.sha256(b[0][k].numpy().tobytes() + b[1][k].numpy().tobytes()).hexdigest()
            for b in dl for k in range(len(b[0]))]


def test_records_dataset_same_samples_any_worker_count(local_store, tmp_path):
    desc = make_set(local_store, tmp_path)
    assert len(desc["sets"]["train"]["shards"]) == 4
    ds = RecordsDataset(local_store, "t", "train", height=40, width=56, seed=1, shuffle_buffer=4)
    a, b = _digests(ds, 0), _digests(ds, 2)
    assert len(a) == 12 and sorted(a) == sorted(b)  # the same 12 samples, augmentation included
    ds.set_epoch(1)
    c = _digests(ds, 0)
    assert len(c) == 12 and set(c).isdisjoint(a)  # a new epoch: new order and new augmentation
    x, y = next(iter(ds))
    assert x.dtype == torch.uint8 and x.shape == (3, 40, 56) and y.dtype == torch.uint8 and y.shape == (40, 56)


def test_records_dataset_without_augmentation_matches_the_set(local_store, tmp_path):
    from mllib.records import read as records

    make_set(local_store, tmp_path, n=6)
    plain = {hashlib.sha256(r["label"].tobytes()).hexdigest()
             for r in map(records.parse, records.iter_serialized(local_store, records.shard_keys(local_store, "t",
                                                                                                  "train")))}
    ds = RecordsDataset(local_store, "t", "train", height=60, width=80, augment=Augment(enable=False), shuffle=False)
    got = {hashlib.sha256(y.numpy().tobytes()).hexdigest() for _, y in ds}
    assert got == plain  # same size as the records: an exact copy of every label


def test_records_dataset_splits_ranks_evenly(local_store, tmp_path):
    make_set(local_store, tmp_path, n=10, shard=3)  # 4 shards of 3, 3, 3, 1 records
    parts = [RecordsDataset(local_store, "t", "train", height=32, width=32, rank=r, world_size=2) for r in (0, 1)]
    counts = [len(list(p)) for p in parts]
    assert counts == [5, 5] and len(parts[0]) == 5  # every rank the same number of steps
    few = [RecordsDataset(local_store, "t", "train", height=32, width=32, rank=r, world_size=8) for r in range(8)]
    assert [len(list(p)) for p in few] == [1] * 8  # fewer shards than ranks: records split one by one


def test_network2d_trains_from_records(local_store, tmp_path, capsys):
    make_set(local_store, tmp_path, n=8, shard=2)
    net = load_script("networks/network2d.py")
    metrics = tmp_path / "m.jsonl"
    assert net.main(["--store", local_store.url, "--records", "t", "--height", "32", "--width", "48",
                     "--batch_size", "2", "--epochs", "1", "--model_width", "4", "--model_depth", "2",
                     "--num_workers", "2", "--no_progress", "--metrics_file", str(metrics), "--model_name", "r",
                     "--step_rate_steps", "2", "--log_every", "1"]) == 0
    row = json.loads(metrics.read_text().splitlines()[-1])
    assert row["step"] == 4 and row["val"]["pixels"] > 0  # 8 records, batch 2; validated on the set's val split
    assert row["gpu_only_images_per_s"] > 0 and 0 < row["vs_gpu_only"] and 0 <= row["data_wait_fraction"] <= 1
    assert "r: epoch 0, step 4" in capsys.readouterr().out


# -- the training step -------------------------------------------------------------------------------------------
def test_step_rate_leaves_the_model_and_optimizer_unchanged():
    torch.manual_seed(0)
    model = UNet(3, 4, width=4, depth=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    crit = train.loss_fn(255)
    x, y = torch.randn(2, 3, 16, 16), torch.randint(0, 4, (2, 16, 16))
    train.train_step(model, (x, y), opt, crit, torch.device("cpu"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt_before = io.BytesIO()
    torch.save(opt.state_dict(), opt_before)
    rate = train.step_rate(model, opt, crit, (x, y), torch.device("cpu"), 2)
    assert rate > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    old = torch.load(io.BytesIO(opt_before.getvalue()), weights_only=True)
    assert all(torch.equal(old["state"][k]["exp_avg"], v["exp_avg"]) for k, v in opt.state_dict()["state"].items())
    assert old["state"][0]["step"] == opt.state_dict()["state"][0]["step"]


def test_checkpoint_with_code_is_refused(local_store):
    class Evil:
        def __reduce__(self):
            return (print, ("this ran",))

    buf = io.BytesIO()
    torch.save({"model": {}, "x": Evil()}, buf)
    local_store.put_bytes(layout.checkpoint("evil"), buf.getvalue())
    with pytest.raises(Exception, match="weights only") as e:
        train.load_checkpoint(local_store, "evil", "cpu")
    assert "evil/checkpoint.pt" in str(e.value)


def test_gray_images_compact(local_store, tmp_path):
    put_coco(local_store, tmp_path, n=2)
    g = compact(local_store, imflags=cv2.IMREAD_GRAYSCALE)[0]
    assert g[0].shape == (1, 64, 72) and g[0].dtype == torch.uint8


def test_validation_view_shares_the_index(local_store, tmp_path):
    put_coco(local_store, tmp_path, n=3)
    train = compact(local_store)
    val = train.with_augment(Augment(enable=False), seed=0)
    assert val.index is train.index and not val.augment.enable and train.augment.enable
    fresh = compact(local_store, enable_transform=False, seed=0)
    for i in range(3):
        assert torch.equal(val[i][0], fresh[i][0]) and torch.equal(val[i][1], fresh[i][1])
    assert not torch.equal(train[0][0], val[0][0])  # the training view keeps its augmentation
