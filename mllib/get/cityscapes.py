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
import re
import stat
import sys
from pathlib import Path

from mllib import MllibError
from mllib.get.fetch import FileSpec, safe_url

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
        raise CityscapesError(f"cannot reach {safe_url(base_url)} to log in ({type(e).__name__})") from None
    if r.status_code != 302:
        raise CityscapesError(
            f"Cityscapes login at {safe_url(base_url)} failed (HTTP {r.status_code}, no redirect): wrong username or password? "
            "Check CITYSCAPES_USERNAME / CITYSCAPES_PASSWORD or the credentials file"
        )
    log.info("logged in to %s", safe_url(base_url))


def package_list(session, base_url: str) -> list[dict]:
    r = session.get(base_url.rstrip("/") + "/downloads/?list", timeout=60)
    try:
        rows = r.json()
        assert isinstance(rows, list)
    except (ValueError, AssertionError):
        raise CityscapesError(f"{safe_url(base_url)}: the package list is not JSON (HTTP {r.status_code}); "
                              "not logged in?") from None
    return rows


def _size(v) -> int | None:
    return v if isinstance(v, int) else int(v) if isinstance(v, str) and v.isdigit() else None


_MD5 = re.compile(r"[0-9a-f]{32}")


def package_name(row: dict, base_url: str) -> str:
    """The package's file name from the site's list: a plain file name, or a clear error (it becomes a path)."""
    name = row.get("name")
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name \
            or "\0" in name or name.startswith(".") or len(name.encode()) > 255:
        raise CityscapesError(f"{safe_url(base_url)}: package {row.get('packageID')} has an unsafe file name "
                              f"{str(name)[:80]!r}; refusing to write it")
    return name


def package_md5(session, base: str, pid: int) -> str | None:
    """The published md5 of a package: 32 hex digits, None if the site publishes none (HTTP 404), else an error."""
    r = session.get(f"{base}/md5-sum/?packageID={pid}", timeout=60)
    if r.status_code == 404:
        return None
    words = r.text.split() if r.status_code == 200 else []
    if not words or not _MD5.fullmatch(words[0].lower()):
        raise CityscapesError(f"{safe_url(base)}: the md5 of package {pid} is not 32 hex digits (HTTP "
                              f"{r.status_code}, {r.text[:40]!r}...); not logged in, or not the Cityscapes site?")
    return words[0].lower()


def specs(session, base_url: str, packages: list[int]) -> list[FileSpec]:
    """FileSpecs (URL, md5 and, where given in bytes, size) for the chosen package ids."""
    base = base_url.rstrip("/")
    rows = {int(r["packageID"]): r for r in package_list(session, base_url)}
    out = []
    for pid in packages:
        if pid not in rows:
            have = ", ".join(f"{k} {v.get('name')}" for k, v in sorted(rows.items()))
            raise CityscapesError(f"package {pid} is not on {safe_url(base_url)}; available: {have}")
        name = package_name(rows[pid], base_url)
        md5 = package_md5(session, base, pid)
        if md5 is None:
            log.warning("package %s: no md5 published; only the zip's CRCs will be checked", pid)
        out.append(FileSpec(name, f"{base}/file-handling/?packageID={pid}", _size(rows[pid].get("size")), None, md5))
    return out
