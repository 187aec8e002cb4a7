"""The Cityscapes download site: login, package list, md5 sums (the official cityscapesScripts protocol).

Credentials come from CITYSCAPES_USERNAME / CITYSCAPES_PASSWORD, or a JSON credentials file
({"username": ..., "password": ...}) that others cannot read, or an interactive prompt; never from the
command line, and they are never logged.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import stat
import sys
from pathlib import Path

from mllib import MllibError
from mllib.download import FileSpec

log = logging.getLogger(__name__)

BASE_URL = "https://www.cityscapes-dataset.com"
DEFAULT_CREDENTIALS = Path("~/.local/share/cityscapesscripts/credentials.json")
KNOWN_PACKAGES = {1: "gtFine_trainvaltest.zip", 2: "gtCoarse.zip", 3: "leftImg8bit_trainvaltest.zip",
                  4: "leftImg8bit_trainextra.zip"}


class CityscapesError(MllibError):
    pass


def credentials(path: str | os.PathLike | None = None, interactive: bool | None = None) -> tuple[str, str]:
    """(username, password) from the environment, a private credentials file, or a prompt."""
    user, pw = os.environ.get("CITYSCAPES_USERNAME"), os.environ.get("CITYSCAPES_PASSWORD")
    if user and pw:
        return user, pw
    file = Path(path or DEFAULT_CREDENTIALS).expanduser()
    if file.exists():
        mode = file.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise CityscapesError(
                f"credentials file {file} can be read by others (mode {stat.filemode(mode)}); run: chmod 600 {file}"
            )
        try:
            data = json.loads(file.read_text())
            return str(data["username"]), str(data["password"])
        except (ValueError, KeyError, TypeError):
            raise CityscapesError(
                f'credentials file {file} must be JSON {{"username": ..., "password": ...}}'
            ) from None
    if interactive is None:
        interactive = sys.stdin.isatty()
    if interactive:
        user = user or input("Cityscapes username: ")
        return user, getpass.getpass("Cityscapes password: ")
    raise CityscapesError(
        "no Cityscapes credentials: set CITYSCAPES_USERNAME and CITYSCAPES_PASSWORD, or write them to "
        f"{file} (chmod 600), or run in a terminal to be asked"
    )


def login(session, base_url: str, username: str, password: str) -> None:
    import requests

    url = base_url.rstrip("/") + "/login/"
    try:
        session.get(url, timeout=60)
        r = session.post(url, data={"username": username, "password": password, "submit": "Login"},
                         allow_redirects=False, timeout=60)
    except requests.RequestException as e:
        raise CityscapesError(f"cannot reach {base_url} to log in ({type(e).__name__})") from None
    if r.status_code != 302:
        raise CityscapesError(
            f"Cityscapes login at {base_url} failed (HTTP {r.status_code}, no redirect): wrong username or password? "
            "Check CITYSCAPES_USERNAME / CITYSCAPES_PASSWORD or the credentials file"
        )
    log.info("logged in to %s", base_url)


def package_list(session, base_url: str) -> list[dict]:
    r = session.get(base_url.rstrip("/") + "/downloads/?list", timeout=60)
    try:
        rows = r.json()
        assert isinstance(rows, list)
    except (ValueError, AssertionError):
        raise CityscapesError(f"{base_url}: the package list is not JSON (HTTP {r.status_code}); not logged in?") from None
    return rows


def _size(v) -> int | None:
    return v if isinstance(v, int) else int(v) if isinstance(v, str) and v.isdigit() else None


def specs(session, base_url: str, packages: list[int]) -> list[FileSpec]:
    """FileSpecs (URL, md5 and, where given in bytes, size) for the chosen package ids."""
    base = base_url.rstrip("/")
    rows = {int(r["packageID"]): r for r in package_list(session, base_url)}
    out = []
    for pid in packages:
        if pid not in rows:
            have = ", ".join(f"{k} {v.get('name')}" for k, v in sorted(rows.items()))
            raise CityscapesError(f"package {pid} is not on {base_url}; available: {have}")
        r = session.get(f"{base}/md5-sum/?packageID={pid}", timeout=60)
        md5 = r.text.split()[0].lower() if r.status_code == 200 and r.text.split() else None
        if md5 is None:
            log.warning("package %s: no md5 published; only the zip's CRCs will be checked", pid)
        out.append(FileSpec(str(rows[pid]["name"]), f"{base}/file-handling/?packageID={pid}",
                            _size(rows[pid].get("size")), None, md5))
    return out
