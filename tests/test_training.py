"""Training: IoU arithmetic, a network that can overfit, checkpoints and --resume, the segment/ scripts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mllib import MllibError
from mllib.training import train
from mllib.training.metrics import ConfusionMatrix
from mllib.training.unet import UNet

from .cocofake import put_coco
from .conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


def test_iou_on_hand_made_arrays():
    truth = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 3, 1]])
    cm = ConfusionMatrix(4)
    cm.update(truth, pred)
    iou = cm.iou()
    # class 0: tp 1, fn 1 (pred 1), fp 1 (truth 2 -> 0): 1/3; class 1: tp 3, fp 1: 3/4; class 2: tp 1, fn 1: 1/2
    assert iou[0] == pytest.approx(1 / 3) and iou[1] == pytest.approx(3 / 4) and iou[2] == pytest.approx(1 / 2)
    assert np.isnan(iou[3])  # class 3 only predicted on an ignored pixel: not counted at all
    assert cm.miou() == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert cm.matrix.sum() == 7
    r = cm.report(["void", "person", "vehicle", "animal"])
    assert r["iou"]["animal"] is None and r["pixels"] == 7


def test_unet_overfits_a_fixed_batch():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    y = torch.zeros(2, 32, 32, dtype=torch.int64)
    y[:, 8:24, 8:24] = 1
    y[0, :4] = 255
    x[:, 0][y == 1] += 2.0  # learnable: channel 0 marks class 1
    model = UNet(3, 4, width=8, depth=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    crit = train.loss_fn(255)
    first = train.train_step(model, (x, y), opt, crit, torch.device("cpu"))
    for _ in range(40):
        last = train.train_step(model, (x, y), opt, crit, torch.device("cpu"))
    assert last < 0.3 * first, (first, last)
    model.eval()
    pred = model(x).argmax(1)
    assert (pred[y != 255] == y[y != 255]).float().mean() > 0.95


def put_train_val(store, tmp_path, n=6):
    put_coco(store, tmp_path, "train2017", n, seed=1, hw=(48, 64))
    put_coco(store, tmp_path, "val2017", n, seed=2, hw=(48, 64))


def test_network2d_checkpoint_and_resume(local_store, tmp_path, capsys):
    put_train_val(local_store, tmp_path)
    net = load_script("networks/network2d.py")
    metrics = tmp_path / "m.jsonl"
    common = ["--store", local_store.url, "--height", "32", "--width", "48", "--batch_size", "2", "--model_width", "4",
              "--model_depth", "2", "--num_workers", "0", "--no_progress", "--metrics_file", str(metrics),
              "--model_name", "t"]
    assert net.main([*common, "--epochs", "1"]) == 0
    assert "t: epoch 0, step 3" in capsys.readouterr().out
    lines = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["step"] == 3 and set(lines[0]["val"]["iou"]) == {"void", "person", "vehicle",
                                                                                           "animal"}
    ck = train.load_checkpoint(local_store, "t", "cpu")
    assert ck["epoch"] == 0 and ck["step"] == 3 and ck["epoch_complete"]
    model = UNet(3, 4, width=4, depth=2)
    model.load_state_dict(ck["model"])  # the saved model restores
    assert net.main([*common, "--epochs", "3", "--max_steps", "7", "--resume"]) == 0
    ck2 = train.load_checkpoint(local_store, "t", "cpu")
    assert ck2["step"] == 7 and ck2["epoch"] == 2 and not ck2["epoch_complete"]
    assert [m["step"] for m in ck2["metrics"]] == [3, 6, 7]
    assert len(metrics.read_text().splitlines()) == 3
    assert local_store.exists("models/t/metrics.jsonl")
    changed = any(not torch.equal(a, b) for a, b in zip(ck["model"].values(), ck2["model"].values(), strict=True))
    assert changed  # training went on from the first checkpoint
    # resuming restores exactly the saved state: model weights and buffers, and the optimizer's moments and steps
    model = UNet(3, 4, width=4, depth=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    epoch, step, history = train.restore(model, opt, None, ck2)
    assert (epoch, step, len(history)) == (2, 7, 3)  # epoch 2 was cut short by --max_steps: it is run again
    for k, v in model.state_dict().items():
        assert torch.equal(v, ck2["model"][k]), k
    saved, now = ck2["optimizer"], opt.state_dict()
    assert saved["param_groups"] == now["param_groups"] and saved["state"].keys() == now["state"].keys()
    for p, st in saved["state"].items():
        for name, value in st.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(now["state"][p][name])), (p, name)


def test_unordered_loader_gives_the_same_batches(local_store, tmp_path, monkeypatch):
    """--unordered: DataLoader(in_order=False) for training, with exactly the batches of the ordered loader (the
    same samples in each, only their arrival may differ); validation stays in order."""
    from mllib.classes import load
    from mllib.training import data

    put_train_val(local_store, tmp_path, n=8)
    digests = {}
    for unordered in (False, True):
        cfg = train.TrainConfig(height=32, width=48, batch_size=2, num_workers=2, unordered=unordered, val_annotations="",
                                val_fraction=0.25)
        train_ds, val_ds = data.datasets(cfg, local_store, load("coco"), 0, 1)
        dl, _, val = data.loaders(cfg, train_ds, val_ds, torch.device("cpu"), 0, 1)
        assert dl.in_order is not unordered and val.in_order
        torch.manual_seed(0)  # the shuffle
        digests[unordered] = sorted(hashlib.sha256(b[0].numpy().tobytes() + b[1].numpy().tobytes()).hexdigest()
                                    for b in dl)
    assert len(digests[False]) == 3 and digests[True] == digests[False]
    # a PyTorch without DataLoader(in_order=...) gets a clear error, not a TypeError from deep inside
    monkeypatch.setattr(data, "unordered_supported", lambda: False)
    with pytest.raises(MllibError, match="--unordered needs PyTorch 2.6"):
        data.loaders(cfg, train_ds, val_ds, torch.device("cpu"), 0, 1)


def test_network2d_resume_without_checkpoint_is_clear(local_store, tmp_path, capsys):
    put_train_val(local_store, tmp_path, n=2)
    net = load_script("networks/network2d.py")
    assert net.main(["--store", local_store.url, "--resume", "--model_name", "none", "--num_workers", "0"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_segment_train_and_test(local_store, tmp_path, capsys):
    put_train_val(local_store, tmp_path, n=4)
    rec = load_script("datasets/cocorecord.py")
    assert rec.main(["-trainingset_name", "tiny", "--store", local_store.url, "--no_progress"]) == 0
    tr = load_script("segment/train.py")
    assert tr.main(["-trainingset", "tiny", "-savedmodelname", "u", "--store", local_store.url, "--max_steps", "2",
                    "--height", "32", "--width", "48", "--batch_size", "2", "--model_width", "4", "--quiet"]) == 0
    assert local_store.exists("models/u/model.keras")
    info = json.loads(local_store.get_bytes("models/u/training.json"))
    assert info["trainingset"] == "tiny" and len(info["loss"]) == 1
    te = load_script("segment/test.py")
    assert te.main(["-trainingset", "tiny", "-model", "u", "--store", local_store.url, "--out",
                    str(tmp_path / "eval")]) == 0
    result = json.loads(local_store.get_bytes("models/u/eval/tiny-val.json"))
    assert result["images"] == 4 and set(result["iou"]) == {"void", "person", "vehicle", "animal"}
    assert result["mode"] == "whole" and json.loads((tmp_path / "eval" / "report.json").read_text())["miou"] == \
        result["miou"] and (tmp_path / "eval" / "confusion.png").stat().st_size > 0
    desc = json.loads(local_store.get_bytes("trainingsets/tiny/description.json"))
    assert result["pixels"] == sum(v for k, v in desc["sets"]["val"]["pixels"].items() if int(k) != 255)  # whole
    present = [v for v in result["iou"].values() if v is not None]
    assert present and result["miou"] == pytest.approx(sum(present) / len(present), abs=1e-5) and 0.0 <= result["miou"] <= 1.0
    assert result["pixels"] > 0
    assert "mIoU" in capsys.readouterr().out


def test_network2d_under_torchrun_ddp_on_cpu(local_store, tmp_path):
    """Two processes (gloo): DistributedDataParallel + DistributedSampler, one checkpoint, one summary line."""
    import os
    import subprocess
    import sys

    from mllib.testing.seaweed import free_port

    put_train_val(local_store, tmp_path, n=8)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(ROOT / "networks" / "network2d.py"), "--store", local_store.url, "--height", "32", "--width", "48",
           "--batch_size", "2", "--epochs", "1", "--num_workers", "0", "--model_width", "4", "--model_depth", "2",
           "--no_progress", "--model_name", "ddp", "--metrics_file", str(tmp_path / "m.jsonl")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == 0, p.stderr[-8000:]  # torchrun's summary is last; a rank's own error comes before it
    assert p.stdout.count("ddp: epoch 0, step 2") == 1  # 8 images, 2 ranks, batch 2: 2 steps each; rank 0 reports
    ck = train.load_checkpoint(local_store, "ddp", "cpu")
    assert ck["step"] == 2 and ck["metrics"][0]["world_size"] == 2
    assert ck["metrics"][0]["val"]["pixels"] > 0
