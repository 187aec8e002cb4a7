"""Benchmark: an ADE20K-sized dataset through getdataset.py and cocorecord.py, against COCO's conversion of the same
images, and peak memory at two sizes.

    python3 bench/ade.py [--train 20210] [--val 2000] [--small 0.1] [--shared ../shared/data] [--jobs 2]
                         [--placement shared,own] [--rounds 1]

Builds, from the real images of ../shared/data/coco-real under new names, an ADEChallengeData2016.zip in ADE20K's
layout (labels: index PNGs 0..150 drawn from each image's real COCO annotations, category id -> 1..150, written
as Pillow writes a PNG by default (adaptive row filters, zlib level 6; OpenCV's default, Z_RLE at level 1, makes
PNGs that take twice as long to decode: 1.0 vs 0.56 ms for these 640x480 labels) and, of the same images, a COCO mirror (bench/scale.py's); serves both on 127.0.0.1, starts SeaweedFS, and runs:
  getdataset ade20k    download, verify, extract (datasets/getdataset.py --base_url --checksums)
  ade cocorecord       cocorecord.py --dataset ade20k --jobs 2, at --small of the size and at the full size
  coco cocorecord      getcoco.py then cocorecord.py --jobs 2 of the same images as COCO (JSON rendered)
and prints per stage time, images/s, the client CPU per image (the command and the processes it waited for) and
the peak memory of its process tree, then the goals: ADE20K's conversion per image no slower than COCO's (ratio >=
1.0, of the medians of --rounds conversions each, in alternating order), and peak memory flat with size (full /
small <= 1.25). The full-size conversions run per --placement: SeaweedFS sharing the converters' CPUs, and on a CPU
of its own (ADE20K reads two objects per image, COCO one: on shared CPUs the server's work for each GET is the
converters').
Before each conversion the page cache is dropped (as root), so both read SeaweedFS's volumes from disk: the data
here (about 18 GB with the zips) does not all fit in memory, and otherwise the dataset written last (COCO) is read
from memory and ADE20K's from disk.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from realcoco import DEFAULT_SHARED, cold_cache, require_sample, store_cpu
from scale import ROOT, build_mirror, stage_cpu


def ade_labels(real: Path) -> dict[str, bytes]:
    """Per real image (file name): an ADE20K-style index PNG from its COCO annotations (0 where none)."""
    from PIL import Image
    from pycocotools.coco import COCO

    out = {}
    for split in ("train2017", "val2017"):
        coco = COCO(str(real / "annotations" / f"instances_{split}.json"))
        for img_id, im in coco.imgs.items():
            if not (real / split / im["file_name"]).exists():
                continue
            ids = np.zeros((im["height"], im["width"]), np.uint8)
            for a in coco.loadAnns(coco.getAnnIds(imgIds=img_id)):
                ids[coco.annToMask(a) > 0] = a["category_id"] % 150 + 1
            buf = io.BytesIO()  # as Pillow writes a PNG by default: adaptive row filters, zlib level 6
            Image.fromarray(ids).save(buf, format="PNG")
            out[f"{split}/{im['file_name']}"] = buf.getvalue()
    return out


def build_ade(real: Path, site: Path, n_train: int, n_val: int) -> int:
    labels = ade_labels(real)
    pool = sorted(labels)
    root = "ADEChallengeData2016"
    path = site / "ADEChallengeData2016.zip"
    site.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{root}/objectInfo150.txt", "Idx\tRatio\tTrain\tVal\tName\n")
        for split, prefix, n in (("training", "ADE_train", n_train), ("validation", "ADE_val", n_val)):
            for k in range(n):
                src = pool[k % len(pool)]
                stem = f"{prefix}_{k + 1:08d}"
                z.writestr(f"{root}/images/{split}/{stem}.jpg", (real / src).read_bytes())
                z.writestr(f"{root}/annotations/{split}/{stem}.png", labels[src])
    b = path.read_bytes()
    (site / "checksums.tsv").write_text(f"url\tsize\tsha256\tmd5\nhttp://m/{path.name}\t{len(b)}\t"
                                        f"{hashlib.sha256(b).hexdigest()}\t{hashlib.md5(b).hexdigest()}\n")
    return len(b)


def serve(site: Path):
    from mllib.testing.seaweed import free_port

    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "mllib.testing.mirror", str(site), "--port", str(port)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    return p, f"http://127.0.0.1:{port}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=20210)
    ap.add_argument("--val", type=int, default=2000)
    ap.add_argument("--small", type=float, default=0.1, help="the small run's fraction of the size")
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1,
                    help="full-size conversions of each dataset per placement, in alternating order; the ratio is of "
                         "the medians (one conversion of 22,210 images swings by 10%% from run to run here)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--placement", default="shared,own",
                    help="where SeaweedFS runs during the full-size conversions: shared (the converters' CPUs), own "
                         "(a CPU of its own, the converters on the others, as a store on machines of its own), or "
                         "both in turn")
    args = ap.parse_args()
    if not require_sample(args.shared):
        return 1
    from mllib.testing.seaweed import SeaweedS3

    real = args.shared / "coco-real"
    tmp = Path(tempfile.mkdtemp(prefix="mllib-bench-ade-", dir=args.workdir))
    n_all = args.train + args.val
    small = (max(1, int(args.train * args.small)), max(1, int(args.val * args.small)))
    rows = {}

    def report(name, n, seconds, peak, text, cpu, extra=""):
        """One stage's line: time, images/s, peak memory and client CPU per image (stage_cpu()'s figures)."""
        rows[name] = (seconds, peak, n)
        print(f"{name:22s}: {seconds:7.1f} s, {n / seconds:7.1f} images/s, peak memory {peak / 1e9:5.2f} GB, "
              f"client CPU {1e3 * cpu / n:5.2f} ms/image {extra}", flush=True)

    def rate(name):
        seconds, _, n = rows[name]
        return n / seconds

    server = SeaweedS3(tmp / "weed", volume_size_mb=1024, volumes=40).start()
    placements = args.placement.split(",")

    def convert(label, cmd, n):
        cold = cold_cache()  # each conversion reads the store from disk: not the dataset written last from memory
        got = stage_cpu(cmd, env)
        note = got[2].strip().splitlines()[-1][:90] + ("" if cold else " (page cache not dropped: not root)")
        report(label, n, *got, note)
        drop(cmd)

    def drop(cmd):
        """Delete the training set a full-size conversion wrote (3.5 GB each): the server's volumes hold the data
        and one of them, whatever --rounds is."""
        from mllib import layout
        from mllib import store as mstore

        bucket, name = cmd[cmd.index("--store") + 1], cmd[cmd.index("-trainingset_name") + 1]
        if bucket == "s3://small":
            return
        st = mstore.connect(bucket)
        keys = [info.key for info in st.list(layout.trainingset(name) + "/")]
        for key in keys:
            st.delete(key)
        print(f"  {len(keys)} objects of {bucket}/{layout.trainingset(name)} deleted", flush=True)

    try:
        with server.environment():
            env = dict(os.environ)
            for bucket, (nt, nv) in (("small", small), ("full", (args.train, args.val))):
                server.create_bucket(bucket)
                site = tmp / f"ade-{bucket}"
                size = build_ade(real, site, nt, nv)
                print(f"{bucket}: ADEChallengeData2016.zip of {nt:,} + {nv:,} images, {size / 1e9:.2f} GB; "
                      f"{os.cpu_count()} cores", flush=True)
                mirror, url = serve(site)
                try:
                    report(f"getdataset ade20k {bucket}", nt + nv, *stage_cpu(
                        [sys.executable, str(ROOT / "datasets" / "getdataset.py"), "ade20k", "--store", f"s3://{bucket}",
                         "--base_url", url, "--checksums", str(site / "checksums.tsv"), "--workdir", str(tmp / "dl"),
                         "--no_progress"], env))
                finally:
                    mirror.kill()
                if bucket == "small":
                    convert("ade cocorecord small", ade_cmd("small", "ade", args.jobs), nt + nv)

            server.create_bucket("coco")
            build_mirror(real, tmp / "coco-site", args.train, args.val)
            mirror, url = serve(tmp / "coco-site")
            try:
                report("getcoco (same images)", n_all, *stage_cpu(
                    [sys.executable, str(ROOT / "datasets" / "getcoco.py"), "--store", "s3://coco", "--base_url", url,
                     "--checksums", str(tmp / "coco-site" / "checksums.tsv"), "--workdir", str(tmp / "dl"), "--files",
                     "train2017.zip,val2017.zip,annotations_trainval2017.zip", "--no_progress"], env))
            finally:
                mirror.kill()
            turn = 0
            for placement in placements:  # the order alternates: a drift favours neither side
                with store_cpu(server, placement) as where:
                    print(f"placement {placement}: {where}", flush=True)
                    for r in range(args.rounds):
                        runs = [("ade", ade_cmd("full", f"ade-{placement}-{r}", args.jobs)),
                                ("coco", [sys.executable, str(ROOT / "datasets" / "cocorecord.py"), "-trainingset_name",
                                          f"coco-{placement}-{r}", "--store", "s3://coco", "--jobs", str(args.jobs),
                                          "--no_progress"])]
                        for kind, cmd in (runs if turn % 2 == 0 else runs[::-1]):
                            convert(f"{kind} cocorecord {placement} {r}", cmd, n_all)
                        turn += 1
    finally:
        server.stop()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    for placement in placements:
        rates = {kind: [rate(f"{kind} cocorecord {placement} {r}") for r in range(args.rounds)]
                 for kind in ("ade", "coco")}
        med = {kind: float(np.median(v)) for kind, v in rates.items()}
        each = "" if args.rounds == 1 else (" (medians of " + ", ".join(
            f"{kind} " + " / ".join(f"{v:.1f}" for v in vs) for kind, vs in rates.items()) + ")")
        print(f"[{placement}] ADE20K conversion per image vs COCO's, {n_all:,} images: {med['ade']:.1f} vs "
              f"{med['coco']:.1f} images/s = {med['ade'] / med['coco']:.2f}x{each} (goal >= 1.0)")
    ade, sm = rows[f"ade cocorecord {placements[0]} 0"], rows["ade cocorecord small"]
    print(f"ADE20K conversion peak memory, {n_all:,} vs {sum(small):,} images: {ade[1] / 1e9:.2f} vs "
          f"{sm[1] / 1e9:.2f} GB, {ade[1] / sm[1]:.2f}x (goal <= 1.25: flat with size)")
    return 0


def ade_cmd(bucket: str, name: str, jobs: int) -> list[str]:
    return [sys.executable, str(ROOT / "datasets" / "cocorecord.py"), "-trainingset_name", name, "--dataset",
            "ade20k", "--store", f"s3://{bucket}", "--jobs", str(jobs), "--no_progress"]


if __name__ == "__main__":
    sys.exit(main())
