"""Hiding a store's latency: reads ahead (mllib.store.streams.read_ahead), uploads while writing (StreamingPut), a
bounded pool window (run_all), and the conversion that uses them: the same records with and without latency."""

from __future__ import annotations

import threading
import time

import pytest

from mllib.records import read as records
from mllib.store import run_all
from mllib.store.base import PART_SIZE
from mllib.store.streams import StreamingPut, read_ahead
from mllib.testing.latency import LatencyProxy

from .cocofake import put_coco
from .conftest import load_script

cocorecord = load_script("datasets/cocorecord.py")


def threads(prefix: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix)]


def test_read_ahead_keeps_order_runs_depth_at_once_and_leaves_no_thread():
    now, peak, lock = [0], [0], threading.Lock()

    def fetch(i):
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        time.sleep(0.02)
        with lock:
            now[0] -= 1
        return i * i

    assert list(read_ahead(fetch, range(40), 8)) == [(i, i * i) for i in range(40)]
    assert 4 <= peak[0] <= 8
    peak[0] = 0
    assert list(read_ahead(fetch, range(5), 1)) == [(i, i * i) for i in range(5)] and peak[0] == 1
    started = []

    def failing(i):
        started.append(i)
        if i == 3:
            raise KeyError("three")
        return i

    got = []
    with pytest.raises(KeyError, match="three"):  # raised at its own turn, after the items before it
        for _i, v in read_ahead(failing, range(1000), 4):
            got.append(v)
    assert got == [0, 1, 2] and len(started) < 20  # the rest was never fetched
    for _i, _v in read_ahead(fetch, range(1000), 4):
        break  # leaving early
    assert not threads("mllib-ahead")


def test_run_all_bounds_what_is_in_flight():
    submitted, done = [0], [0]
    most = [0]
    lock = threading.Lock()

    def items():
        for i in range(500):
            with lock:
                submitted[0] += 1
                most[0] = max(most[0], submitted[0] - done[0])
            yield i

    def fn(i):
        with lock:
            done[0] += 1

    run_all(fn, items(), jobs=4)
    assert done[0] == 500 and most[0] <= 4 * 4 + 1  # a window of 4 per thread, not the whole list
    with pytest.raises(ValueError):
        run_all(lambda i: (_ for _ in ()).throw(ValueError("bad")) if i == 7 else None, range(10_000), jobs=2)


