"""Training that survives interruption: a run killed (SIGKILL, SIGTERM) after a mid-epoch checkpoint and resumed
trains on exactly the batches the uninterrupted run trained on, and ends with the same weights bit for bit; for
CocoDataset and RecordsDataset, with another --num_workers, and under torchrun (gloo) with 2 ranks and then 1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from mllib import MllibError
from mllib.training import train
from mllib.training.position import EpochSampler

from .cocofake import put_coco
from .conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
TRAINER = ROOT / "tests" / "trainer.py"
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def put_data(store, tmp_path, n=10, records=False):
    put_coco(store, tmp_path, "train2017", n, seed=1, hw=(48, 64))
    put_coco(store, tmp_path, "val2017", 2, seed=2, hw=(48, 64))
    if records:
        rec = load_script("datasets/cocorecord.py")
        assert rec.main(["-trainingset_name", "r", "--store", store.url, "--no_progress", "--shard_images", "2"]) == 0


def flags(store, tmp_path, name, *more, workers=2):
    return ["--store", store.url, "--height", "32", "--width", "48", "--batch_size", "2", "--model_width", "4",
            "--model_depth", "2", "--num_workers", str(workers), "--no_progress", "--checkpoint_minutes", "0",
            "--metrics_file", str(tmp_path / f"{name}.jsonl"), "--model_name", name, "--log-level", "WARNING",
            *more]


def trainer(args, driver=(), timeout=300, torchrun=0, env=None):
    head = [sys.executable]
    if torchrun:
        from mllib.testing.seaweed import free_port

        head += ["-m", "torch.distributed.run", "--nproc_per_node", str(torchrun), "--master_port", str(free_port())]
    return subprocess.run([*head, str(TRAINER), *driver, "--", *args], capture_output=True, text=True,
                          timeout=timeout, env=env or ENV)


def together(*runs):
    """Independent runs (each its own model name and files) at once, their results in order: the suite's time is
    mostly each trainer's start-up, which two cores overlap."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(runs)) as pool:
        return [f.result() for f in [pool.submit(run) for run in runs]]


def steps_of(path) -> list[list[str]]:
    """The samples of each step a run trained on (tests/trainer.py --digests)."""
    return [line.split() for line in Path(path).read_text().splitlines()]


def keep_steps(path, n: int) -> None:
    """Forget the steps a killed rank started after the checkpoint (another rank was writing it meanwhile)."""
    for f in Path(path).parent.glob(Path(path).name + "*"):
        f.write_text("".join(line + "\n" for line in f.read_text().splitlines()[:n]))


def weights(store, name) -> dict:
    return train.load_checkpoint(store, name, "cpu")["model"]


def assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


RECIPE = ["--lr_schedule", "poly", "--warmup_steps", "3", "--color_jitter", "0.4,0.4,0.4,0.1", "--class_weights",
          "inverse", "--weight_decay", "0.01"]


