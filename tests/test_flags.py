"""Every script's numeric and URL flags are checked before anything runs: a value out of range is a usage error
(exit status 2) that names the flag, with no traceback and nothing created in the store; network2d's settings are
checked where TrainConfig is made, so callers of the library get the same one-line errors."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from mllib import MllibError
from mllib.checks import SEED, Range

from .conftest import load_script

USAGE = [  # (script, flags, the flag the error must name)
    ("datasets/getcoco.py", ["--jobs", "0"], "--jobs"),
    ("datasets/getcoco.py", ["--retries", "-1"], "--retries"),
    ("datasets/getcoco.py", ["--base_url", "ftp://mirror/coco"], "--base_url"),
    ("datasets/getcoco.py", ["--log_level", "chatty"], "--log"),
    ("datasets/getcityscapes.py", ["--base_url", "file:///etc"], "--base_url"),
    ("datasets/cocorecord.py", ["-trainingset_name", "t", "--shard_images", "0"], "--shard_images"),
    ("datasets/cocorecord.py", ["-trainingset_name", "t", "--jobs", "-2"], "--jobs"),
    ("datasets/cocorecord.py", ["-trainingset_name", "t", "--max_images", "0"], "--max_images"),
    ("datasets/cocorecord.py", ["-trainingset_name", "t", "--seed", "-1"], "--seed"),
    ("datasets/cocostore.py", ["-n", "0"], "--count"),
    ("datasets/cocostore.py", ["--height", "tall"], "--height"),
    ("datasets/viewdataset.py", ["-trainingset_name", "t", "--cols", "0"], "--cols"),
    ("datasets/viewdataset.py", ["-trainingset_name", "t", "--size", "1e9"], "--size"),
    ("segment/train.py", ["-trainingset", "t", "--height", "100"], "--height"),  # the UNet needs multiples of 16
    ("segment/train.py", ["-trainingset", "t", "--learning_rate", "nan"], "--learning_rate"),
    ("segment/train.py", ["-trainingset", "t", "--epochs", "0"], "--epochs"),
    ("segment/test.py", ["-trainingset", "t", "--batch_size", "0"], "--batch_size"),
    ("networks/network2d.py", ["--batch_size", "zero"], "--batch_size"),
    # names are folders of the store (and of runs/), nested ones too (coco/small): nothing may climb out of them
    ("datasets/cocorecord.py", ["-trainingset_name", "../x"], "--trainingset_name"),
    ("datasets/getcoco.py", ["--dataset", "a//b"], "--dataset"),
    ("datasets/viewdataset.py", ["-trainingset_name", ".hidden"], "--trainingset_name"),
    ("segment/train.py", ["-trainingset", "t", "--savedmodelname", ".."], "--savedmodelname"),
    ("segment/test.py", ["-trainingset", "../t"], "--trainingset"),
]


@pytest.mark.parametrize("script,flags,flag", USAGE, ids=[f"{s.split('/')[1]}{' '.join(f)}" for s, f, _ in USAGE])
def test_a_flag_out_of_range_is_a_usage_error(script, flags, flag, tmp_path, capsys):
    store = tmp_path / "store"
    with pytest.raises(SystemExit) as e:
        load_script(script).main([*flags, "--store", str(store)])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert flag in err and ("must be" in err or "invalid int value" in err) and "Traceback" not in err
    assert not store.exists()


TRAINING = [  # network2d flags TrainConfig refuses, and what the one line must say
    (["--batch_size", "0"], "--batch_size must be a whole number >= 1 (got 0)"),
    (["--epochs", "-1"], "--epochs must be a whole number >= 1 (got -1)"),
    (["--height", "0"], "--height must be a whole number from 1 to 16384 (got 0)"),
    (["--num_workers", "-1"], "--num_workers must be"),
    (["--model_width", "0"], "--model_width must be"),
    (["--learning_rate", "inf"], "--learning_rate must be a number > 0 (got inf)"),
    (["--val_fraction", "1"], "--val_fraction must be a number >= 0 and < 1 (got 1.0)"),
    (["--seed", "-1"], "--seed must be"),
    (["--log_every", "0"], "--log_every must be"),
    (["--height", "24", "--model_depth", "5"], "at least 2 ** --model_depth = 32"),
    (["--model_name", "../x"], "--model_name must be a folder name"),  # it wrote runs/../x/metrics.jsonl
    (["--records", "a/./b"], "--records must be a folder name"),
    (["--device", "tpu"], "--device must be auto, cpu, cuda, cuda:N or mps (got 'tpu')"),
]


@pytest.mark.parametrize("flags,says", TRAINING, ids=[" ".join(f) for f, _ in TRAINING])
def test_network2d_settings_out_of_range_are_one_line(flags, says, tmp_path, capsys):
    store = tmp_path / "store"
    rc = load_script("networks/network2d.py").main([*flags, "--store", str(store)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("mllib-train: error: ") and says in err and len(err.splitlines()) == 1
    assert not store.exists()  # refused before the store was opened


def test_trainconfig_checks_what_a_library_caller_gives():
    from mllib.training.train import TrainConfig

    assert TrainConfig(height=32, width=48, batch_size=2).batch_size == 2
    with pytest.raises(MllibError, match=r"--batch_size must be a whole number >= 1 \(got 2.5\)"):
        TrainConfig(batch_size=2.5)
    with pytest.raises(MllibError, match="--prefetch"):
        TrainConfig(prefetch=0)
    with pytest.raises(MllibError, match="2 \\*\\* --model_depth = 16"):
        TrainConfig(height=512, width=8)


SEED_ALIASES = ("bucket", "train_image_path", "val_image_path", "class_dictionary", "height",
                "width", "imflags", "batch_size", "epochs", "max_steps", "learning_rate", "num_workers", "device",
                "amp", "model_name", "resume")


def test_network2d_flags_are_trainconfigs_fields():
    """Every TrainConfig field is a network2d flag of the same name and default (said once, in the dataclass), the
    seed's single-dash spellings still parse, and a flag given reaches the config."""
    from dataclasses import MISSING, fields

    from mllib.training.train import TrainConfig

    net = load_script("networks/network2d.py")
    defaults = vars(net.parse_args([]))
    for f in fields(TrainConfig):
        assert f.default is not MISSING and defaults[f.name] == f.default, f.name
        assert f.metadata["help"], f.name
    args = net.parse_args(["-batch_size", "3", "-height", "64", "-amp", "-device", "cpu", "-model_name", "m",
                           "--checkpoint_minutes", "2.5", "--normalize", "none", "-valset", "",
                           "--trainingset", "a.json"])
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    assert (cfg.batch_size, cfg.height, cfg.amp, cfg.device, cfg.model_name, cfg.checkpoint_minutes, cfg.normalize,
            cfg.val_annotations, cfg.train_annotations) == (3, 64, True, "cpu", "m", 2.5, "none", "", "a.json")
    p = net.cli.parser(None)
    net.cli.add_settings(p, TrainConfig)
    spelled = {a.dest: set(a.option_strings) for a in p._actions}
    for name in SEED_ALIASES:
        assert spelled[name] == {f"--{name}", f"-{name}"}, name
    # the seed's --trainingset / --valset (COCO JSON keys) are older names of --train_annotations / --val_annotations
    # (a TFRecord set is --records everywhere; segment/'s --trainingset is its alias)
    for name, old in (("train_annotations", "trainingset"), ("val_annotations", "valset")):
        assert spelled[name] == {f"--{name}", f"-{name}", f"--{old}", f"-{old}"}, name
    with pytest.raises(SystemExit):
        net.parse_args(["--normalize", "sometimes"])


