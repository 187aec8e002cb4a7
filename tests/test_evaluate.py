"""Evaluation comparable with published numbers and the training run's record (issue: validation you can compare
with papers): the metric's known answers, whole vs slide inference, each image once under torchrun, network2d's
validation = evaluate.py = an independent count from the saved predictions, TensorBoard event files, the recipe
(schedules, class weights, colour jitter), DeepLabV3+ with torchvision-named weights, ONNX export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mllib import MllibError
from mllib.loaders.gpu import BatchPrep
from mllib.training import evaluate as ev
from mllib.training import models, recipe, train
from mllib.training.metrics import ConfusionMatrix

from .cocofake import put_coco
from .conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1")
TINY = ["--height", "32", "--width", "48", "--batch_size", "2", "--model_width", "4", "--model_depth", "2",
        "--num_workers", "0", "--no_progress", "--log-level", "WARNING"]


# -- the metric -----------------------------------------------------------------------------------------------------
def test_perfect_prediction_scores_one_and_ignore_is_left_out():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, (37, 53))
    truth[:5] = 255
    cm = ConfusionMatrix(4)
    pred = np.where(truth == 255, 3, truth)  # whatever is predicted under ignore does not count
    cm.update(truth, pred)
    r = cm.report(["a", "b", "c", "d"])
    assert r["miou"] == 1.0 and r["macc"] == 1.0 and r["pixel_accuracy"] == 1.0
    assert r["pixels"] == int((truth != 255).sum())


def test_fixed_confusion_matrix_gives_the_hand_computed_ious():
    # rows truth, columns prediction; class 3 is neither in the truth nor predicted: not counted
    m = np.array([[50, 10, 0, 0], [5, 20, 5, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    cm = ConfusionMatrix(4, matrix=m)
    iou = cm.iou()
    assert iou[0] == pytest.approx(50 / (60 + 55 - 50))  # tp 50, row 60, column 55
    assert iou[1] == pytest.approx(20 / (30 + 30 - 20))
    assert iou[2] == 0.0  # predicted 5 times, never in the truth: counted, IoU 0
    assert np.isnan(iou[3])
    assert cm.miou() == pytest.approx((50 / 65 + 20 / 40 + 0.0) / 3)
    acc = cm.class_accuracy()  # class 2 has no labelled pixels: left out of mAcc
    assert acc[0] == pytest.approx(50 / 60) and acc[1] == pytest.approx(20 / 30) and np.isnan(acc[2])
    assert cm.macc() == pytest.approx((50 / 60 + 20 / 30) / 2)
    assert cm.accuracy() == pytest.approx(70 / 90)
    r = cm.report(matrix=True)
    assert r["classes_counted"] == 3 and r["iou"]["3"] is None and r["confusion"] == m.tolist()


def test_slide_windows_are_mmsegmentations():
    # mmseg slide_inference: grids = max(size - crop + stride - 1, 0) // stride + 1, the last window flush
    w = ev.slide_windows(512, 683, (512, 512), (341, 341))
    assert w == [(0, 512, 0, 512), (0, 512, 171, 683)]
    w = ev.slide_windows(100, 70, (64, 64), (32, 32))
    assert [(a, b) for a, b, _, _ in w][::2] == [(0, 64), (32, 96), (36, 100)]
    assert sorted({(c, d) for _, _, c, d in w}) == [(0, 64), (6, 70)]
    assert ev.slide_windows(20, 30, (64, 64), (32, 32)) == [(0, 20, 0, 30)]  # smaller than the crop: one window


class PerPixel(torch.nn.Module):
    """A model whose output at a pixel depends on that pixel only (a 1x1 convolution)."""

    def __init__(self, classes=4):
        super().__init__()
        torch.manual_seed(3)
        self.conv = torch.nn.Conv2d(3, classes, 1)
        self.pad_to = 8

    def forward(self, x):
        return self.conv(x)


def _predictions(model, data, mode, **kw):
    got = {}
    ev.evaluate(model, ev.eval_loader(data, 0), BatchPrep("cpu", "imagenet"), torch.device("cpu"), 4, 255,
                mode=mode, each=lambda k, name, image, label, pred: got.__setitem__(name, pred.clone()), **kw)
    return got


def _full_images(store, split="val2017"):
    from mllib.loaders.cocodataset import CocoDataset

    ds = CocoDataset(store, dataset_desc=f"datasets/coco/annotations/instances_{split}.json",
                     image_paths=f"datasets/coco/{split}", astype="uint8", normalize="none", label_dtype="uint8")
    return ev.FullImages(ds)


def test_whole_and_slide_agree_on_a_context_free_model(local_store, tmp_path):
    put_coco(local_store, tmp_path, "val2017", 3, seed=2, hw=(45, 70))
    data = _full_images(local_store)
    whole = _predictions(PerPixel(), data, "whole")
    slide = _predictions(PerPixel(), data, "slide", crop=(24, 32), stride=(16, 20))
    assert whole.keys() == slide.keys() and len(whole) == 3
    for name in whole:
        assert whole[name].shape == (45, 70)  # padded to a multiple of 8 for the model, cropped back
        assert torch.equal(whole[name], slide[name]), name


def test_whole_mode_is_the_image_at_its_own_size(local_store, tmp_path):
    """Every labelled pixel of every validation image is counted (the old validation counted a center crop)."""
    d = put_coco(local_store, tmp_path, "val2017", 3, seed=2, hw=(45, 70))
    data = _full_images(local_store)
    model = models.build({"arch": "unet", "in_channels": 3, "classes": 4, "width": 4, "depth": 2})
    cm, n = ev.evaluate(model, ev.eval_loader(data, 0), BatchPrep("cpu"), torch.device("cpu"), 4, 255)
    labels = [data.ds.raw(i)[1] for i in range(len(data))]
    assert n == 3 == len(d["images"]) and cm.matrix.sum() == sum(int((lab != 255).sum()) for lab in labels)


# -- network2d's validation, evaluate.py and the saved predictions agree -------------------------------------------
def _independent_miou(pred_dir: Path, data) -> float:
    """mIoU counted with set operations per class from the PNGs (read with Pillow) and the labels."""
    inter, union = np.zeros(4), np.zeros(4)
    for k in range(len(data)):
        label = data.ds.raw(data.rows[k])[1]
        pred = np.asarray(Image.open(pred_dir / f"{data.name(k)}.png"))
        assert pred.shape == label.shape
        valid = label != 255
        for c in range(4):
            inter[c] += np.sum((pred == c) & (label == c) & valid)
            union[c] += np.sum(((pred == c) | (label == c)) & valid)
    return float(np.mean(inter[union > 0] / union[union > 0]))


def test_network2d_validation_equals_evaluate_and_the_saved_predictions(local_store, tmp_path, capsys):
    put_coco(local_store, tmp_path, "train2017", 6, seed=1, hw=(48, 64))
    put_coco(local_store, tmp_path, "val2017", 5, seed=2, hw=(45, 70))
    net = load_script("networks/network2d.py")
    assert net.main(["--store", local_store.url, *TINY, "--epochs", "1", "--model_name", "v",
                     "--metrics_file", str(tmp_path / "run" / "metrics.jsonl")]) == 0
    val = train.load_checkpoint(local_store, "v", "cpu")["metrics"][-1]["val"]
    assert val["mode"] == "whole" and val["images"] == 5
    evaluate = load_script("networks/evaluate.py")
    out = tmp_path / "eval"
    assert evaluate.main(["--store", local_store.url, "--model_name", "v", "--save_predictions",
                          str(tmp_path / "pred"), "--out", str(out), "--num_workers", "0", "--no_progress"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["miou"] == pytest.approx(val["miou"], abs=1e-6) and report["confusion"]
    assert report["images"] == 5 and report["pixels"] == val["pixels"]
    assert abs(_independent_miou(tmp_path / "pred", _full_images(local_store)) - report["miou"]) < 1e-6
    assert "v on instances_val2017 (whole): mIoU" in printed and "person" in printed  # summary + table
    assert (out / "confusion.png").stat().st_size > 1000 and (out / "samples.png").stat().st_size > 1000
    slide = tmp_path / "slide"
    assert evaluate.main(["--store", local_store.url, "--model_name", "v", "--mode", "slide", "--crop", "32", "32",
                          "--stride", "16", "--out", str(slide), "--num_workers", "0", "--no_progress"]) == 0
    assert json.loads((slide / "report.json").read_text())["stride"] == [16, 16]


def test_evaluate_reads_a_records_set_as_the_coco_json(local_store, tmp_path):
    """The same images through a TFRecord set give the same confusion matrix."""
    put_coco(local_store, tmp_path, "train2017", 4, seed=1, hw=(48, 64))
    put_coco(local_store, tmp_path, "val2017", 3, seed=2, hw=(45, 70))
    rec = load_script("datasets/cocorecord.py")
    assert rec.main(["-trainingset_name", "r", "--store", local_store.url, "--no_progress"]) == 0
    net = load_script("networks/network2d.py")
    assert net.main(["--store", local_store.url, *TINY, "--max_steps", "1", "--model_name", "m",
                     "--metrics_file", str(tmp_path / "run" / "m.jsonl")]) == 0
    evaluate = load_script("networks/evaluate.py")
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["--store", local_store.url, "--model_name", "m", "--num_workers", "0", "--no_progress"]
    assert evaluate.main([*common, "--out", str(a)]) == 0
    assert evaluate.main([*common, "--records", "r", "--out", str(b)]) == 0
    ra, rb = (json.loads((p / "report.json").read_text()) for p in (a, b))
    assert rb["set"] == "r-val" and ra["confusion"] == rb["confusion"] and ra["images"] == rb["images"] == 3


def test_evaluate_under_torchrun_equals_one_process(local_store, tmp_path):
    """2 ranks (gloo), 5 images: each image once, the totals reduced: exactly the numbers of 1 process."""
    from mllib.testing.seaweed import free_port

    put_coco(local_store, tmp_path, "train2017", 4, seed=1, hw=(48, 64))
    put_coco(local_store, tmp_path, "val2017", 5, seed=2, hw=(45, 70))
    net = load_script("networks/network2d.py")
    assert net.main(["--store", local_store.url, *TINY, "--max_steps", "2", "--model_name", "m",
                     "--metrics_file", str(tmp_path / "run" / "m.jsonl")]) == 0
    script = str(ROOT / "networks" / "evaluate.py")
    common = ["--store", local_store.url, "--model_name", "m", "--num_workers", "0", "--no_progress",
              "--save_predictions"]
    one = subprocess.run([sys.executable, script, *common, str(tmp_path / "p1"), "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=300, env=ENV)
    assert one.returncode == 0, one.stderr[-4000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(free_port()), script, *common, str(tmp_path / "p2"), "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=300, env=ENV)
    assert two.returncode == 0, two.stderr[-4000:]
    r1, r2 = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("one", "two"))
    assert r2["world_size"] == 2 and r1["images"] == r2["images"] == 5
    assert r1["confusion"] == r2["confusion"] and r1["miou"] == r2["miou"] and r1["iou"] == r2["iou"]
    assert sorted(p.name for p in (tmp_path / "p2").iterdir()) == sorted(p.name for p in (tmp_path / "p1").iterdir())
    assert two.stdout.count("m on instances_val2017") == 1  # rank 0 reports


def test_evaluate_errors_are_one_line(local_store, tmp_path, capsys):
    evaluate = load_script("networks/evaluate.py")
    assert evaluate.main(["--store", local_store.url, "--model_name", "none", "--out", str(tmp_path)]) == 1
    assert "no checkpoint at" in capsys.readouterr().err
    assert evaluate.main(["--store", local_store.url, "--model_name", "a", "--checkpoint", "k"]) == 2


# -- what a training run leaves --------------------------------------------------------------------------------------
def test_event_files_hold_the_scalars_and_the_run_its_record(local_store, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    put_coco(local_store, tmp_path, "train2017", 6, seed=1, hw=(48, 64))
    put_coco(local_store, tmp_path, "val2017", 2, seed=2, hw=(48, 64))
    net = load_script("networks/network2d.py")
    run = tmp_path / "run"
    assert net.main(["--store", local_store.url, *TINY, "--epochs", "2", "--log_every", "1", "--model_name", "tb",
                     "--lr_schedule", "cosine", "--metrics_file", str(run / "metrics.jsonl")]) == 0
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in ("train/loss", "train/lr", "train/images_per_s", "train/data_wait", "val/miou", "val/iou/person"):
        assert tag in tags["scalars"], tag
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in acc.Scalars("val/miou")] == [3, 6]
    lrs = [e.value for e in acc.Scalars("train/lr")]  # cosine over 6 steps, from the peak down
    assert lrs[0] == pytest.approx(1e-3) and lrs == sorted(lrs, reverse=True) and lrs[-1] < 1e-4
    ck = train.load_checkpoint(local_store, "tb", "cpu")
    assert acc.Scalars("val/miou")[-1].value == pytest.approx(ck["metrics"][-1]["val"]["miou"], abs=1e-6)
    assert "val/image_label_prediction" in tags["images"]
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["lr_schedule"] == "cosine" and config["model"]["arch"] == "unet"
    assert len((run / "steps.jsonl").read_text().splitlines()) == 6
    assert Image.open(run / "curves.png").size[0] > 500


# -- the recipe ------------------------------------------------------------------------------------------------------
def test_learning_rate_schedules():
    cfg = train.TrainConfig(lr_schedule="poly", warmup_steps=0)
    assert train.lr_factor(cfg, 0, 100) == 1.0
    assert train.lr_factor(cfg, 50, 100) == pytest.approx(0.5**0.9)
    assert train.lr_factor(cfg, 100, 100) == 0.0 and train.lr_factor(cfg, 150, 100) == 0.0
    cfg = train.TrainConfig(lr_schedule="cosine", warmup_steps=10)
    assert train.lr_factor(cfg, 0, 100) == pytest.approx(0.1 * 1.0)  # warm-up: (step + 1) / 10
    assert train.lr_factor(cfg, 50, 100) == pytest.approx(0.5)
    assert train.lr_factor(train.TrainConfig(), 77, 100) == 1.0  # constant
    with pytest.raises(MllibError, match="--color_jitter"):
        train.TrainConfig(color_jitter="0.4,0.4")
    with pytest.raises(MllibError, match="--color_jitter"):
        train.TrainConfig(color_jitter="0.4,0.4,0.4,0.9")


def test_color_jitter_is_a_function_of_seed_epoch_and_sample():
    a = recipe.jitter_factors((0.4, 0.4, 0.4, 0.1), 0, 1, [5, 6])
    assert np.array_equal(a, recipe.jitter_factors((0.4, 0.4, 0.4, 0.1), 0, 1, [6, 5])[::-1])  # order-free
    assert not np.array_equal(a, recipe.jitter_factors((0.4, 0.4, 0.4, 0.1), 0, 2, [5, 6]))  # another epoch
    assert np.all(np.abs(a[:, :3] - 1) <= 0.4) and np.all(np.abs(a[:, 3]) <= 0.1)
    x = torch.rand(2, 3, 8, 8) * 255
    same = recipe.color_jitter(x, np.array([[1.0, 1.0, 1.0, 0.0]] * 2))
    assert torch.allclose(same, x, atol=1e-3)  # unit factors, no hue turn: the image
    grey = recipe.color_jitter(x, np.array([[1.0, 1.0, 0.0, 0.0]] * 2))  # saturation 0: grey
    assert torch.allclose(grey[:, 0], grey[:, 1], atol=1e-3) and torch.allclose(grey[:, 1], grey[:, 2], atol=1e-3)
    dark = recipe.color_jitter(x, np.array([[0.5, 1.0, 1.0, 0.0]] * 2))
    assert torch.allclose(dark, x * 0.5, atol=1e-3)
    turned = recipe.color_jitter(x, np.array([[1.0, 1.0, 1.0, 0.25]] * 2))  # a hue turn keeps the luma
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    inside = (turned > 0.5).all() and (turned < 254.5).all()
    if inside:
        assert torch.allclose((turned * luma).sum(1), (x * luma).sum(1), atol=1e-2)
    assert not torch.allclose(turned, x, atol=1)


def test_class_weights_from_records_report_and_scan(local_store, tmp_path):
    from mllib.sources.check import class_weights as formulas

    put_coco(local_store, tmp_path, "train2017", 6, seed=1, hw=(48, 64))
    put_coco(local_store, tmp_path, "val2017", 2, seed=2, hw=(48, 64))
    rec = load_script("datasets/cocorecord.py")
    assert rec.main(["-trainingset_name", "r", "--store", local_store.url, "--no_progress"]) == 0
    from mllib.labels import classes
    from mllib.records.read import RecordsDataset
    from mllib.training.data import datasets

    d = classes.load("coco")
    rds = RecordsDataset(local_store, "r", "train")
    pixels = np.zeros(4)
    for t, n in rds.description["sets"]["train"]["pixels"].items():
        pixels[int(t)] = n if int(t) < 4 else 0
    w = recipe.class_weights(train.TrainConfig(records="r", class_weights="inverse"), local_store, rds, d).numpy()
    present = pixels > 0
    assert np.allclose(w[present] * pixels[present] / pixels.sum(), 1 / present.sum(), rtol=1e-5)  # 1 / (C f_c)
    # the same training images from the COCO JSON: a pass over the labels gives the same inverse weights
    cfg = train.TrainConfig(val_annotations="", class_weights="inverse", val_fraction=0.0)
    train_ds, _ = datasets(cfg, local_store, None, 0, 1)
    scanned = recipe.class_weights(cfg, local_store, train_ds, d).numpy()
    assert np.allclose(scanned, w, rtol=1e-5)
    med = recipe.class_weights(train.TrainConfig(val_annotations="", class_weights="median", val_fraction=0.0), local_store,
                               train_ds, d).numpy()
    assert np.allclose(med, formulas(*_sums(train_ds))[1], rtol=1e-6)
    report = tmp_path / "check.json"
    report.write_text(json.dumps({"class_names": d.names, "class_weights": {"inverse": [1, 2, 3, 4],
                                                                           "median": [4, 3, 2, 1]}}))
    got = recipe.class_weights(train.TrainConfig(class_weights="median", class_stats=str(report)), local_store,
                               train_ds, d)
    assert got.tolist() == [4, 3, 2, 1]
    report.write_text(json.dumps({"class_names": ["a", "b"], "class_weights": {"median": [1, 2]}}))
    with pytest.raises(MllibError, match="other classes"):
        recipe.class_weights(train.TrainConfig(class_weights="median", class_stats=str(report)), local_store,
                             train_ds, d)


def _sums(ds):
    from mllib.sources.check import check_rows

    base = getattr(ds, "dataset", ds)
    s = check_rows(list(range(len(base))), 4, base.source, sizes=False)
    return s.pixels[:4], s.image_pixels[:4]


# -- DeepLabV3+ -------------------------------------------------------------------------------------------------------
def test_deeplab_backbones_are_torchvisions_resnets():
    """The backbones' parameter counts are torchvision's resnet50 / resnet101 less the 1000-class fc (2,049,000),
    and their names are torchvision's."""
    expected = {"resnet50": 25_557_032 - 2_049_000, "resnet101": 44_549_160 - 2_049_000}
    for name, count in expected.items():
        m = models.build({"arch": "deeplabv3plus", "in_channels": 3, "classes": 5, "backbone": name})
        assert sum(p.numel() for p in m.backbone.parameters()) == count
    keys = set(m.backbone.state_dict())
    for k in ("conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.bias",
              "layer3.22.conv2.weight", "layer4.2.bn3.num_batches_tracked"):
        assert k in keys, k
    m.eval()
    with torch.no_grad():
        assert m(torch.zeros(1, 3, 64, 96)).shape == (1, 5, 64, 96)