@pytest.mark.parametrize("records,recipe", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["cocodataset", "records", "cocodataset-recipe", "records-recipe"])
def test_sigkill_after_a_mid_epoch_checkpoint_resumes_exactly(local_store, tmp_path, records, recipe):
    """10 images, batch 2: 5 steps an epoch; the run is killed right after its checkpoint at step 6 (one step into
    epoch 1) and resumed to step 8: the same batches as the uninterrupted run, the same weights bit for bit; also
    with the recipe (poly schedule with warm-up, colour jitter, class weights), whose learning rate and jitter are
    functions of the step and the sample."""
    put_data(local_store, tmp_path, records=records)
    data = ["--records", "r"] if records else []
    run = ["--epochs", "3", "--max_steps", "8", *data, *(RECIPE if recipe else [])]
    # checkpoints at steps 3 (every 3), 5 (epoch end), 6 (every 3): killed after the third
    ref, k = together(lambda: trainer(flags(local_store, tmp_path, "ref", *run), ["--digests", str(tmp_path / "ref.txt")]),
                      lambda: trainer(flags(local_store, tmp_path, "k", *run, "--checkpoint_every", "3"),
                                      ["--digests", str(tmp_path / "k.txt"), "--kill_after_save", "3"]))
    assert ref.returncode == 0, ref.stderr[-4000:]
    assert k.returncode == -signal.SIGKILL, k.stderr[-4000:]
    ck = train.load_checkpoint(local_store, "k", "cpu")
    assert (ck["step"], ck["epoch"], ck["epoch_complete"]) == (6, 1, False)
    assert ck["position"]["epoch"] == 1 and ck["position"]["kind"] == ("records" if records else "samples")
    r = trainer(flags(local_store, tmp_path, "k", *run, "--checkpoint_every", "3", "--resume"),
                ["--digests", str(tmp_path / "k.txt")])
    assert r.returncode == 0, r.stderr[-4000:]
    assert steps_of(tmp_path / "k.txt") == steps_of(tmp_path / "ref.txt")  # step for step the same samples
    assert len(steps_of(tmp_path / "ref.txt")) == 8
    assert_same_weights(weights(local_store, "k"), weights(local_store, "ref"))
    if recipe:  # the recipe was in force: the learning rate followed the schedule, the loss had class weights
        ck = train.load_checkpoint(local_store, "k", "cpu")
        assert ck["schedule_steps"] == 15 and len(ck["class_weights"]) == 4
        lr = ck["optimizer"]["param_groups"][0]["lr"]
        assert lr == pytest.approx(1e-3 * (1 - 7 / 15) ** 0.9)  # the lr of step 8 (0-based 7), past the warm-up
        plain = train.load_checkpoint(local_store, "ref", "cpu")
        assert plain["config"]["color_jitter"] == "0.4,0.4,0.4,0.1"


def test_resume_with_another_worker_count_is_exact(local_store, tmp_path):
    """CocoDataset: killed with 2 workers after its step-3 checkpoint, resumed with 0 (and 1): identical."""
    put_data(local_store, tmp_path)
    run = ["--epochs", "2", "--max_steps", "7"]

    def killed(name):
        return lambda: trainer(flags(local_store, tmp_path, name, *run, "--checkpoint_every", "3"),
                               ["--digests", str(tmp_path / f"{name}.txt"), "--kill_after_save", "1"])

    def resumed(workers):
        return lambda: trainer(flags(local_store, tmp_path, f"w{workers}", *run, "--resume", workers=workers),
                               ["--digests", str(tmp_path / f"w{workers}.txt")])

    ref, *ks = together(lambda: trainer(flags(local_store, tmp_path, "ref", *run),
                                        ["--digests", str(tmp_path / "ref.txt")]), killed("w0"), killed("w1"))
    assert ref.returncode == 0, ref.stderr[-4000:]
    for k in ks:
        assert k.returncode == -signal.SIGKILL, k.stderr[-4000:]
    for workers in (0, 1):
        assert train.load_checkpoint(local_store, f"w{workers}", "cpu")["position"]["samples"] == 6
    rs = together(resumed(0), resumed(1))
    for workers, r in zip((0, 1), rs, strict=True):
        name = f"w{workers}"
        assert r.returncode == 0, r.stderr[-4000:]
        assert steps_of(tmp_path / f"{name}.txt") == steps_of(tmp_path / "ref.txt")
        assert_same_weights(weights(local_store, name), weights(local_store, "ref"))


