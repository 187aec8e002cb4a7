"""getcityscapes.py against an emulated Cityscapes site on 127.0.0.1: login, md5, resume, credentials."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest

from mllib.get import cityscapes
from mllib.testing.mirror import CityscapesSite, Faults, Mirror

from .cocofake import png
from .conftest import SHARED, load_script

ROOT = Path(__file__).resolve().parents[1]
getcityscapes = load_script("datasets/getcityscapes.py")

PASSWORD = "pw-" + "x7" * 10
FRAME = "frankfurt/frankfurt_000000_000294"


def _members():
    real = SHARED / "cityscapes-real"
    if real.exists():  # the real (downscaled) frame when the shared sample is present
        left = (real / f"leftImg8bit/val/{FRAME}_leftImg8bit.png").read_bytes()
        ids = (real / f"gtFine/val/{FRAME}_gtFine_labelIds.png").read_bytes()
    else:
        left, ids = png(16, 32, 1), png(16, 32, 2)
    return ({f"leftImg8bit/val/{FRAME}_leftImg8bit.png": left, "license.txt": b"terms"},
            {f"gtFine/val/{FRAME}_gtFine_labelIds.png": ids, "license.txt": b"terms"})


@pytest.fixture
def site(tmp_path):
    left, gt = _members()
    left = dict(left, **{f"leftImg8bit/train/x/{i}.png": os.urandom(60_000) for i in range(8)})
    paths = {}
    for pid, name, files in ((1, "gtFine_trainvaltest.zip", gt), (3, "leftImg8bit_trainvaltest.zip", left)):
        p = tmp_path / "site" / name
        p.parent.mkdir(exist_ok=True)
        with zipfile.ZipFile(p, "w") as z:
            for k, v in files.items():
                z.writestr(k, v)
        paths[pid] = p
    return CityscapesSite("alice", PASSWORD, paths), {**gt, **left}


def run(store, url, workdir, *extra):
    return getcityscapes.main(["--store", store.url, "--base_url", url, "--workdir", str(workdir), "--no_progress",
                               "--credentials_file", str(workdir / "none.json"), *extra])


def test_login_download_and_store(any_store, site, tmp_path, monkeypatch, capsys):
    cs, members = site
    monkeypatch.setenv("CITYSCAPES_USERNAME", "alice")
    monkeypatch.setenv("CITYSCAPES_PASSWORD", PASSWORD)
    with Mirror(tmp_path / "site", cityscapes=cs) as m:
        assert run(any_store, m.url, tmp_path / "w") == 0
        for k, v in members.items():
            assert any_store.get_bytes(f"datasets/cityscapes/{k}") == v
        n = len(m.requests)
        assert run(any_store, m.url, tmp_path / "w") == 0
        file_requests = [r for r in m.requests[n:] if r[1].startswith("/file-handling")]
        assert file_requests == []  # second run: nothing downloaded
    out, err = capsys.readouterr()
    assert "Cityscapes in" in out and PASSWORD not in out + err


def test_bad_password_is_a_clear_error(local_store, site, tmp_path, monkeypatch, capsys, caplog):
    cs, _ = site
    monkeypatch.setenv("CITYSCAPES_USERNAME", "alice")
    monkeypatch.setenv("CITYSCAPES_PASSWORD", "wrong-secret-123")
    with Mirror(tmp_path / "site", cityscapes=cs) as m:
        assert run(local_store, m.url, tmp_path / "w") == 1
    out, err = capsys.readouterr()
    assert "login" in err and "failed" in err
    assert "wrong-secret-123" not in out + err + caplog.text
    assert list(local_store.list()) == []


def test_md5_mismatch_and_resume(local_store, site, tmp_path, monkeypatch):
    cs, members = site
    monkeypatch.setenv("CITYSCAPES_USERNAME", "alice")
    monkeypatch.setenv("CITYSCAPES_PASSWORD", PASSWORD)
    size = cs.packages[3].stat().st_size
    faults = Faults(corrupt={"gtFine_trainvaltest.zip": 1}, drop_after={"leftImg8bit_trainvaltest.zip": size // 2})
    with Mirror(tmp_path / "site", faults=faults, cityscapes=cs) as m:
        assert run(local_store, m.url, tmp_path / "w") == 0
        gets = [r for r in m.requests if r[1].startswith("/file-handling")]
    assert len(gets) == 4  # gtFine twice (md5 mismatch), leftImg8bit resumed once
    assert any(r[2] and r[2].startswith("bytes=") for r in gets)
    for k, v in members.items():
        assert local_store.get_bytes(f"datasets/cityscapes/{k}") == v


def test_md5_always_wrong_fails(local_store, site, tmp_path, monkeypatch, capsys):
    cs, _ = site
    monkeypatch.setenv("CITYSCAPES_USERNAME", "alice")
    monkeypatch.setenv("CITYSCAPES_PASSWORD", PASSWORD)
    with Mirror(tmp_path / "site", faults=Faults(corrupt={"gtFine_trainvaltest.zip": 9}), cityscapes=cs) as m:
        assert run(local_store, m.url, tmp_path / "w", "--packages", "1") == 1
    assert "md5" in capsys.readouterr().err
    assert list(local_store.list()) == []


def test_credentials_file_must_be_private(tmp_path, monkeypatch):
    monkeypatch.delenv("CITYSCAPES_USERNAME", raising=False)
    monkeypatch.delenv("CITYSCAPES_PASSWORD", raising=False)
    f = tmp_path / "cred.json"
    f.write_text(json.dumps({"username": "alice", "password": PASSWORD}))
    os.chmod(f, 0o644)
    with pytest.raises(cityscapes.CityscapesError) as e:
        cityscapes.credentials(f, interactive=False)
    assert "chmod 600" in str(e.value) and PASSWORD not in str(e.value)
    os.chmod(f, 0o600)
    assert cityscapes.credentials(f, interactive=False) == ("alice", PASSWORD)
    with pytest.raises(cityscapes.CityscapesError) as e:
        cityscapes.credentials(tmp_path / "missing.json", interactive=False)
    assert "CITYSCAPES_USERNAME" in str(e.value)


def test_prompt_uses_getpass(tmp_path, monkeypatch):
    monkeypatch.delenv("CITYSCAPES_USERNAME", raising=False)
    monkeypatch.delenv("CITYSCAPES_PASSWORD", raising=False)
    monkeypatch.setattr("builtins.input", lambda prompt: "bob")
    monkeypatch.setattr(cityscapes.getpass, "getpass", lambda prompt: "typed")
    assert cityscapes.credentials(tmp_path / "missing.json", interactive=True) == ("bob", "typed")
