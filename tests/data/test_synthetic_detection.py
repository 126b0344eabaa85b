"""The pasted detection sets: exact boxes and masks, both layouts read by detectron2 the same way, and
detectron2's evaluators giving full marks to the ground truth."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator
from detectron2.structures import Boxes, BoxMode, Instances
from pycocotools import mask as mask_util

from d2ssl.data.synthetic_detection import (
    make_pasted_detection_set,
    pasted_detection_set,
    register_pasted_detection_set,
)

SIZE = (96, 128)  # height, width


def make(root, seed: int, fmt: str = "coco", split: str = "train"):
    return make_pasted_detection_set(str(root), 6, fmt, seed, split, image_size=SIZE, classes=(1, 5, 8))


@pytest.fixture(scope="module")
def coco_set(tmp_path_factory):
    return make(tmp_path_factory.mktemp("coco"), seed=3)


def test_boxes_and_areas_are_those_of_the_masks(coco_set):
    with open(coco_set.json_file) as f:
        data = json.load(f)
    assert [c["name"] for c in data["categories"]] == ["trouser", "sandal", "bag"]
    assert data["annotations"], "no object was pasted"
    for ann in data["annotations"]:
        mask = mask_util.decode(ann["segmentation"]).astype(bool)
        assert mask.shape == SIZE
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert ann["area"] == mask.sum()
    for image in data["images"]:
        anns = [a for a in data["annotations"] if a["image_id"] == image["id"]]
        masks = [mask_util.decode(a["segmentation"]) for a in anns]
        assert not masks or np.sum(masks, axis=0).max() == 1  # objects never overlap: masks are exact


def test_same_seed_same_set_other_seed_other_set(tmp_path, coco_set):
    again, other = make(tmp_path / "a", seed=3), make(tmp_path / "b", seed=4)

    def content(ds):
        with open(ds.json_file) as f:
            annotations = json.load(f)["annotations"]
        with open(os.path.join(ds.image_root, "train_000000.jpg"), "rb") as f:
            return annotations, f.read()

    assert content(again) == content(coco_set)
    assert content(other) != content(coco_set)


def test_coco_and_voc_layouts_load_as_the_same_boxes(tmp_path, coco_set):
    voc = make(tmp_path / "voc", seed=3, fmt="voc", split="trainval")
    coco_dicts = DatasetCatalog.get(register_pasted_detection_set(f"coco_{tmp_path.name}", coco_set))
    voc_dicts = DatasetCatalog.get(register_pasted_detection_set(f"voc_{tmp_path.name}", voc))
    assert len(coco_dicts) == len(voc_dicts) == 6
    for c, v in zip(coco_dicts, voc_dicts):
        coco_boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in c["annotations"]]
        assert coco_boxes == [a["bbox"] for a in v["annotations"]]
        assert [a["category_id"] for a in c["annotations"]] == [a["category_id"] for a in v["annotations"]]


def _perfect_predictions(dicts):
    for d in dicts:
        instances = Instances((d["height"], d["width"]))
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in d["annotations"]]
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        instances.scores = torch.ones(len(boxes))
        instances.pred_classes = torch.tensor([a["category_id"] for a in d["annotations"]], dtype=torch.long)
        yield {"image_id": d["image_id"]}, {"instances": instances}


@pytest.mark.parametrize("fmt", ["coco", "voc"])
def test_detectron2_evaluators_score_the_ground_truth_100(tmp_path, fmt):
    # Also checks the VOC file conventions (1-based inclusive boxes) against detectron2's evaluator.
    name = pasted_detection_set(f"gt_{fmt}_{tmp_path.name}", str(tmp_path), 6, fmt, seed=5, split="test",
                                image_size=SIZE, classes=[1, 5, 8])
    evaluator = COCOEvaluator(name) if fmt == "coco" else PascalVOCDetectionEvaluator(name)
    evaluator.reset()
    for inputs, outputs in _perfect_predictions(DatasetCatalog.get(name)):
        evaluator.process([inputs], [outputs])
    results = evaluator.evaluate()["bbox"]
    assert results["AP50"] == pytest.approx(100.0) and results["AP75"] == pytest.approx(100.0)


def test_pasted_detection_set_is_made_once_and_names_are_checked(tmp_path):
    kwargs = dict(format="coco", seed=0, split="train", image_size=SIZE)
    name = pasted_detection_set(f"once_{tmp_path.name}", str(tmp_path), 3, **kwargs)
    annotations = os.path.join(tmp_path, "annotations", "instances_train.json")
    written = os.stat(annotations).st_mtime_ns
    assert pasted_detection_set(name, str(tmp_path), 3, **kwargs) == name
    assert os.stat(annotations).st_mtime_ns == written  # same parameters: not made again
    with pytest.raises(ValueError, match="already registered"):
        pasted_detection_set(name, str(tmp_path / "elsewhere"), 3, **kwargs)


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="format"):
        make_pasted_detection_set(str(tmp_path), 2, format="yolo")
    with pytest.raises(ValueError, match="at least 2"):
        make_pasted_detection_set(str(tmp_path), 1, format="voc")