def test_streaming_put_is_whole_or_absent(any_store):
    chunk = bytes(range(256)) * 4096  # 1 MB
    with StreamingPut(any_store, "big/obj", limit=4 << 20) as out:
        for _ in range(PART_SIZE // len(chunk) + 3):  # more than one part: a multipart upload on S3
            out.write(chunk)
    assert any_store.get_bytes("big/obj") == chunk * (PART_SIZE // len(chunk) + 3)
    assert out.size == len(chunk) * (PART_SIZE // len(chunk) + 3)
    with pytest.raises(RuntimeError, match="stop"):
        with StreamingPut(any_store, "big/half") as out:
            for _ in range(PART_SIZE // len(chunk) + 3):
                out.write(chunk)
            raise RuntimeError("stop")
    assert not any_store.exists("big/half")
    assert [i.key for i in any_store.list("big/")] == ["big/obj"]
    assert not threads("mllib-streaming-put")
    if any_store.local_path() is None:  # the aborted multipart upload is gone too
        s3 = any_store.client
        assert not s3.list_multipart_uploads(Bucket=any_store.bucket).get("Uploads")


@pytest.mark.s3
def test_conversion_reads_ahead_through_a_slow_endpoint_with_the_same_records(s3_server, s3_store, tmp_path):
    """+50 ms on every request: a conversion worker has several image GETs in flight, and writes exactly the
    records it writes without the delay (missing and corrupt images skipped the same way)."""
    from mllib.store import S3Store

    val = put_coco(s3_store, tmp_path, "val2017", 12, seed=1, hw=(48, 64))
    ims = val["images"]
    s3_store.delete(f"datasets/coco/val2017/{ims[3]['file_name']}")
    good = s3_store.get_bytes(f"datasets/coco/val2017/{ims[5]['file_name']}")
    s3_store.put_bytes(f"datasets/coco/val2017/{ims[5]['file_name']}", good[: len(good) // 2])
    args = ["--no_progress", "--shard_images", "5"]
    assert cocorecord.main(["-trainingset_name", "near", "--store", s3_store.url, *args]) == 0
    host, port = s3_server.endpoint.split("//")[1].split(":")
    with LatencyProxy((host, int(port)), 0.05, max_seconds=120) as proxy:
        far = S3Store(s3_store.url, endpoint_url=proxy.url)
        from mllib.records.convert import Conversion, default_entries

        conv = Conversion(far, "far", default_entries(far), shard_images=5, bar=False)
        conv.run()
        assert proxy.peak >= 4, proxy.peak
    near = records.description(s3_store, "near")["sets"]["val"]
    got = records.description(s3_store, "far")["sets"]["val"]
    assert [s["sha256"] for s in got["shards"]] == [s["sha256"] for s in near["shards"]]
    assert len(got["shards"]) == 3 and got["length"] == 10
    assert sorted(s["reason"][:7] for s in got["skipped"]) == ["corrupt", "image m"]
    assert not threads("mllib-ahead") and not threads("mllib-streaming-put")


# -- the loader reads ahead across batches ----------------------------------------------------------------------
def test_read_ahead_batches_are_batchsamplers_and_name_each_workers_next_batch():
    import torch

    from mllib.loaders.ahead import ReadAheadBatches

    sampler = range(23)
    plain = list(torch.utils.data.BatchSampler(sampler, 4, False))
    for workers in (0, 1, 2, 3):
        got = list(ReadAheadBatches(sampler, 4, num_workers=workers))
        assert [list(b) for b in got] == plain and len(ReadAheadBatches(sampler, 4, num_workers=workers)) == 6
        step = max(1, workers)
        assert [b.ahead for b in got] == [plain[k + step] if k + step < len(plain) else [] for k in range(6)]
        deep = list(ReadAheadBatches(sampler, 4, num_workers=workers, depth=2))  # the worker's next two batches
        assert [list(b) for b in deep] == plain
        assert [b.ahead for b in deep] == [[i for d in (1, 2) if k + d * step < len(plain) for i in plain[k + d * step]]
                                           for k in range(6)]


@pytest.mark.s3
def test_cocodataset_fetches_the_next_batch_while_computing_this_one(s3_server, s3_store, tmp_path):
    """+50 ms per request: a batch that names the next one has both in flight at once; every sample is what it is
    without read-ahead or latency, and a missing image read ahead is today's error or counted skip."""
    import torch

    from mllib.loaders.ahead import Batch, ReadAheadBatches
    from mllib.loaders.cocodataset import CocoDataset, SampleError
    from mllib.store import S3Store

    d = put_coco(s3_store, tmp_path, n=12)

    def ds(store, **kw):
        return CocoDataset.from_store(store, split="val2017", height=48, width=64, seed=3, astype="uint8",
                                      normalize="none", label_dtype="uint8", **kw)

    want = [ds(s3_store)[i] for i in range(12)]
    host, port = s3_server.endpoint.split("//")[1].split(":")
    with LatencyProxy((host, int(port)), 0.05, max_seconds=120) as proxy:
        far = ds(S3Store(s3_store.url, endpoint_url=proxy.url))
        first = far.__getitems__(Batch([0, 1, 2], ahead=[3, 4, 5]))
        assert proxy.peak >= 4, proxy.peak  # the next batch's GETs were out while this one was computed
        second = far.__getitems__(Batch([3, 4, 5]))
        loader = torch.utils.data.DataLoader(far, num_workers=2, batch_sampler=ReadAheadBatches(
            range(12), 3, num_workers=2))
        batches = [b for b in loader]
    for k, s in enumerate(first + second):
        assert torch.equal(s[0], want[k][0]) and torch.equal(s[1], want[k][1])
    assert [torch.equal(b[0][j], want[3 * k + j][0]) for k, b in enumerate(batches) for j in range(3)] == [True] * 12
    s3_store.delete(f"datasets/coco/val2017/{d['images'][4]['file_name']}")
    strict = ds(s3_store)
    strict.__getitems__(Batch([0, 1], ahead=[4]))
    with pytest.raises(SampleError, match="missing"):
        strict.__getitems__(Batch([4]))
    lenient = ds(s3_store, skip_bad=True)
    lenient.__getitems__(Batch([0, 1], ahead=[4, 6]))
    got = lenient.__getitems__(Batch([4, 6]))
    assert lenient.bad_count() == 1 and torch.equal(got[0][0], ds(s3_store, skip_bad=True)[4][0])


def test_read_ahead_threads_load_each_annotation_index_once(local_store, tmp_path, monkeypatch):
    """The conversion's read-ahead threads ask the Worker for its sources at once: each index is loaded once (at
    COCO size 16 concurrent loads of a 1.5 GB index ran a worker out of memory)."""
    from concurrent.futures import ThreadPoolExecutor

    from mllib.labels.cocoindex import CocoIndex
    from mllib.records.sources import Entry, Worker

    put_coco(local_store, tmp_path, "val2017", 4, seed=1, hw=(48, 64))
    loads = []
    real = CocoIndex.load.__func__

    def slow_load(cls, *a, **kw):
        loads.append(a[1])
        time.sleep(0.2)  # long enough for every thread to ask before the first load is done
        return real(cls, *a, **kw)

    monkeypatch.setattr(CocoIndex, "load", classmethod(slow_load))
    w = Worker(local_store, [Entry("annotations/instances_val2017.json", "val2017", "val")], "coco", "class", False)
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda i: w.fetch(0, i % 4)["image"], range(16)))
    assert loads == ["datasets/coco/annotations/instances_val2017.json"] and all(got)
