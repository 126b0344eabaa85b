"""Optuna sweeps on cached features: trials run, a second invocation continues the study, reports."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from d2ssl.data.mappers.classification import ClassificationMapper
from d2ssl.evaluation.features import extract_features
from d2ssl.evaluation.sweep import (
    cached_features_objective,
    linear_benchmark_objective,
    parse_param,
    run_sweep,
)
from d2ssl.modeling.backbone import build_resnet_trunk


@pytest.fixture(scope="module")
def features_dir(tmp_path_factory, fashion_mnist_train):
    out = str(tmp_path_factory.mktemp("features"))
    torch.manual_seed(0)
    trunk = build_resnet_trunk(depth=18, base_channels=8)
    mapper = ClassificationMapper(train=False, resize_size=32, crop_size=32)
    extract_features(trunk, fashion_mnist_train[:300], mapper, out, split="train")
    extract_features(trunk, fashion_mnist_train[300:450], mapper, out, split="test")
    return out


def test_parse_param():
    assert parse_param("lr=1e-3:10:log").log and parse_param("lr=1e-3:10:log").grid(3) == [0.001, 0.1, 10.0]
    assert parse_param("batch_size=32,64").choices == (32, 64)
    assert parse_param("weight_decay=0:1e-3").grid(2) == [0.0, 0.001]
    for bad in ("lr", "lr=10:1", "lr=0:1:log", "lr=1:2:ln"):
        with pytest.raises(ValueError, match="search parameter"):
            parse_param(bad)


def test_sweep_continues_the_same_study(tmp_path, features_dir):
    objective = cached_features_objective(features_dir, epochs=3)
    params = [parse_param(p) for p in ("lr=1e-2:1:log", "batch_size=32,64", "weight_decay=1e-6:1e-3:log")]
    out = str(tmp_path / "sweep")
    study = run_sweep(objective, params, out, n_trials=3, sampler="tpe", seed=0)
    assert len(study.trials) == 3
    first_values = [t.value for t in study.trials]
    again = run_sweep(objective, params, out, n_trials=5, sampler="tpe", seed=0)
    assert len(again.trials) == 5 and [t.value for t in again.trials[:3]] == first_values
    rows = list(csv.DictReader((tmp_path / "sweep" / "trials.csv").open()))
    assert [int(r["number"]) for r in rows] == [0, 1, 2, 3, 4]
    assert all(10.0 < float(r["value"]) <= 100.0 for r in rows)  # learned something (chance: 10%)
    report = json.loads((tmp_path / "sweep" / "trials.json").read_text())
    assert report["best"]["value"] == max(float(r["value"]) for r in rows)
    assert (tmp_path / "sweep" / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    # Already 5 finished: asking for 5 again runs nothing.
    assert len(run_sweep(objective, params, out, n_trials=5, sampler="tpe").trials) == 5


def test_grid_sampler_covers_the_grid(tmp_path, features_dir):
    objective = cached_features_objective(features_dir, epochs=1)
    params = [parse_param("lr=1e-2:1:log"), parse_param("batch_size=32,64")]
    study = run_sweep(objective, params, str(tmp_path), n_trials=100, sampler="grid", grid_points=2)
    assert sorted((t.params["lr"], t.params["batch_size"]) for t in study.trials) == [
        (0.01, 32), (0.01, 64), (1.0, 32), (1.0, 64)]
    with pytest.raises(ValueError, match="sweeps"):
        objective({"momentum": 0.9, "dropout": 0.1}, "trial_0000")


def test_full_linear_benchmark_trials(tmp_path):
    config = str(Path(__file__).resolve().parents[2] / "configs" / "eval" / "tiny" / "linear.py")
    overrides = ["train.max_iter=2", "train.eval_period=2", "dataloader.train.dataset.limit=64",
                 "dataloader.test.dataset.limit=20", "dataloader.train.total_batch_size=8"]
    objective = linear_benchmark_objective(config, overrides, str(tmp_path))
    study = run_sweep(objective, [parse_param("optimizer.lr=1e-3:1e-1:log")], str(tmp_path), n_trials=1,
                      sampler="random")
    assert len(study.trials) == 1 and 0.0 <= study.trials[0].value <= 100.0
    assert (tmp_path / "trial_0000" / "last_checkpoint").exists()  # the trial ran in its own folder
    with pytest.raises(KeyError, match="optimizer.lrr"):
        objective({"optimizer.lrr": 0.1}, "trial_0009")
