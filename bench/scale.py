"""Benchmark: the whole pipeline at COCO size, from a mirror of the official zips to training samples.

    python3 bench/scale.py [--images 118287] [--val 5000] [--shared ../shared/data] [--jobs 2] [--workdir DIR]

Builds a COCO-shaped mirror of --images train and --val val images (the real images of ../shared/data/coco-real
under new ids and names, their annotations copied with them) as train2017.zip, val2017.zip and
annotations_trainval2017.zip, serves it on 127.0.0.1 (mllib.testing.mirror), starts SeaweedFS (volumes sized for
the set), and runs, each stage's input freed once it is done (disk: about three copies of the set at the peak):
  getcoco    datasets/getcoco.py into the S3 server; its whole-job estimates once extraction has started, against
             the time the job then took (goal: within 25%)
  cocorecord datasets/cocorecord.py --jobs 2 (the index built, cached, the shards written)
  records    one RecordsDataset epoch of the train set, 2 DataLoader workers, 512x512
  coco       one CocoDataset pass over train2017 from S3, 2 workers, 512x512 compact samples
and prints per stage: time, images/s, the peak memory of its process tree (RSS summed over the processes), and
checks: every image stored once, every record read once, labels of sampled records equal to those of the source
image rendered from the real annotations.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

from realcoco import DEFAULT_SHARED, require_sample

ROOT = Path(__file__).resolve().parents[1]


def build_mirror(real: Path, site: Path, n_train: int, n_val: int) -> dict[int, tuple[str, int]]:
    """The zips and checksums.tsv under site; returns {new image id: (split of the real image, real image id)}."""
    source = {}
    for split in ("train2017", "val2017"):
        d = json.loads((real / "annotations" / f"instances_{split}.json").read_text())
        anns: dict[int, list] = {}
        for a in d["annotations"]:
            anns.setdefault(a["image_id"], []).append(a)
        source[split] = (d, [im for im in d["images"] if (real / split / im["file_name"]).exists()], anns)
    pool = [(split, im) for split in ("train2017", "val2017") for im in source[split][1]]
    origin, jsons = {}, {}
    (site / "zips").mkdir(parents=True)
    (site / "annotations").mkdir(parents=True)
    next_ann = 1
    for split, n in (("train2017", n_train), ("val2017", n_val)):
        images, annotations = [], []
        with zipfile.ZipFile(site / "zips" / f"{split}.zip", "w", zipfile.ZIP_STORED) as z:
            for k in range(n):
                src_split, im = pool[k % len(pool)]
                new_id = (1 if split == "train2017" else 2) * 10**7 + k
                name = f"{new_id:012d}.jpg"
                z.write(real / src_split / im["file_name"], f"{split}/{name}")
                images.append(dict(im, id=new_id, file_name=name))
                for a in source[src_split][2].get(im["id"], []):
                    annotations.append(dict(a, id=next_ann, image_id=new_id))
                    next_ann += 1
                origin[new_id] = (src_split, im["id"])
        d = source["train2017"][0]
        jsons[split] = json.dumps(dict(d, images=images, annotations=annotations)).encode()
    with zipfile.ZipFile(site / "annotations" / "annotations_trainval2017.zip", "w", zipfile.ZIP_DEFLATED) as z:
        for split, blob in jsons.items():
            z.writestr(f"annotations/instances_{split}.json", blob)
    rows = ["url\tsize\tsha256\tmd5"]
    for rel in ("zips/train2017.zip", "zips/val2017.zip", "annotations/annotations_trainval2017.zip"):
        sha, md5 = hashlib.sha256(), hashlib.md5()
        with open(site / rel, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                sha.update(chunk)
                md5.update(chunk)
        rows.append(f"http://mirror/{rel}\t{(site / rel).stat().st_size}\t{sha.hexdigest()}\t{md5.hexdigest()}")
    (site / "checksums.tsv").write_text("\n".join(rows) + "\n")
    return origin


def tree_rss(pid: int) -> int:
    """Bytes of resident memory of a process and all its descendants."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            pass
        todo += kids.get(p, [])
    return total


