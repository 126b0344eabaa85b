import json

import pytest

from d2ssl.utils.metrics import metric_trajectory
from d2ssl.utils.report import format_report, pretraining_rows


def _write_run(folder, records, config_yaml=None):
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    if config_yaml:
        (folder / "config.yaml").write_text(config_yaml)


def test_report_shows_first_and_last_pretext_metric_against_chance(tmp_path):
    _write_run(tmp_path / "jigsaw", [{"iteration": 19, "jigsaw_accuracy": 0.1}, {"iteration": 39, "lr": 0.1},
                                     {"iteration": 59, "jigsaw_accuracy": 0.7}])
    pirl = [{"iteration": 19, "nce_top1_image": 0.0}, {"iteration": 39, "nce_top1_image": 0.25}]
    config = "model:\n  loss:\n    negative_sampling_params:\n      num_negatives: 3\n"
    _write_run(tmp_path / "pirl", pirl, config)
    _write_run(tmp_path / "detection_jigsaw", [{"iteration": 99, "bbox/AP": 12.34, "bbox/AP50": 40.0}])
    rows = {r[0]: r for r in pretraining_rows(str(tmp_path))}
    assert rows["jigsaw"][2:5] == ["0.100", "0.700", "0.042"]
    assert rows["pirl"][2:5] == ["0.000", "0.250", "0.250"]  # chance 1 / (3 + 1)
    text = format_report(str(tmp_path))
    assert "detection_jigsaw" in text and "12.3" in text and "40.0" in text


def test_missing_metric_is_named(tmp_path):
    _write_run(tmp_path / "run", [{"iteration": 19, "lr": 0.1}])
    with pytest.raises(KeyError, match="jigsaw_accuracy"):
        metric_trajectory(str(tmp_path / "run"), "jigsaw_accuracy")
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        metric_trajectory(str(tmp_path / "nothing"), "jigsaw_accuracy")


def test_report_pairs_each_pretrained_trunk_with_its_random_baseline(tmp_path):
    rotnet = [{"iteration": 19, "rotnet_accuracy": 0.3}, {"iteration": 39, "rotnet_accuracy": 0.8}]
    _write_run(tmp_path / "rotnet", rotnet)
    for name, linear, knn in (("rotnet", 84.0, 80.5), ("rotnet_random", 80.0, 77.0)):
        folder = tmp_path / "eval" / name
        folder.mkdir(parents=True)
        (folder / "linear_grid.json").write_text(json.dumps({"best": {"top1": linear}, "cells": []}))
        (folder / "knn_res4.json").write_text(json.dumps({"top1@20": knn, "top1@200": knn - 1}))
    _write_run(tmp_path / "detection_rotnet", [{"iteration": 99, "bbox/AP": 9.0, "bbox/AP50": 30.0}])
    _write_run(tmp_path / "detection_random", [{"iteration": 99, "bbox/AP": 7.5, "bbox/AP50": 20.0}])
    text = format_report(str(tmp_path))
    assert "84.0 vs 80.0 (+4.0)" in text
    assert "80.5 vs 77.0 (+3.5)" in text
    assert "9.0 vs 7.5 (+1.5)" in text
    assert "rotnet_accuracy 0.800 (chance 0.250)" in text
