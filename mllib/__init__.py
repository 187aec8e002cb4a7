"""mllib: public segmentation datasets into an object store, and from the store into training.

Modules:
  store        one object-store API over S3 (boto3) and local directories
  classes      class dictionaries (mllib/datasets/*.json): id -> trainId lookup, names, colors
  cli          flags and error handling shared by the scripts under datasets/, networks/ and segment/
  download     verified resumable downloads, zips streamed into the store (getcoco.py, getcityscapes.py)
  cityscapes   the Cityscapes site: credentials, login, packages
  cocoindex    compact, cached index of a COCO annotation file
  labels       the label renderer (trainIds from annotations, exactly pycocotools' masks)
  images       image headers, decoding without EXIF rotation, uniform RGB, label PNGs
  tfrecord     TFRecord framing and tf.train.Example encoding without TensorFlow
  trainingset  COCO / Cityscapes in the store -> sharded TFRecord training set (cocorecord.py)
  records      reading a training set: tf.data and a PyTorch IterableDataset
  cocodataset  CocoDataset / CocoStore: PyTorch Dataset over COCO in the store, with augmentation
  display      overlays and contact sheets
  metrics      confusion matrix, IoU, mIoU
  unet, train  a compact PyTorch UNet and its training loop (networks/network2d.py)
  tfseg        a Keras UNet trained and tested from the TFRecord set (segment/)
  seaweed      a local SeaweedFS S3 server for tests, benchmarks and trying things out
  mirror       a local HTTP mirror of download sites (Range, fault injection, Cityscapes emulation)
  storecli     python3 -m mllib.storecli: ls / put_dir / get_dir from the shell
"""

__version__ = "0.1.0"


class MllibError(Exception):
    """An error a user can act on: scripts print its message on one line and exit non-zero."""