def stage(cmd: list[str], env: dict, on_line=None) -> tuple[float, int, str]:
    """(seconds, peak RSS of the process tree, stderr) of a command; on_line(time, line) for each stderr line."""
    return stage_cpu(cmd, env, on_line)[:3]


def stage_cpu(cmd: list[str], env: dict, on_line=None) -> tuple[float, int, str, float]:
    """stage()'s figures and the CPU seconds (user + system) of the command and the processes it waited for."""
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    err: list[str] = []

    def read():
        for line in p.stderr:
            err.append(line)
            if on_line:
                on_line(time.perf_counter(), line)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    peak = 0
    while p.poll() is None:
        peak = max(peak, tree_rss(p.pid))
        time.sleep(0.5)
    t.join()
    out = p.stdout.read()
    seconds = time.perf_counter() - t0
    cpu = _children_cpu() - cpu0
    if p.returncode != 0:
        raise SystemExit(f"{cmd[1]} failed ({p.returncode}):\n{''.join(err)[-3000:]}\n{out[-2000:]}")
    return seconds, peak, "".join(err) + out, cpu


def _children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def seconds_of(text: str) -> float:
    return sum(int(v) * {"h": 3600, "m": 60, "s": 1}[u] for v, u in re.findall(r"(\d+)([hms])", text))