def test_sigterm_checkpoints_within_the_grace_time_and_resumes_exactly(local_store, tmp_path):
    """SIGTERM mid-epoch: the step finishes, a checkpoint is written, exit status 75 (train.EXIT_STOPPED) well
    within --stop_grace_s; the resumed run ends as the uninterrupted one, bit for bit."""
    put_data(local_store, tmp_path, n=40)
    digests = tmp_path / "s.txt"
    args = flags(local_store, tmp_path, "s", "--epochs", "2", "--stop_grace_s", "30")
    p = subprocess.Popen([sys.executable, str(TRAINER), "--digests", str(digests), "--", *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.monotonic() + 120
        while not (digests.exists() and len(digests.read_text().splitlines()) >= 4):  # training, mid-epoch 0
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()[1][-4000:]
            time.sleep(0.05)
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        p.kill()
    assert p.returncode == train.EXIT_STOPPED, err[-4000:]
    assert took < 30, took
    assert "stopped by SIGTERM at step" in err and "--resume" in err and "Traceback" not in err
    ck = train.load_checkpoint(local_store, "s", "cpu")
    stopped = ck["step"]
    assert not ck["epoch_complete"] and ck["epoch"] == 0 and 4 <= stopped < 20
    assert len(steps_of(digests)) == stopped  # the checkpoint holds every step that ran, and no other
    assert ck["position"]["samples"] == 2 * stopped
    total = stopped + 22  # into epoch 1 (20 steps an epoch)
    r, ref = together(lambda: trainer([*args, "--resume", "--max_steps", str(total)], ["--digests", str(digests)]),
                      lambda: trainer(flags(local_store, tmp_path, "ref", "--epochs", "2", "--max_steps", str(total)),
                                      ["--digests", str(tmp_path / "ref.txt")]))
    assert r.returncode == 0, r.stderr[-4000:]
    assert ref.returncode == 0, ref.stderr[-4000:]
    assert steps_of(digests) == steps_of(tmp_path / "ref.txt")
    assert_same_weights(weights(local_store, "s"), weights(local_store, "ref"))


def test_a_kill_during_the_checkpoint_write_leaves_the_previous_one(local_store, tmp_path):
    put_data(local_store, tmp_path)
    args = flags(local_store, tmp_path, "c", "--epochs", "2", "--checkpoint_every", "2")
    k = trainer(args, ["--kill_in_save", "2"])  # the step-4 checkpoint: killed half-way through writing it
    assert k.returncode == -signal.SIGKILL, k.stderr[-4000:]
    folder = local_store.local_path("models/c")
    assert [p.name for p in folder.iterdir() if ".mllib-tmp-" in p.name]  # it was killed inside the write
    ck = train.load_checkpoint(local_store, "c", "cpu")  # the step-2 checkpoint, whole
    assert ck["step"] == 2 and ck["position"]["samples"] == 4
    assert [o.key for o in local_store.list("models/c/")] == ["models/c/checkpoint.pt"]  # no partial object listed
    r = trainer([*args, "--resume"])
    assert r.returncode == 0, r.stderr[-4000:]
    assert train.load_checkpoint(local_store, "c", "cpu")["step"] == 10


def test_resume_refuses_other_data_crop_batch_or_seed(local_store, tmp_path, capsys):
    put_data(local_store, tmp_path, n=4)
    net = load_script("networks/network2d.py")
    args = flags(local_store, tmp_path, "f", "--epochs", "1", workers=0)
    assert net.main(args) == 0
    for flag, value in [("--height", "48"), ("--batch_size", "4"), ("--seed", "1"),
                        ("--train_annotations", "datasets/coco/annotations/instances_val2017.json"),
                        ("--trainingset", "datasets/coco/annotations/instances_val2017.json")]:  # its older name
        assert net.main([*args, "--resume", "--epochs", "2", flag, value]) == 2
        err = capsys.readouterr().err
        named = "--train_annotations" if flag == "--trainingset" else flag
        assert f"the checkpoint was made with {named}" in err and "Traceback" not in err, err
    assert net.main([*args, "--resume", "--epochs", "2", "--num_workers", "1"]) == 0  # workers may change
    with pytest.raises(MllibError, match="--unordered"):
        train.TrainConfig(unordered=True, checkpoint_every=5)


def test_a_checkpoint_of_the_older_setting_names_is_read_under_the_new_ones():
    """Checkpoints written before --trainingset / --valset became --train_annotations / --val_annotations keep their
    settings: resume compares them, evaluate.py reads the validation data from them."""
    from mllib.training import evaluate as ev

    older = {"config": {"trainingset": "a/train.json", "valset": "", "height": 64, "width": 64}}
    with pytest.raises(MllibError, match="--train_annotations 'a/train.json'"):
        train.check_resumable(train.TrainConfig(height=64, width=64, val_annotations=""), older)
    train.check_resumable(train.TrainConfig(train_annotations="a/train.json", val_annotations="", height=64,
                                            width=64), older)
    cfg, _ = ev.checkpoint_settings(older)
    assert (cfg.train_annotations, cfg.val_annotations, cfg.height) == ("a/train.json", "", 64)


def test_epoch_sampler_continues_the_global_order_on_any_number_of_ranks():
    n, b = 23, 2
    full = EpochSampler(n, b, seed=5)
    full.set_epoch(3)
    order = full.order().tolist()
    assert sorted(order) == list(range(n)) and list(full) == order[:22]  # the last partial batch dropped
    two = [EpochSampler(n, b, seed=5, rank=r, world=2) for r in range(2)]
    for s in two:
        s.set_epoch(3)
    assert [len(s) for s in two] == [10, 10]  # 5 global batches of 4
    first = [list(s)[:2] for s in two]  # one step on each rank
    assert first == [order[0:2], order[2:4]]
    one = EpochSampler(n, b, seed=5)
    one.set_epoch(3, start=full.consumed(0) + two[0].consumed(1) - 0)  # 4 samples consumed by two ranks
    assert list(one) == order[4:22]
    with pytest.raises(MllibError, match="outside an epoch"):
        one.set_epoch(3, start=24)


def test_torchrun_kill_and_resume_exact_then_one_rank_finishes_the_epoch(local_store, tmp_path):
    """Two ranks (gloo) killed after a mid-epoch checkpoint, resumed on two ranks: bit for bit the uninterrupted
    two-rank run. Killed again and resumed on one rank: the epoch goes on with every sample exactly once."""
    put_data(local_store, tmp_path, n=16)  # two ranks x batch 2: 4 steps an epoch
    run = ["--epochs", "2", "--max_steps", "6"]
    ref, k = together(lambda: trainer(flags(local_store, tmp_path, "ref", *run, workers=1),
                                      ["--digests", str(tmp_path / "ref.txt")], torchrun=2),
                      lambda: trainer(flags(local_store, tmp_path, "k", *run, "--checkpoint_every", "5", workers=1),
                                      ["--kill_after_save", "2", "--digests", str(tmp_path / "k.txt")], torchrun=2))
    assert ref.returncode == 0, ref.stderr[-4000:]
    assert k.returncode != 0
    ck = train.load_checkpoint(local_store, "k", "cpu")
    assert (ck["step"], ck["epoch"], ck["position"]["samples"]) == (5, 1, 4)
    keep_steps(tmp_path / "k.txt", 5)
    r = trainer(flags(local_store, tmp_path, "k", *run, "--resume", workers=1),
                ["--digests", str(tmp_path / "k.txt")], torchrun=2)
    assert r.returncode == 0, r.stderr[-4000:]
    for rank in (0, 1):
        assert steps_of(tmp_path / f"k.txt.rank{rank}") == steps_of(tmp_path / f"ref.txt.rank{rank}")
    assert_same_weights(weights(local_store, "k"), weights(local_store, "ref"))

    # two ranks again, stopped after one step of epoch 1 (step 5), then one rank to the end of epoch 1
    e, full = together(lambda: trainer(flags(local_store, tmp_path, "e", *run, "--checkpoint_every", "5", workers=1),
                                       ["--kill_after_save", "2", "--digests", str(tmp_path / "e.txt")], torchrun=2),
                       lambda: trainer(flags(local_store, tmp_path, "full", "--epochs", "2", workers=1),
                                       ["--digests", str(tmp_path / "full.txt")]))
    assert e.returncode != 0
    keep_steps(tmp_path / "e.txt", 5)
    one = trainer(flags(local_store, tmp_path, "e", "--epochs", "2", "--resume", workers=1),
                  ["--digests", str(tmp_path / "e1.txt")])
    assert one.returncode == 0, one.stderr[-4000:]
    two_rank_steps = [steps_of(tmp_path / f"e.txt.rank{r}") for r in (0, 1)]
    epoch1 = [d for steps in two_rank_steps for s in steps[4:] for d in s] + \
        [d for s in steps_of(tmp_path / "e1.txt") for d in s]
    assert len(steps_of(tmp_path / "e1.txt")) == 6  # 12 samples left, batch 2 on one rank
    # every sample of epoch 1 exactly once: the 16 samples an uninterrupted one-rank epoch 1 trains on
    assert full.returncode == 0, full.stderr[-4000:]
    reference = [d for s in steps_of(tmp_path / "full.txt")[8:] for d in s]
    assert len(reference) == 16 and len(set(reference)) == 16
    assert Counter(epoch1) == Counter(reference)
    ck = train.load_checkpoint(local_store, "e", "cpu")
    assert ck["epoch_complete"] and ck["metrics"][-1]["world_size"] == 1


def test_torchrun_sigterm_stops_every_rank_at_the_same_step(local_store, tmp_path):
    """SIGTERM to torchrun (which passes it to its ranks): every rank finishes the same step, rank 0 writes one
    checkpoint for both, and each rank exits 75."""
    put_data(local_store, tmp_path, n=40)
    from mllib.testing.seaweed import free_port

    digests = tmp_path / "t.txt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(TRAINER), "--digests", str(digests), "--status", str(tmp_path / "status"), "--",
           *flags(local_store, tmp_path, "t", "--epochs", "2", workers=1)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        rank1 = Path(f"{digests}.rank1")
        deadline = time.monotonic() + 120
        while not (rank1.exists() and len(rank1.read_text().splitlines()) >= 3):
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()[1][-4000:]
            time.sleep(0.05)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=90)
    finally:
        p.kill()
    assert err.count("stopped by SIGTERM at step") == 1, err[-4000:]  # rank 0 says it, for both
    assert [(tmp_path / f"status.rank{r}").read_text() for r in (0, 1)] == ["75", "75"]
    ck = train.load_checkpoint(local_store, "t", "cpu")
    steps = [len(Path(f"{digests}.rank{r}").read_text().splitlines()) for r in (0, 1)]
    assert steps == [ck["step"], ck["step"]] and ck["position"]["samples"] == 4 * ck["step"]


def test_checkpoint_minutes_writes_checkpoints_inside_the_epoch(local_store, tmp_path, monkeypatch):
    put_data(local_store, tmp_path, n=6)
    saved = []
    real = train.save_checkpoint
    monkeypatch.setattr(train, "save_checkpoint", lambda s, n, state: (saved.append(state["position"]),
                                                                         real(s, n, state)))
    net = load_script("networks/network2d.py")
    args = flags(local_store, tmp_path, "m", "--epochs", "1", workers=0)
    assert net.main([*args, "--checkpoint_minutes", "1e-9"]) == 0  # due after every step
    assert [p and p["samples"] for p in saved] == [2, 4, 6, None]  # after steps 1, 2, 3, then the epoch's end
    saved.clear()
    assert net.main([*args, "--checkpoint_minutes", "0", "--model_name", "m0"]) == 0
    assert saved == [None]  # only the epoch's end


def test_records_resume_with_another_worker_count_gives_every_remaining_record_once(local_store, tmp_path):
    """RecordsDataset with another topology: not the same batches (each worker reads its own shards), but every
    record of the epoch that was not trained on yet, exactly once."""
    put_data(local_store, tmp_path, n=12, records=True)  # 6 shards of 2
    run = ["--records", "r", "--epochs", "1"]
    k, ref = together(lambda: trainer(flags(local_store, tmp_path, "k", *run, "--checkpoint_every", "2"),
                                      ["--kill_after_save", "1", "--digests", str(tmp_path / "k.txt")]),
                      lambda: trainer(flags(local_store, tmp_path, "ref", *run), ["--digests", str(tmp_path / "ref.txt")]))
    assert k.returncode == -signal.SIGKILL, k.stderr[-4000:]
    assert ref.returncode == 0, ref.stderr[-4000:]
    r = trainer(flags(local_store, tmp_path, "k", *run, "--resume", workers=1), ["--digests", str(tmp_path / "k.txt")])
    assert r.returncode == 0, r.stderr[-4000:]
    got = [d for s in steps_of(tmp_path / "k.txt") for d in s]
    want = [d for s in steps_of(tmp_path / "ref.txt") for d in s]
    assert len(want) == 12 and Counter(got) == Counter(want)
    assert json.loads((tmp_path / "k.jsonl").read_text().splitlines()[-1])["step"] == 6
