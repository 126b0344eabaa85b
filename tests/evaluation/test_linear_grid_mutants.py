"""Linear-grid details that benchmarks/mutation.py found untested (mutants of
d2ssl/evaluation/linear_grid.py that survived the other tests): the reference recipe's defaults, the
bounds of epochs and batch size, the class count, ties in the selection, the report's text, the
refusals of selection_splits. Expected values are written by hand from the documented rule."""

from __future__ import annotations

import inspect
import json
import time

import numpy as np
import pytest
import torch

from d2ssl.evaluation import linear_grid
from d2ssl.evaluation.features import FeatureSet, _layer_path, _paths
from d2ssl.evaluation.linear_grid import (
    LinearGridResult,
    format_grid_table,
    format_selection,
    initial_classifier,
    linear_grid_on_cached_features,
    lr_factor,
    selection_splits,
    train_linear_grid,
)


def test_defaults_are_moco_main_lincls_recipe_and_its_grid():
    defaults = {k: p.default for k, p in inspect.signature(train_linear_grid).parameters.items()
                if p.default is not inspect.Parameter.empty}
    assert defaults == {"layer": "res5", "lrs": (0.01, 0.1, 1.0, 10.0),
                        "weight_decays": (0.0, 1e-5, 1e-4, 1e-3), "standardize": (False,), "epochs": 100,
                        "batch_size": 256, "momentum": 0.9, "schedule": "cosine", "milestones": (60, 80),
                        "gamma": 0.1, "seed": 0, "device": "cpu", "test": None, "selection": None}
    split_defaults = {k: p.default for k, p in inspect.signature(selection_splits).parameters.items()
                      if p.default is not inspect.Parameter.empty}
    assert split_defaults == {"layer": "res5", "train_split": "train", "test_split": "test",
                              "val_split": None, "val_fraction": 0.1, "val_seed": 0}
    cached = inspect.signature(linear_grid_on_cached_features).parameters.items()
    cached_defaults = {k: p.default for k, p in cached if p.default is not inspect.Parameter.empty}
    assert cached_defaults == {"train_split": "train", "test_split": "test", "layer": "res5",
                               "output_dir": None, "val_split": None, "val_fraction": 0.1, "val_seed": 0}


def test_lr_factor_by_hand():
    assert lr_factor("cosine", 0, 10) == 1.0
    assert lr_factor("cosine", 5, 10) == pytest.approx(0.5, abs=1e-15)
    assert lr_factor("step", 59, 100, (60, 80)) == 1.0
    assert lr_factor("step", 60, 100, (60, 80)) == pytest.approx(0.1, abs=1e-15)
    assert lr_factor("step", 80, 100, (60, 80)) == pytest.approx(0.01, abs=1e-15)
    assert lr_factor("step", 80, 100, (60, 80), gamma=0.5) == 0.25
    assert lr_factor("step", 99, 100) == 1.0  # no milestones: constant
    assert lr_factor("constant", 7, 10) == 1.0
    with pytest.raises(ValueError, match=r"one of \('cosine', 'step', 'constant'\), got 'linear'"):
        lr_factor("linear", 0, 10)


def test_initial_classifier_is_normal_001_from_the_seed_and_a_zero_bias():
    w, b = initial_classifier(200, 50, seed=5)
    want = torch.randn(200, 50, generator=torch.Generator().manual_seed(5)) * 0.01
    assert torch.equal(w, want) and torch.equal(b, torch.zeros(50))


def _features(n: int, classes: int, seed: int, dim: int = 4) -> FeatureSet:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    x = rng.normal(size=(n, dim)).astype(np.float32) + labels[:, None]
    return FeatureSet({"res5": x}, labels, np.arange(n))


@pytest.mark.parametrize("epochs, batch_size", [(0, 8), (1, 0)])
def test_epochs_and_batch_size_must_be_positive(epochs, batch_size):
    data = _features(8, 2, 0)
    with pytest.raises(ValueError, match=f"must be positive, got {epochs} and {batch_size}"):
        train_linear_grid(data, data, epochs=epochs, batch_size=batch_size)


def test_one_epoch_of_one_cell_trains_and_the_class_count_spans_every_split():
    train, val, test = _features(12, 2, 0), _features(6, 3, 1), _features(6, 5, 2)
    result = train_linear_grid(train, val, lrs=(0.1,), weight_decays=(0.0,), epochs=1, batch_size=4,
                               test=test)
    assert result.weight.shape == (1, 4, 5) and result.bias.shape == (1, 5)  # labels 0..4 across splits
    w0, _ = initial_classifier(4, 5, 0)
    assert not torch.equal(result.weight[0], w0)  # it moved
    assert result.settings["num_train"] == 12 and result.settings["num_test"] == 6
    assert result.selection == {"selected_on": "val", "scored_on": "test", "rule": linear_grid.SELECTION_RULE}


