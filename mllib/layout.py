"""Where things live in the store: the one place that spells the keys the project writes and reads.

    datasets/<dataset>/...                        what getcoco.py / getcityscapes.py extracted (zip member paths)
    datasets/<dataset>/.manifests/<zip>.json      one per extracted zip, written last
    trainingsets/<name>/description.json          a TFRecord training set (cocorecord.py), written last
    trainingsets/<name>/<set>-00000-of-00004.tfrecord
    models/<model>/checkpoint.pt, metrics.jsonl   training (network2d.py)
"""

from __future__ import annotations

DATASETS = "datasets"
TRAININGSETS = "trainingsets"
MODELS = "models"
MANIFESTS = ".manifests"


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


def trainingset(name: str) -> str:
    return f"{TRAININGSETS}/{name}"


def description(name: str) -> str:
    return f"{trainingset(name)}/description.json"


def model(name: str) -> str:
    return f"{MODELS}/{name}"


def checkpoint(name: str) -> str:
    return f"{model(name)}/checkpoint.pt"


def model_metrics(name: str) -> str:
    return f"{model(name)}/metrics.jsonl"