def test_encoder_weights_load_strictly(tmp_path):
    cfg = {"arch": "deeplabv3plus", "in_channels": 3, "classes": 4, "backbone": "resnet50", "output_stride": 8}
    src = models.build(cfg)
    state = dict(src.backbone.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)  # an ImageNet classifier
    torch.save(state, tmp_path / "r50.pth")
    dst = models.build(cfg)
    models.load_encoder_weights(dst, str(tmp_path / "r50.pth"))
    for k, v in src.backbone.state_dict().items():
        assert torch.equal(dst.backbone.state_dict()[k], v), k
    bad = dict(state)
    bad["layer9.weight"] = torch.zeros(1)
    del bad["conv1.weight"]
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(MllibError, match="1 missing .*conv1.weight.*1 unexpected .*layer9.weight"):
        models.load_encoder_weights(dst, str(tmp_path / "bad.pth"))
    shaped = dict(state, **{"bn1.weight": torch.zeros(32)})
    torch.save(shaped, tmp_path / "shape.pth")
    with pytest.raises(MllibError, match=r"another shape .*bn1.weight \(32,\)"):
        models.load_encoder_weights(dst, str(tmp_path / "shape.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(MllibError, match="not a weights-only"):
        models.load_encoder_weights(dst, str(tmp_path / "junk.pth"))


def test_network2d_trains_deeplab_and_resume_refuses_another_arch(local_store, tmp_path, capsys):
    put_coco(local_store, tmp_path, "train2017", 4, seed=1, hw=(64, 80))
    put_coco(local_store, tmp_path, "val2017", 1, seed=2, hw=(64, 80))
    weights = tmp_path / "enc.pth"
    enc = models.build({"arch": "deeplabv3plus", "in_channels": 3, "classes": 4}).backbone.state_dict()
    torch.save(enc, weights)
    net = load_script("networks/network2d.py")
    common = ["--store", local_store.url, "--height", "64", "--width", "64", "--batch_size", "2", "--num_workers",
              "0", "--no_progress", "--model_name", "dl", "--metrics_file", str(tmp_path / "run" / "m.jsonl")]
    assert net.main([*common, "--arch", "deeplabv3plus", "--encoder_weights", str(weights), "--max_steps", "1"]) == 0
    ck = train.load_checkpoint(local_store, "dl", "cpu")
    assert ck["model_config"]["arch"] == "deeplabv3plus" and ck["metrics"][-1]["val"]["images"] == 1
    assert net.main([*common, "--max_steps", "2", "--resume"]) == 2  # --arch unet now
    assert "--arch 'deeplabv3plus'" in capsys.readouterr().err


# -- export ----------------------------------------------------------------------------------------------------------
def test_export_round_trip(local_store, tmp_path, capsys):
    import onnx
    import onnxruntime as ort

    put_coco(local_store, tmp_path, "train2017", 4, seed=1, hw=(48, 64))
    put_coco(local_store, tmp_path, "val2017", 1, seed=2, hw=(45, 70))
    net = load_script("networks/network2d.py")
    assert net.main(["--store", local_store.url, *TINY, "--max_steps", "2", "--model_name", "x",
                     "--metrics_file", str(tmp_path / "run" / "m.jsonl")]) == 0
    export = load_script("networks/export.py")
    out = tmp_path / "x.onnx"
    assert export.main(["--store", local_store.url, "--model_name", "x", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "max |onnxruntime - PyTorch|" in printed and "(45x70, padded to 48x72)" in printed
    proto = onnx.load(str(out))
    assert proto.opset_import[0].version == 18  # the default
    assert export.main(["--store", local_store.url, "--model_name", "x", "--out", str(tmp_path / "o17.onnx"),
                        "--opset", "17"]) == 0
    assert onnx.load(str(tmp_path / "o17.onnx")).opset_import[0].version == 17
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["classes"]) == ["void", "person", "vehicle", "animal"] and meta["pad_to"] == "4"
    model, _ = ev.load_model(local_store, "models/x/checkpoint.pt", torch.device("cpu"))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for shape in ((1, 3, 32, 48), (2, 3, 64, 36)):  # other sizes than the one exported with: dynamic
        x = torch.randn(*shape)
        with torch.no_grad():
            ref = model(x).numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        assert got.shape == ref.shape and np.abs(got - ref).max() < 1e-4
    assert export.main(["--store", local_store.url, "--model_name", "x", "--out", str(tmp_path / "y.onnx"),
                        "--image", str(tmp_path / "missing.jpg")]) == 1
    assert not (tmp_path / "y.onnx").exists()


def test_step_rate_measure_with_color_jitter(local_store, tmp_path):
    """The GPU-only step rate is measured on a made-up batch, which carries no sample indices: no jitter there."""
    put_coco(local_store, tmp_path, "train2017", 4, seed=1, hw=(48, 64))
    put_coco(local_store, tmp_path, "val2017", 1, seed=2, hw=(48, 64))
    net = load_script("networks/network2d.py")
    assert net.main(["--store", local_store.url, *TINY, "--max_steps", "1", "--model_name", "s", "--step_rate_steps",
                     "1", "--color_jitter", "0.1,0.1,0.1,0.01", "--metrics_file", str(tmp_path / "r" / "m.jsonl")]) == 0
    assert train.load_checkpoint(local_store, "s", "cpu")["metrics"][-1]["gpu_only_images_per_s"] > 0
