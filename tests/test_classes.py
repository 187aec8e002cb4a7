"""Class dictionaries: coco.json against the official COCO-stuff list, lookup tables, validation errors."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from mllib.labels import classes
from mllib.labels.classes import ClassDictionaryError

from .conftest import shared_path

PERSON, VEHICLE, ANIMAL = {1}, set(range(2, 10)), set(range(16, 26))


def test_coco_has_every_cocostuff_id_with_lut():
    d = classes.load("coco")
    assert (d.background, d.ignore, d.classes) == (0, 255, 4)
    assert [o.id for o in d.objects] == list(range(183))
    for o in d.objects:
        want = 1 if o.id in PERSON else 2 if o.id in VEHICLE else 3 if o.id in ANIMAL else 0
        assert o.trainId == want, o
        assert d.lut[o.id] == want
    assert d.lut[183] == 255 and d.lut[255] == 255  # unknown ids are ignored, never "void"
    assert d.names == ["void", "person", "vehicle", "animal"]
    names = [o.name for o in d.objects]
    assert len(set(names)) == len(names), "names must be unique (the seed had 'baseball' twice)"


def test_coco_names_match_official_list():
    path = shared_path("cocostuff-labels.txt")
    official = {}
    for line in path.read_text().splitlines():
        i, name = line.split(": ", 1)
        official[int(i)] = name
    d = classes.load("coco")
    assert {o.id: o.name for o in d.objects} == official


def test_known_official_names():
    by = classes.load("coco").by_id()
    assert by[10].name == "traffic light" and by[39].name == "baseball bat" and by[40].name == "baseball glove"
    assert by[182].name == "wood" and by[0].name == "unlabeled"


def test_cityscapes_dictionaries():
    cs = classes.load("cityscapes")
    assert cs.classes == 19
    assert cs.lut[7] == 0 and cs.lut[26] == 13 and cs.lut[33] == 18 and cs.lut[0] == 255 and cs.lut[29] == 255
    assert sorted(set(cs.lut[:34].tolist()) - {255}) == list(range(19))
    assert cs.names[0] == "road" and cs.names[18] == "bicycle"
    assert tuple(cs.colors[0]) == (128, 64, 128)
    cc = classes.load("cityscapes_coco")
    assert cc.classes == 4 and cc.names == classes.load("coco").names
    assert cc.lut[24] == cc.lut[25] == 1  # person, rider
    assert all(cc.lut[i] == 2 for i in (26, 27, 28, 29, 30, 31, 32, 33))
    assert all(cc.lut[i] == 0 for i in (0, 1, 2, 3, 7, 11, 23))


def test_cityscapes_lut_matches_real_train_ids():
    from PIL import Image

    ids = np.array(Image.open(shared_path("cityscapes-real/gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png")))
    train = np.array(Image.open(shared_path(
        "cityscapes-real/gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelTrainIds.png")))
    agree = (classes.load("cityscapes").lut[ids] == train).mean()
    assert agree > 0.99  # the sample is downscaled; a few resize artefacts differ (SOURCES.md)


def test_remap_colorize_overlay():
    d = classes.load("coco")
    ids = np.array([[0, 1, 3], [17, 183, 200]], dtype=np.uint8)
    label = d.remap(ids)
    assert label.tolist() == [[0, 1, 2], [3, 255, 255]]
    rgb = d.colorize(label)
    assert rgb.shape == (2, 3, 3) and tuple(rgb[0, 1]) == (0, 255, 0) and tuple(rgb[1, 2]) == (255, 255, 255)
    img = np.full((2, 3, 3), 100, np.uint8)
    ov = d.overlay(img, label, alpha=0.5)
    assert tuple(ov[0, 0]) == (100, 100, 100)  # background untouched
    assert tuple(ov[0, 1]) == (50, 178, 50)


def _broken(mutate):
    data = json.loads(json.dumps(classes.load("coco").to_dict()))
    mutate(data)
    return data


@pytest.mark.parametrize(
    "mutate,expect",
    [
        (lambda d: d["objects"][5].update(id=4), "duplicate id 4"),
        (lambda d: d["objects"][7].update(trainId=9), "'train'"),
        (lambda d: d["objects"][3].update(color=[1, 2]), "'car'"),
        (lambda d: d["objects"][3].update(color=[1, 2, 300]), "color"),
        (lambda d: d.pop("classes"), "classes"),
        (lambda d: d["objects"][2].pop("trainId"), "'bicycle'"),
    ],
)
def test_broken_dictionary_names_entry(mutate, expect):
    with pytest.raises(ClassDictionaryError) as e:
        classes.load(_broken(mutate))
    assert expect in str(e.value)


def test_load_by_path_and_unknown_name(tmp_path):
    p = tmp_path / "mine.json"
    p.write_text(json.dumps(copy.deepcopy(classes.load("coco").to_dict())))
    assert classes.load(p).classes == 4
    with pytest.raises(ClassDictionaryError) as e:
        classes.load("nope")
    assert "coco" in str(e.value)
    assert {"coco", "cityscapes", "cityscapes_coco"} <= set(classes.available())
