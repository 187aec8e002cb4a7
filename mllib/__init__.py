"""mllib: public segmentation datasets into an object store, and from the store into training.

One sub-package per stage, in the order data flows (README "Development" draws it):

  get/        1 get      fetch.py (verified resumable downloads), extract.py (zips -> store, manifests),
                         download.py (the job: both overlapped), cityscapes.py (the site's login and packages)
  store/      2 store    base.py (the interface, ETags, put_dir / get_dir), local.py, s3.py, fastput.py,
                         atomic.py (atomic durable files), cli.py (python3 -m mllib.storecli)
  layout.py              every key the project writes: datasets/, .manifests/, trainingsets/, models/
  labels/     3 labels   classes.py (dictionaries), cocoindex.py (cached index), render.py, display.py
  images.py              headers, decoding with size limits, verification, uniform RGB, label PNGs
  records/    4 records  schema.py (feature names), tfrecord.py, sources.py + convert.py (cocorecord.py), read.py
  loaders/    5 loaders  augment.py (the single warp), cocodataset.py (CocoDataset), slots.py (SlotCollate),
                         gpu.py (BatchPrep, prefetch)
  training/   6 training train.py (TrainConfig, fit), data.py, unet.py, metrics.py, tfseg.py (segment/)
  testing/               seaweed.py (S3 server), mirror.py (download sites), latency.py (a slow endpoint)
  cli.py                 the scripts' shared flags and one-line errors
  checks.py              the values a setting may take (a flag's type, a library argument's check)
  perprocess.py          one value per process (boto3 client, HTTP pool, thread pool, batch slots)
"""

__version__ = "0.1.0"


class MllibError(Exception):
    """An error a user can act on: scripts print its message on one line and exit non-zero."""
