"""The package as its users meet it: every console command answers --help and --version, help reads cleanly (one
default per flag, no seed aliases listed twice), a missing extra is one line naming it, and each class of failure
has its documented exit status (0 ok, 1 input or job, 2 usage, 75 temporary, 130 interrupted)."""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from mllib import cli
from mllib.testing.mirror import Faults, Mirror

from .cocofake import make_coco_zips

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
NEEDS = {"mllib-train": "torch", "mllib-evaluate": "torch", "mllib-export": "torch", "mllib-segment-train": "tensorflow",
         "mllib-segment-test": "tensorflow"}


def call(command: str, argv: list[str]) -> int:
    module, func = SCRIPTS[command].split(":")
    try:
        return getattr(importlib.import_module(module), func)(argv)
    except SystemExit as e:
        return e.code


def test_the_seeds_scripts_and_the_commands_are_one_main():
    from .conftest import load_script

    for script, command in [("datasets/getcoco.py", "mllib-getcoco"), ("datasets/cocorecord.py", "mllib-cocorecord"),
                            ("datasets/getdataset.py", "mllib-getdataset")]:
        module, func = SCRIPTS[command].split(":")
        assert load_script(script).main is getattr(importlib.import_module(module), func)
    assert set(NEEDS) < set(SCRIPTS) and len(SCRIPTS) == 16