def test_range_values():
    size = Range(16, 4096, step=16)
    assert [size.problem(v) is None for v in (16, 512, 4096, 8, 100, 8192, True, 16.0, "16")] == \
        [True, True, True, False, False, False, False, False, False]
    rate = Range(0, lo_open=True, real=True)
    assert [rate.problem(v) is None for v in (1e-9, 3, 0, -1, math.nan, math.inf)] == \
        [True, True, False, False, False, False]
    assert SEED(str(2**32 - 1)) == 2**32 - 1 and SEED.problem(2**32) is not None
    assert size("64") == 64


DATASET_ARGS = [  # CocoDataset / RecordsDataset arguments out of range, and the argument the one line names
    ({"height": 0}, "height must be a whole number from 1 to 16384 (got 0)"),
    ({"width": 10**6}, "width must be"),
    ({"seed": -1}, "seed must be"),
    ({"label_dtype": "float32"}, "label_dtype must be an integer dtype"),
]


@pytest.mark.parametrize("kw,says", DATASET_ARGS + [
    ({"rotate": math.nan}, "rotate must be a number from 0 to 180 (got nan)"),
    ({"offset": -1}, "offset must be"),
    ({"scale_max": math.inf}, "scale_max must be"),
    ({"astype": "int7"}, "astype must be 'float32', 'float16', 'float64' or 'uint8'"),
], ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_cocodataset_arguments_are_checked(local_store, tmp_path, kw, says):
    from mllib.loaders.cocodataset import CocoDataset

    from .cocofake import put_coco

    put_coco(local_store, tmp_path)
    with pytest.raises(MllibError, match=re.escape(says)):
        CocoDataset.from_store(local_store, split="val2017", **kw)
    assert CocoDataset.from_store(local_store, split="val2017", height=np.int64(40), width=48, seed=np.uint32(3))[0]


@pytest.mark.parametrize("kw,says", DATASET_ARGS, ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_recordsdataset_arguments_are_checked(local_store, tmp_path, kw, says):
    from mllib.records import RecordsDataset

    from .test_pipeline import make_set

    make_set(local_store, tmp_path)
    with pytest.raises(MllibError, match=re.escape(says)):
        RecordsDataset(local_store, "t", "train", **kw)


def test_getcoco_workdir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "downloads").write_text("a file where the downloads folder should be")
    rc = load_script("datasets/getcoco.py").main(["--store", str(tmp_path / "store"), "--workdir",
                                                  str(tmp_path / "downloads"), "--files", "val2017.zip"])
    err = capsys.readouterr().err
    assert rc == 1 and "is a file, not a folder" in err and "internal error" not in err
    assert (tmp_path / "downloads").read_text().startswith("a file")


def test_cocostore_out_that_is_a_file(tmp_path, capsys):
    (tmp_path / "samples").write_text("a file")
    rc = load_script("datasets/cocostore.py").main(["--store", str(tmp_path / "store"), "--out", str(tmp_path / "samples")])
    assert rc == 1 and "is a file, not a folder" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()