def test_a_constant_feature_is_standardised_to_zero_not_infinity():
    train = _features(12, 2, 0)
    train.features["res5"][:, 0] = 3.0
    result = train_linear_grid(train, train, lrs=(0.1,), weight_decays=(0.0,), standardize=(True,),
                               epochs=1, batch_size=4)
    assert result.std[0] == pytest.approx(1e-6) and torch.isfinite(result.weight).all()
    # a constant input contributes nothing: its weights get no gradient and stay at the initial draw
    w0, _ = initial_classifier(4, 2, 0)
    assert torch.equal(result.weight[0, 0], w0[0])


def _result(cells: list[dict]) -> LinearGridResult:
    empty = torch.zeros(0)
    return LinearGridResult(cells, empty, empty, empty, empty, {},
                            {"selected_on": "val rows", "scored_on": "test", "rule": "r"})


def test_the_first_of_equal_val_scores_is_selected_and_the_table_lists_best_first():
    cells = [{"lr": 0.1, "weight_decay": 0.0, "standardize": False, "val_top1": 50.0, "val_top5": 90.0,
              "test_top1": 40.0, "test_top5": 80.0},
             {"lr": 1.0, "weight_decay": 1e-4, "standardize": True, "val_top1": 60.0, "val_top5": 95.0,
              "test_top1": 30.0, "test_top5": 70.0},
             {"lr": 10.0, "weight_decay": 0.0, "standardize": False, "val_top1": 60.0, "val_top5": 99.0,
              "test_top1": 99.0, "test_top5": 99.0}]
    result = _result(cells)
    assert result.selected is cells[1]
    assert format_selection(result) == ("selected on val rows: lr 1, weight_decay 0.0001, standardize True "
                                        "(val top-1 60.00); test top-1 of that classifier on test: 30.00")
    table = format_grid_table(result).splitlines()
    assert [line.split()[0] for line in table[2:]] == ["1", "10", "0.1"]
    no_test = _result([{k: v for k, v in c.items() if not k.startswith("test")} for c in cells])
    assert format_selection(no_test).endswith("on test: -")
    assert "test_top1" not in format_grid_table(no_test)


def test_selection_splits_refuse_reporting_the_split_selected_on(tmp_path):
    with pytest.raises(ValueError, match=r"the validation split 'test' is the test split"):
        selection_splits(str(tmp_path), val_split="test")
    with pytest.raises(ValueError, match=r"the validation split 'train' is the training split"):
        selection_splits(str(tmp_path), val_split="train")
    with pytest.raises(ValueError, match=r"the training and test splits are both 'a'"):
        selection_splits(str(tmp_path), train_split="a", test_split="a")


def test_unlabelled_features_are_refused():
    data = _features(8, 2, 0)
    bare = FeatureSet(data.features, None, data.indices)
    with pytest.raises(ValueError, match=r"labelled features \(labels is None\)"):
        train_linear_grid(bare, data, epochs=1)


def test_a_batch_of_one_trains_and_the_training_time_is_measured():
    data = _features(6, 2, 0)
    before = time.perf_counter()
    result = train_linear_grid(data, data, lrs=(0.1,), weight_decays=(0.0,), epochs=1, batch_size=1)
    assert 0 <= result.settings["train_seconds"] <= time.perf_counter() - before + 0.01  # rounded to 0.01


def test_more_val_rows_than_one_scoring_chunk_are_all_scored():
    train, val = _features(8, 2, 0), _features(4100, 2, 1)  # scored in chunks of 4096 rows
    result = train_linear_grid(train, val, lrs=(0.1,), weight_decays=(0.0,), epochs=1, batch_size=4)
    x = torch.from_numpy(val.features["res5"]).double()
    predicted = (x @ result.weight[0].double() + result.bias[0].double()).argmax(dim=1).numpy()
    assert result.cells[0]["val_top1"] == pytest.approx(100.0 * np.mean(predicted == val.labels), abs=1e-9)


def _write_cache(folder, split: str, data: FeatureSet) -> None:
    paths = _paths(str(folder), split)
    np.save(_layer_path(str(folder), split, "res5"), data.features["res5"])
    np.save(paths["labels"], data.labels.astype(np.int64))
    np.save(paths["indices"], np.arange(len(data.labels), dtype=np.int64))
    with open(paths["meta"], "w") as f:
        json.dump({"num_images": len(data.labels), "dims": {"res5": 4}, "layers": ["res5"],
                   "has_labels": True}, f)


def test_an_extracted_validation_split_is_selected_on(tmp_path):
    for i, split in enumerate(("train", "val", "test")):
        _write_cache(tmp_path, split, _features(10 + i, 2, i))
    splits = selection_splits(str(tmp_path), val_split="val")
    assert (len(splits.fit), len(splits.val), len(splits.test)) == (10, 11, 12)
    assert splits.selection == {"selected_on": "val (extracted split)", "scored_on": "test"}