@pytest.mark.parametrize("command", sorted(SCRIPTS))
def test_every_command_answers_help_and_version(command, tmp_path, capsys):
    from mllib import __version__

    need = NEEDS.get(command)
    if need and importlib.util.find_spec(need) is None:  # the core install: running it is one line naming the extra
        argv = ["--store", str(tmp_path / "store")] + (["--records", "x"] if "segment" in command else []) + \
            (["--out", str(tmp_path / "m.onnx")] if command == "mllib-export" else [])
        assert call(command, argv) == cli.EXIT_FAILED
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "which is not installed: pip install 'mllib[" in err, err
        return
    assert call(command, ["--version"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"(mllib) {__version__}")
    assert call(command, ["--help"]) == 0
    text = capsys.readouterr().out
    assert "--version" in text
    assert "(default: None)" not in text and "(default: False)" not in text
    options = text.split("options:", 1)[-1]
    # each flag's paragraph says its default at most once
    for para in re.split(r"\n  (?=-)", options):
        assert para.count("(default:") <= 1, para
    # one name listed per flag: older names (--savedmodelname, --trainingset, --valset) are accepted, not listed
    for para in re.split(r"\n  (?=-)", options):
        invocation = re.split(r"\s{2,}|\n", para.strip())[0]
        assert invocation.count("--") <= 1, invocation
    # the seed's single-dash spellings (-store, -trainingset_name) are accepted, not listed
    assert not re.search(r"(^|[\s,\[])-[a-z][a-z_]+", options, re.M), re.findall(r"(?:^|[\s,\[])-[a-z][a-z_]+", options)


def test_the_installed_console_command_runs_the_main_job(tmp_path):
    """The installed mllib-getcoco (in CI's core venv: from the wheel), run from outside the checkout, downloads a
    mirror's COCO into a local store: every object, and a re-run that has nothing to do."""
    exe = Path(sys.executable).with_name("mllib-getcoco")
    if not exe.exists():
        pytest.skip("the package is not installed in this environment (pip install -e .)")
    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("mllib-getcoco (mllib) ")
    site = tmp_path / "site"
    contents = make_coco_zips(site)
    away = tmp_path / "elsewhere"  # not the checkout: the installed package is what runs
    away.mkdir()
    with Mirror(site) as m:
        argv = [str(exe), "--base_url", m.url, "--checksums", str(site / "checksums.tsv"), "--no_progress",
                "--files", ",".join(contents)]  # what the mirror has
        r = subprocess.run(argv, cwd=away, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        again = subprocess.run(argv, cwd=away, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    from mllib import store

    st = store.connect(str(away / "store"))  # the default local store, ./store
    for name, members in contents.items():
        for path, data in members.items():
            assert st.get_bytes(f"datasets/coco/{path}") == data, (name, path)
    n = len(contents)
    assert f"{n} files (0 already done)" in r.stdout and f"{n} files ({n} already done)" in again.stdout, again.stdout
    assert "0 objects stored" in again.stdout


def test_a_seed_alias_still_works(local_store, capsys):
    assert call("mllib-store", ["-store", local_store.url, "ls"]) == 0


def test_a_missing_extra_is_one_line(monkeypatch, capsys):
    import builtins

    real = builtins.__import__

    def no_ray(name, *a, **kw):
        if name == "ray" or name.startswith("ray."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_ray)

    def body():
        import ray  # noqa: F401

    assert cli.run(body, "mllib-x") == cli.EXIT_FAILED
    err = capsys.readouterr().err.strip()
    assert err == ("mllib-x: error: this needs Ray, which is not installed: pip install 'mllib[ray]' (or pip install "
                   "-r requirements-ray.txt in a checkout)")


# -- exit statuses: one real failure of each class ---------------------------------------------------------------------
def test_exit_status_of_each_class_of_failure(s3_bucket, tmp_path, monkeypatch, capsys):
    from mllib.testing.seaweed import free_port

    site = tmp_path / "site"
    make_coco_zips(site)
    files = "val2017.zip"
    get = ["--base_url", None, "--checksums", str(site / "checksums.tsv"), "--workdir", str(tmp_path / "w"),
           "--files", files, "--no_progress", "--retries", "1", "--store", str(tmp_path / "store")]
    rows = []

    def row(what, want, command, argv, env=None):
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
        got = call(command, argv)
        err = capsys.readouterr().err.strip()
        if env:
            monkeypatch.undo()
        rows.append((what, want, got, err.splitlines()[-1] if err else ""))

    row("a bad flag", 2, "mllib-getcoco", ["--no_such_flag"])
    row("a bad value", 2, "mllib-getcoco", ["--jobs", "0"])
    row("a value that does not go with the command", 2, "mllib-getcoco", ["--files", "nope.zip", "--store",
                                                                           str(tmp_path / "s")])
    row("a missing bucket", 1, "mllib-store", ["--store", "s3://no-such-bucket-here", "ls"])
    row("wrong credentials", 1, "mllib-store", ["--store", f"s3://{s3_bucket}", "ls"],
        env={"AWS_SECRET_ACCESS_KEY": "wrong" * 8})
    row("a missing object (no such training set)", 1, "mllib-checkrecords", ["nope", "--store", f"s3://{s3_bucket}"])
    row("an unreachable endpoint (after botocore's retries)", 75, "mllib-store",
        ["--store", "s3://bkt", "--endpoint_url", f"http://127.0.0.1:{free_port()}", "ls"],
        env={"AWS_MAX_ATTEMPTS": "2"})
    bad = site / "bad.tsv"
    bad.write_text(re.sub(r"\t[0-9a-f]{64}\t", "\t" + "0" * 64 + "\t", (site / "checksums.tsv").read_text()))
    with Mirror(site) as m:
        get[1] = m.url
        row("a checksum mismatch", 1, "mllib-getcoco", [*get[:2], "--checksums", str(bad), *get[4:]])
        row("the job done", 0, "mllib-getcoco", get)
    with Mirror(site, faults=Faults(fail_503={files: 100})) as m:
        get[1] = m.url
        row("a site that answers 503 through every retry", 75, "mllib-getcoco",
            [*get, "--workdir", str(tmp_path / "w2"), "--store", str(tmp_path / "store2")])

    def interrupted():
        raise KeyboardInterrupt

    rows.append(("Ctrl-C", 130, cli.run(interrupted, "mllib-x"), capsys.readouterr().err.strip()))
    for what, _, got, line in rows:
        print(f"{got:>3}  {what}: {line[:140]}")
    assert [(what, got) for what, _, got, _ in rows] == [(what, want) for what, want, _, _ in rows], rows
    # every failure is one line of its own (SIGTERM in training, 75: tests/test_resume.py)
    assert all(line and "Traceback" not in line and "internal error" not in line for _, want, _, line in rows if want)


def test_training_settings_from_a_config_file_flags_override_and_print_config_reads_back(tmp_path, capsys):
    pytest.importorskip("torch")
    cfg = tmp_path / "run.yaml"
    cfg.write_text("batch_size: 4\nepochs: 3\nlearning_rate: 0.002\nmodel_name: yamlrun\namp: true\n")
    assert call("mllib-train", ["--config", str(cfg), "--epochs", "5", "--print_config"]) == 0
    out = capsys.readouterr().out
    import yaml

    got = yaml.safe_load(out)
    assert (got["batch_size"], got["epochs"], got["learning_rate"], got["model_name"], got["amp"]) == \
        (4, 5, 0.002, "yamlrun", True)  # the file's values, the command line's --epochs over the file's
    (tmp_path / "printed.yaml").write_text(out)  # what --print_config prints is a config file
    assert call("mllib-train", ["--config", str(tmp_path / "printed.yaml"), "--print_config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == got
    (tmp_path / "bad.yaml").write_text("batch_sise: 4\n")
    assert call("mllib-train", ["--config", str(tmp_path / "bad.yaml")]) == cli.EXIT_USAGE
    assert "no such setting(s): batch_sise" in capsys.readouterr().err
    # a setting under its older name (the seed's trainingset), not twice
    (tmp_path / "old.yaml").write_text("trainingset: a/train.json\n")
    assert call("mllib-train", ["--config", str(tmp_path / "old.yaml"), "--print_config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["train_annotations"] == "a/train.json"
    (tmp_path / "twice.yaml").write_text("trainingset: a/train.json\ntrain_annotations: b/train.json\n")
    assert call("mllib-train", ["--config", str(tmp_path / "twice.yaml")]) == cli.EXIT_USAGE
    assert "train_annotations is given twice" in capsys.readouterr().err
    (tmp_path / "range.json").write_text('{"batch_size": 0}')
    assert call("mllib-train", ["--config", str(tmp_path / "range.json")]) == cli.EXIT_USAGE
    assert "batch_size" in capsys.readouterr().err
