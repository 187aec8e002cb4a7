"""Where things live in the store: the one place that spells the keys the project writes and reads.

    datasets/<dataset>/...                        what getcoco.py / getcityscapes.py extracted (zip member paths)
    datasets/<dataset>/.manifests/<zip>.json      one per extracted zip, written last
    <cvat export>/labelmap.txt, JPEGImages/, SegmentationClass/, ImageSets/Segmentation/   a CVAT mask export
    trainingsets/<name>/description.json          a TFRecord training set (cocorecord.py), written last
    trainingsets/<name>/<set>-00000-of-00004.tfrecord
    trainingsets/<name>/.shards/<shard>.json      a written shard's stats (what a re-run skips)
    models/<model>/checkpoint.pt, metrics.jsonl   training (network2d.py)
    models/<model>/model.keras, training.json     training (segment/train.py)
    models/<model>/eval/<trainingset>-<set>.json  segment/test.py's results (one per model and set)
    runs/<model>/metrics.jsonl, config.json, ...  network2d's run record on local disk (a path, not a key)
    runs/<model>/eval/<set>/report.json, ...      networks/evaluate.py's and segment/test.py's reports
"""

from __future__ import annotations

DATASETS = "datasets"
TRAININGSETS = "trainingsets"
MODELS = "models"
MANIFESTS = ".manifests"
SHARD_STATS = ".shards"
RUNS = "runs"


def dataset(name: str) -> str:
    return f"{DATASETS}/{name}"


def manifests(name: str) -> str:
    return f"{dataset(name)}/{MANIFESTS}"


def manifest(name: str, zip_name: str) -> str:
    return f"{manifests(name)}/{zip_name}.json"


def coco_instances(name: str, split: str) -> str:
    return f"{dataset(name)}/annotations/instances_{split}.json"


def coco_stuff(name: str, split: str) -> str:
    return f"{dataset(name)}/annotations/stuff_{split}.json"


def coco_images(name: str, split: str) -> str:
    return f"{dataset(name)}/{split}"


def cvat_labelmap(root: str) -> str:
    return f"{root}/labelmap.txt"


def cvat_images(root: str) -> str:
    return f"{root}/JPEGImages"


def cvat_labels(root: str) -> str:
    return f"{root}/SegmentationClass"


def cvat_splits(root: str) -> str:
    return f"{root}/ImageSets/Segmentation"


def trainingset(name: str) -> str:
    return f"{TRAININGSETS}/{name}"


def description(name: str) -> str:
    return f"{trainingset(name)}/description.json"


def shard(name: str, shard_name: str) -> str:
    return f"{trainingset(name)}/{shard_name}"


def shard_stats(name: str, shard_name: str) -> str:
    return f"{trainingset(name)}/{SHARD_STATS}/{shard_name}.json"


def is_own_shard_key(rel: str) -> bool:
    """Whether a key relative to trainingsets/<name>/ is at the set's own level (a shard or its stats), not in a
    set nested below it (<name>/small/...)."""
    return "/" not in rel or (rel.startswith(SHARD_STATS + "/") and rel.count("/") == 1)


def model(name: str) -> str:
    return f"{MODELS}/{name}"


def checkpoint(name: str) -> str:
    return f"{model(name)}/checkpoint.pt"


def model_metrics(name: str) -> str:
    return f"{model(name)}/metrics.jsonl"


def model_eval(name: str, set_name: str) -> str:
    """A model's evaluation result on one set (segment/test.py), beside the model: one file per model and set."""
    return f"{model(name)}/eval/{set_name}.json"


KERAS_MODEL = "model.keras"


def keras_model(name: str) -> str:
    return f"{model(name)}/{KERAS_MODEL}"


def keras_training(name: str) -> str:
    return f"{model(name)}/training.json"


def run_metrics(name: str) -> str:
    """network2d's local metrics file for a model (a path relative to the working directory)."""
    return f"{RUNS}/{name}/metrics.jsonl"