LOADER = r"""
import sys, time, torch
from mllib import store as mstore
from mllib.loaders.cocodataset import CocoDataset, worker_init_fn
from mllib.loaders.slots import SlotCollate
from mllib.records.read import RecordsDataset
s = mstore.connect(sys.argv[2])
if sys.argv[1] == "records":
    ds = RecordsDataset(s, "scale", "train", height=512, width=512, seed=0)
    kw = {}
else:
    ds = CocoDataset.from_store(s, split="train2017", height=512, width=512, seed=0, astype="uint8",
                                normalize="none", label_dtype="uint8")
    kw = {"shuffle": True}
dl = torch.utils.data.DataLoader(ds, batch_size=32, num_workers=2, collate_fn=SlotCollate(), prefetch_factor=4,
                                 worker_init_fn=worker_init_fn, **kw)
n = 0
for b in dl:
    n += len(b[0])
print(f"samples {n}")
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=118287)
    ap.add_argument("--val", type=int, default=5000)
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None, help="where the mirror, downloads and S3 data go")
    ap.add_argument("--check_labels", type=int, default=200, help="records whose labels are compared")
    ap.add_argument("--stop_after", choices=("getcoco", "cocorecord", "records"), default=None,
                    help="end the run after this stage")
    args = ap.parse_args()
    if not require_sample(args.shared):
        return 1
    from mllib import store as mstore
    from mllib.testing.seaweed import SeaweedS3, free_port

    tmp = Path(tempfile.mkdtemp(prefix="mllib-bench-scale-", dir=args.workdir))
    real = args.shared / "coco-real"
    n_all = args.images + args.val
    rows = []

    def report(name, seconds, peak, n, checks):
        rows.append((name, seconds, peak, n))
        print(f"{name:10s}: {seconds:8.1f} s, {n / seconds:7.1f} images/s, peak memory {peak / 1e9:5.2f} GB; {checks}",
              flush=True)

    try:
        t0 = time.perf_counter()
        origin = build_mirror(real, tmp / "site", args.images, args.val)
        size = sum(f.stat().st_size for f in (tmp / "site").rglob("*.zip"))
        print(f"mirror: {args.images:,} train + {args.val:,} val images, {size / 1e9:.1f} GB, built in "
              f"{time.perf_counter() - t0:.0f} s; {os.cpu_count()} cores", flush=True)
        port = free_port()
        mirror = subprocess.Popen([sys.executable, "-m", "mllib.testing.mirror", str(tmp / "site"), "--port",
                                   str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server = SeaweedS3(tmp / "weed", volume_size_mb=1024, volumes=max(50, int(3 * size / 1e9) + 20)).start()
        try:
            with server.environment():
                server.create_bucket("coco")
                env = dict(os.environ)
                url = "s3://coco"
                time.sleep(1.0)
                estimates, first_done = [], []

                def on_line(t, line):
                    if "estimate:" in line:
                        estimates.append((t, seconds_of(line.split("estimate:", 1)[1].split("left")[0])))
                    if "downloaded and verified" in line:
                        first_done.append(t)

                g0 = time.perf_counter()
                secs, peak, _ = stage([sys.executable, str(ROOT / "datasets" / "getcoco.py"), "--store", url,
                                       "--base_url", f"http://127.0.0.1:{port}", "--checksums",
                                       str(tmp / "site" / "checksums.tsv"), "--workdir", str(tmp / "dl"), "--files",
                                       "train2017.zip,val2017.zip,annotations_trainval2017.zip", "--no_progress"],
                                      env, on_line)
                end = g0 + secs
                s = mstore.connect(url)
                stored = {split: sum(1 for _ in s.list(f"datasets/coco/{split}/")) for split in ("train2017", "val2017")}
                start = min(first_done) if first_done else g0
                errors = [abs(est - (end - t)) / (end - t) for t, est in estimates if t > start + 60 and end - t > 60]
                est = (f"estimates once extracting: {len(errors)}, worst {100 * max(errors):.0f}% off (goal <= 25%)"
                       if errors else "no estimate a minute into extraction")
                report("getcoco", secs, peak, n_all, f"stored {stored['train2017']:,} + {stored['val2017']:,} "
                       f"images (want {args.images:,} + {args.val:,}); {est}")
                mirror.terminate()
                shutil.rmtree(tmp / "site")
                shutil.rmtree(tmp / "dl", ignore_errors=True)

                secs, peak, text = stage([sys.executable, str(ROOT / "datasets" / "cocorecord.py"),
                                          "-trainingset_name", "scale", "--store", url, "--jobs", str(args.jobs),
                                          "--no_progress"], env)
                from mllib.records import read as records

                desc = records.description(s, "scale")
                lengths = {k: v["length"] for k, v in desc["sets"].items()}
                report("cocorecord", secs, peak, n_all, f"records {lengths} (want train {args.images:,}, val "
                       f"{args.val:,}), {sum(len(v['skipped']) for v in desc['sets'].values())} skipped")
                print(f"            {text.strip().splitlines()[-1]}")
                if args.stop_after == "cocorecord":
                    return 0

                secs, peak, text = stage([sys.executable, "-c", LOADER, "records", url], env)
                report("records", secs, peak, args.images, text.strip().splitlines()[-1] + " (one epoch, want "
                       f"{args.images:,})")
                print(f"            labels: {check_labels(s, real, origin, args.check_labels)}", flush=True)

                secs, peak, text = stage([sys.executable, "-c", LOADER, "coco", url], env)
                report("coco", secs, peak, args.images, text.strip().splitlines()[-1] + " (one pass)")
        finally:
            server.stop()
            mirror.kill()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def check_labels(store, real: Path, origin: dict, n: int) -> str:
    """Sampled records' labels against the renderer's label of their source image from the real annotations."""
    import numpy as np

    from mllib.labels import classes
    from mllib.labels.cocoindex import CocoIndex
    from mllib.labels.render import Renderer
    from mllib.records import read as records

    r = Renderer(classes.load("coco"))
    idx = {sp: CocoIndex.from_json((real / "annotations" / f"instances_{sp}.json").read_bytes())
           for sp in ("train2017", "val2017")}
    keys = records.shard_keys(store, "scale", "train")
    seen = same = 0
    for key in keys[:: max(1, len(keys) // 10)]:
        for rec in records.iter_serialized(store, [key]):
            got = records.parse(rec)
            sp, rid = origin[int(got["source_id"])]
            want = r.render(idx[sp], idx[sp].row_of(rid))
            same += bool(np.array_equal(got["label"], want))
            seen += 1
            if seen >= n:
                return f"{same} of {seen} sampled records equal their source image's label"
    return f"{same} of {seen} sampled records equal their source image's label"


if __name__ == "__main__":
    sys.exit(main())
