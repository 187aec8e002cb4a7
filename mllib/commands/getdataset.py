"""Download a public segmentation dataset, verify it, and store it extracted, ready to check, convert and train on.

    python3 datasets/getdataset.py --list                      # name, download size, login, license
    python3 datasets/getdataset.py ade20k --store s3://data    # ADEChallengeData2016.zip -> datasets/ade20k/...
    python3 datasets/getdataset.py voc2012-aug                 # VOC 2012 (.tar) + SBD (.tgz): the 10,582-image set
    python3 datasets/getdataset.py cocostuff                   # the 164k label maps, beside getcoco.py's images
    python3 datasets/getdataset.py mapillary --from_dir ~/Downloads   # login-gated: the archive you downloaded
    python3 datasets/getdataset.py ade20k --check --convert ade       # the whole job: + checkdataset + cocorecord

Each file is checked against the size / sha256 / md5 its anchors publish (mllib/datasets/registry/<name>.json),
resumes after an interruption (re-run the same command), and is extracted straight into the store under
datasets/<name>/<member path> as it was downloaded (zip, tar and tar.gz streamed: no extracted copy on disk; unsafe
members refused). A finished archive has a manifest, so a re-run skips it. The next download overlaps the
previous extraction; a progress bar per file and an estimate for the whole job. Ends with

    ade20k in s3://data/datasets/ade20k
    1 files (0 already done), 0.97 GB downloaded, 22,212 objects stored in s3://data/datasets/ade20k, 3m10s

then: datasets/checkdataset.py ade20k, datasets/cocorecord.py -trainingset_name ade --dataset ade20k,
network2d.py --source ade20k. coco and cityscapes are downloaded by datasets/getcoco.py and getcityscapes.py (this
script runs them with the arguments that follow the name).
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

from mllib import MllibError, UsageError, checks, cli, layout
from mllib.get import download
from mllib.get import fetch as fetching
from mllib.sources import registry

log = logging.getLogger("getdataset")


def parse_args(argv=None):
    p = cli.parser(__doc__)
    cli.add_store_args(p)
    p.add_argument("name", nargs="?", default=None, help="a registered dataset (--list)")
    p.add_argument("--list", action="store_true", help="list the registered datasets and exit")
    p.add_argument("--files", default=None, help="comma-separated file names to fetch (default: all of the dataset's)")
    p.add_argument("--base_url", type=cli.http_url, default=None,
                   help="a mirror: each file is fetched from URL/<file name> (default: the official URLs)")
    p.add_argument("--checksums", default=None,
                   help="checksum table (columns url size sha256 md5; rows matched by file name) replacing the "
                        "registry's values, for a mirror or to pin a file no anchor publishes")
    p.add_argument("--from_dir", default=None,
                   help="a folder holding the archives you downloaded yourself (login-gated datasets: mapillary, "
                        "bdd100k): verified and extracted from there, never deleted")
    p.add_argument("--check", action="store_true",
                   help="then run checkdataset.py on it (exit 1 on problems; its report and contact sheet go to "
                        "--workdir)")
    p.add_argument("--convert", type=checks.NAME, default=None, metavar="TRAININGSET",
                   help="then convert it into the training set trainingsets/TRAININGSET (cocorecord.py --dataset NAME)")
    cli.add_download_args(p)
    cli.add_log_args(p)
    return p.parse_args(argv)


def list_line(t: registry.Table) -> str:
    size, exact = t.size()
    shown = f"{'' if exact else '~'}{size / 1e9:,.2f} GB" if size else ("+".join(t.needs) or "-")
    how = "login" if t.login else "public"
    sets = ", ".join(f"{k} {v:,d}" for k, v in t.raw.get("images", {}).items()) or "-"
    via = f" (datasets/{t.script})" if t.script else ""
    return f"{t.name:<13} {shown:>10}  {how:<6}  {sets:<24}  {t.raw.get('license', '-')}{via}"


def specs_for(t: registry.Table, files: list[str] | None, base_url: str | None, checksums: str | None
              ) -> list[fetching.FileSpec]:
    """The files to get, with what is known to verify them (the registry's values, or --checksums)."""
    table = download.read_checksums(checksums) if checksums else {}
    known = {f["name"]: f for f in t.files}
    names = files or list(known)
    out = []
    for name in names:
        if name not in known:
            raise UsageError(f"{t.name} has no file {name!r}; its files: {', '.join(known) or 'none'}")
        f = known[name]
        row = table.get(name)
        size, sha, md5 = (row.size, row.sha256, row.md5) if row else (f.get("size"), f.get("sha256"), f.get("md5"))
        url = f"{base_url.rstrip('/')}/{name}" if base_url else f["url"]
        if size is None and sha is None and md5 is None:
            log.warning("%s: UNVERIFIED: no size or checksum is published; only the archive's own checks (zip CRCs)"
                        " apply (pin it with --checksums)", name)
        elif sha is None:
            log.warning("%s: not pinned by a sha256; verified by %s only", name,
                        ", ".join(k for k, v in (("size", size), ("md5", md5)) if v))
        out.append(fetching.FileSpec(name, url, size, sha.lower() if sha else None, md5.lower() if md5 else None))
    return out


def needs_login(t: registry.Table, names: list[str]) -> MllibError:
    return UsageError(f"{t.name} is downloaded after a login: get {', '.join(names)} from "
                      f"{t.raw.get('homepage', 'its homepage')} (agree to its license), then run getdataset.py "
                      f"{t.name} --from_dir FOLDER_HOLDING_THEM")


def local_files(t: registry.Table, specs: list[fetching.FileSpec], from_dir: str | None) -> dict[str, Path]:
    """The user's own downloads (--from_dir), by file name; an error that says where to download when one is
    missing."""
    where = t.raw.get("homepage", "its homepage")
    if from_dir is None:
        return {}
    d = Path(from_dir)
    if not d.is_dir():
        raise UsageError(f"--from_dir {d} is not a folder")
    missing = [s.name for s in specs if not (d / s.name).is_file()]
    if missing:
        found = sorted(p.name for p in d.iterdir() if p.is_file())[:10]
        raise UsageError(f"--from_dir {d} lacks {', '.join(missing)} (download from {where}); it holds: "
                         f"{', '.join(found) or 'no files'}")
    return {s.name: d / s.name for s in specs}


def get_one(t: registry.Table, store, args, done: set[str]) -> list[str]:
    """Download and store one dataset (and first the datasets it needs); the summary lines."""
    lines: list[str] = []
    for need in t.needs:
        if need not in done:
            lines += get_one(registry.table(need), store, args, done)
    done.add(t.name)
    if not t.files:
        return lines
    files = [n.strip() for n in args.files.split(",") if n.strip()] if args.files and t.name == args.name else None
    if t.login and args.from_dir is None:  # before the warnings about what cannot be verified
        raise needs_login(t, files or [f["name"] for f in t.files])
    specs = specs_for(t, files, args.base_url, args.checksums)
    local = local_files(t, specs, args.from_dir)
    prefix = layout.dataset(t.name)
    summary = download.Job.from_args(specs, store, prefix, args, local=local).run()
    lines += [f"{t.name} in {store.url_for(prefix)}", summary.line()]
    return lines


def run_script(name: str, argv: list[str]) -> int:
    """Another command (getcoco, getcityscapes, checkdataset, cocorecord) in this process."""
    return importlib.import_module(f"mllib.commands.{name}").main(argv)


def store_args(args) -> list[str]:
    out = ["--store", args.store] if args.store else []
    if args.endpoint_url:
        out += ["--endpoint_url", args.endpoint_url]
    if args.ca_bundle:
        out += ["--ca_bundle", args.ca_bundle]
    if args.no_verify_tls:
        out += ["--no_verify_tls"]
    return out


def run(args) -> int:
    if args.list or not args.name:
        if not args.list:
            raise UsageError("give a dataset name (--list shows them)")
        print(f"{'name':<13} {'download':>10}  {'access':<6}  {'images':<24}  license")
        for n in registry.names():
            print(list_line(registry.table(n)))
        return 0
    t = registry.table(args.name)
    if t.script:  # coco, cityscapes: their own scripts
        raise UsageError(f"{t.name} is downloaded by datasets/{t.script}")
    store = cli.open_store(args)
    if t.raw.get("needs_images"):
        coco = layout.dataset(t.raw["needs_images"])
        if not any(True for _ in store.list(f"{coco}/train2017/")) and not any(True for _ in store.list(f"{coco}/val2017/")):
            log.warning("%s reads the COCO images in %s, which holds none yet: run datasets/getcoco.py --files "
                        "train2017.zip,val2017.zip", t.name, store.url_for(coco))
    for line in get_one(t, store, args, set()):
        print(line)
    code = 0
    if args.check:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
        code = run_script("checkdataset", [t.name, *store_args(args), "--no_progress", "--log-level", args.log_level,
                                           "--report", str(work / f"checkdataset_{t.name}.json"),
                                           "--sheet", str(work / f"checkdataset_{t.name}.png")])
        if code:
            return code
    if args.convert:
        code = run_script("cocorecord", ["-trainingset_name", args.convert, "--dataset", t.name, *store_args(args),
                                         "--no_progress", "--log-level", args.log_level])
    return code


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("coco", "cityscapes"):  # the seed's scripts, with the arguments that follow
        return run_script(registry.table(argv[0]).script[:-3], argv[1:])
    return cli.main(parse_args, run, argv, "mllib-getdataset")


if __name__ == "__main__":
    sys.exit(main())
