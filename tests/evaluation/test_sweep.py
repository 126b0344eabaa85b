"""Optuna sweeps on cached features: trials run, a second invocation continues the study, reports."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import optuna
import pytest
import torch

from d2ssl.data.mappers.classification import ClassificationMapper
from d2ssl.data.splits import holdout_indices
from d2ssl.evaluation.features import extract_features, load_features
from d2ssl.evaluation.linear_grid import train_linear_grid
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
    # The selected trial learned something (chance: 10%; measured 26.7 on the 30 held-out rows, 3 epochs);
    # a trial whose lr diverges may sit at chance.
    assert all(0.0 <= float(r[k]) <= 100.0 for r in rows for k in ("val_top1", "test_top1"))
    assert max(float(r["val_top1"]) for r in rows) > 20.0
    report = json.loads((tmp_path / "sweep" / "trials.json").read_text())
    assert report["selected"]["val_top1"] == max(float(r["val_top1"]) for r in rows)
    chosen = next(r for r in rows if int(r["number"]) == report["selected"]["number"])
    assert report["selected"]["test_top1"] == float(chosen["test_top1"])
    assert report["scored_on"] == "test" and "of every class of 'train'" in report["selected_on"]
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
    # 64 training photos: 10 % per class would leave some classes without a validation image.
    objective = linear_benchmark_objective(config, overrides, str(tmp_path), val_fraction=0.3)
    study = run_sweep(objective, [parse_param("optimizer.lr=1e-3:1e-1:log")], str(tmp_path), n_trials=1,
                      sampler="random")
    assert len(study.trials) == 1 and 0.0 <= study.trials[0].value <= 100.0
    assert (tmp_path / "trial_0000" / "last_checkpoint").exists()  # the trial ran in its own folder
    # The config has no validation split: the trial held out 30 % of its training data and was compared on it.
    summary = json.loads((tmp_path / "trial_0000" / "summary.json").read_text())
    assert summary["selected_on"].startswith("val: 0.3 of every class") and summary["scored_on"] == "test"
    assert study.trials[0].value == round(summary["val/top1"], 4)
    assert study.trials[0].user_attrs["test_top1"] == round(summary["top1"], 4)
    with pytest.raises(KeyError, match="optimizer.lrr"):
        objective({"optimizer.lrr": 0.1}, "trial_0009")


def test_trials_are_compared_on_rows_held_out_of_train_not_on_test(features_dir):
    objective = cached_features_objective(features_dir, epochs=1, val_fraction=0.2, val_seed=0)
    scores = objective({"lr": 0.1}, "trial_0000")
    train = load_features(features_dir, "train", ("res5",))
    fit, val = holdout_indices(train.labels, 0.2, seed=0)
    # What Optuna maximises is the top-1 on the held-out rows of the same classifier, not on the test split.
    result = train_linear_grid(train.subset(fit), train.subset(val), lrs=(0.1,), weight_decays=(0.0,),
                               epochs=1, batch_size=256, test=load_features(features_dir, "test", ("res5",)))
    assert scores == {"val_top1": result.cells[0]["val_top1"], "test_top1": result.cells[0]["test_top1"]}
    with pytest.raises(ValueError, match="optimistic"):
        cached_features_objective(features_dir, val_split="test")


def test_a_study_is_not_continued_for_other_features_or_another_search_space(tmp_path, features_dir,
                                                                             fashion_mnist_train):
    other = str(tmp_path / "other_features")
    torch.manual_seed(1)  # another trunk: other weights, same data
    trunk = build_resnet_trunk(depth=18, base_channels=8)
    mapper = ClassificationMapper(train=False, resize_size=32, crop_size=32)
    extract_features(trunk, fashion_mnist_train[:300], mapper, other, split="train", checkpoint="other")
    extract_features(trunk, fashion_mnist_train[300:450], mapper, other, split="test", checkpoint="other")
    params = [parse_param("lr=0.01,0.1")]
    out = str(tmp_path / "sweep")
    first = run_sweep(cached_features_objective(features_dir, epochs=1), params, out, n_trials=1,
                      sampler="grid")
    assert len(first.trials) == 1
    with pytest.raises(ValueError, match="meta_sha256.train") as error:
        run_sweep(cached_features_objective(other, epochs=1), params, out, n_trials=2, sampler="grid")
    assert "--study-name" in str(error.value) and "--output-dir" in str(error.value)
    with pytest.raises(ValueError, match="search_space"):
        run_sweep(cached_features_objective(features_dir, epochs=1), [parse_param("lr=0.5,1.0")], out,
                  n_trials=2, sampler="grid")
    with pytest.raises(ValueError, match="validation"):
        run_sweep(cached_features_objective(features_dir, epochs=1, val_fraction=0.3), params, out,
                  n_trials=2, sampler="grid")
    # Another study name in the same file is another study: it runs.
    assert len(run_sweep(cached_features_objective(other, epochs=1), params, out, n_trials=1, sampler="grid",
                         study_name="other").trials) == 1


def test_a_study_without_a_record_of_what_it_evaluated_is_not_continued(tmp_path, features_dir):
    # A study an older d2ssl made: trials, but nothing saying which features they were measured on.
    out = tmp_path / "sweep"
    out.mkdir()
    old = optuna.create_study(storage=f"sqlite:///{out / 'sweep.db'}", study_name="sweep",
                              direction="maximize")
    choices = optuna.distributions.CategoricalDistribution([0.01, 0.1])
    old.add_trial(optuna.trial.create_trial(params={"lr": 0.1}, value=99.0, distributions={"lr": choices}))
    with pytest.raises(ValueError, match="no record of what they evaluated"):
        run_sweep(cached_features_objective(features_dir, epochs=1), [parse_param("lr=0.01,0.1")], str(out),
                  n_trials=2, sampler="grid")
