"""The batched linear grid trains, cell by cell, the classifiers torch.optim.SGD trains one at a time."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from d2ssl.data.splits import holdout_indices
from d2ssl.evaluation.evaluator import topk_accuracy
from d2ssl.evaluation.features import FeatureSet, load_features
from d2ssl.evaluation.linear_grid import (
    linear_grid_on_cached_features,
    train_linear_grid,
    write_grid_report,
)

SETTINGS = dict(epochs=4, batch_size=64, momentum=0.9, seed=3)


@pytest.fixture(scope="module")
def photos(fashion_mnist_train):
    # Real photos, 7x7 average-pooled to 16-d "features" so that training takes milliseconds.
    def features(part):
        pixels = torch.from_numpy(np.stack([d["image"] for d in part])).float()[:, None] / 255.0
        pooled = F.avg_pool2d(pixels, 7).flatten(1).numpy()
        return FeatureSet({"res5": pooled}, np.array([d["label"] for d in part]), np.arange(len(part)))

    return features(fashion_mnist_train[:600]), features(fashion_mnist_train[600:900])


# The oracle's schedule and initialisation are written here from the reference, not imported from the
# code under test (which would repeat its mistakes): MoCo / JigClu main_lincls.py adjust_learning_rate,
# lr * 0.5 * (1 + cos(pi * epoch / epochs)) with --cos, else lr * 0.1 for every milestone with
# epoch >= milestone; the fc starts normal(0, 0.01), bias 0.
def reference_lr(base: float, schedule: str, epoch: int, epochs: int, milestones=()) -> float:
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    return base * 0.1 ** len([m for m in milestones if epoch >= m])


def test_reference_schedule_values():
    # Hard-coded: a cosine shifted by one epoch, or a milestone compared with > instead of >=, fails here.
    assert [reference_lr(1.0, "cosine", e, 4) for e in range(4)] == pytest.approx(
        [1.0, 0.8535533905932737, 0.5, 0.14644660940672627], abs=1e-15)
    assert [reference_lr(1.0, "step", e, 4, (2, 3)) for e in range(4)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.01], abs=1e-15)


def _train_alone(train, val, lr, wd, standardize, schedule, milestones=(), epochs=4, batch_size=64,
                 momentum=0.9, seed=3):
    x = torch.from_numpy(np.asarray(train.features["res5"]))
    y = torch.from_numpy(train.labels)
    xv = torch.from_numpy(np.asarray(val.features["res5"]))
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    if standardize:
        x, xv = (x - mean) / std, (xv - mean) / std
    fc = nn.Linear(x.shape[1], 10)
    with torch.no_grad():  # normal(0, 0.01) drawn as a (D, C) matrix from the seed, bias 0
        fc.weight.copy_((torch.randn(x.shape[1], 10, generator=torch.Generator().manual_seed(seed)) * 0.01).T)
        fc.bias.zero_()
    optimizer = torch.optim.SGD(fc.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        for group in optimizer.param_groups:
            group["lr"] = reference_lr(lr, schedule, epoch, epochs, milestones)
        for rows in torch.randperm(len(x), generator=generator).split(batch_size):
            optimizer.zero_grad()
            F.cross_entropy(fc(x[rows]), y[rows]).backward()
            optimizer.step()
    with torch.no_grad():
        accuracy = topk_accuracy(fc(xv).numpy(), val.labels)
    return fc, accuracy


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_grid_matches_classifiers_trained_alone(photos, schedule):
    train, val = photos
    lrs, wds, standardize = (0.05, 0.5), (0.0, 1e-3), (False, True)
    result = train_linear_grid(train, val, lrs=lrs, weight_decays=wds, standardize=standardize,
                               schedule=schedule, milestones=(2, 3), **SETTINGS)
    assert len(result.cells) == 8
    for g, cell in enumerate(result.cells):
        fc, accuracy = _train_alone(train, val, cell["lr"], cell["weight_decay"], cell["standardize"],
                                    schedule, milestones=(2, 3))
        torch.testing.assert_close(result.weight[g], fc.weight.detach().T, rtol=0, atol=1e-5)
        torch.testing.assert_close(result.bias[g], fc.bias.detach(), rtol=0, atol=1e-5)
        assert cell["val_top1"] == pytest.approx(accuracy["top1"])
        assert cell["val_top5"] == pytest.approx(accuracy["top5"])
    # The cells really differ, and they learned something on real photos (chance: 10%).
    assert len({round(c["val_top1"], 3) for c in result.cells}) > 1
    assert result.selected["val_top1"] > 50.0


def test_report_files(tmp_path, photos):
    train, val = photos
    result = train_linear_grid(train, val, lrs=(0.1,), weight_decays=(0.0,), epochs=1, test=val)
    report = write_grid_report(result, str(tmp_path))
    on_disk = json.loads((tmp_path / "linear_grid.json").read_text())
    assert on_disk["selected"] == report["selected"] and len(on_disk["cells"]) == 1
    assert on_disk["selected_on"] == "val" and on_disk["scored_on"] == "test" and "rule" in on_disk
    assert "weight_decay" in (tmp_path / "linear_grid.txt").read_text()
    with pytest.raises(ValueError, match="schedule must be one of"):
        train_linear_grid(train, val, schedule="poly")


def test_the_cell_is_selected_on_val_and_reported_by_its_test_accuracy(photos):
    """Two cells: lr 0 (the classifier stays at its seeded initialisation) and lr 0.5 (learns). The
    validation labels are what the untrained cell predicts, so it wins on val (100 %) while the trained
    cell wins on test: the selected cell must be the val winner, reported by its own test accuracy."""
    train, test = photos
    x = torch.from_numpy(np.asarray(test.features["res5"]))
    initial = torch.randn(x.shape[1], 10, generator=torch.Generator().manual_seed(SETTINGS["seed"])) * 0.01
    val = FeatureSet(dict(test.features), (x @ initial).argmax(1).numpy(), test.indices)
    result = train_linear_grid(train, val, lrs=(0.0, 0.5), weight_decays=(0.0,), test=test, **SETTINGS)
    untrained, trained = result.cells
    assert untrained["val_top1"] == 100.0 and trained["val_top1"] < 100.0
    assert trained["test_top1"] > untrained["test_top1"] + 20  # measured ~60 vs ~10: chance is 10
    assert result.selected is untrained
    assert result.selected["test_top1"] == untrained["test_top1"] < max(c["test_top1"] for c in result.cells)


@pytest.fixture(scope="module")
def features_dir(tmp_path_factory, fashion_mnist_train):
    from d2ssl.data.mappers.classification import ClassificationMapper
    from d2ssl.evaluation.features import extract_features
    from d2ssl.modeling.backbone import build_resnet_trunk

    out = str(tmp_path_factory.mktemp("features"))
    torch.manual_seed(0)
    trunk = build_resnet_trunk(depth=18, base_channels=8)
    mapper = ClassificationMapper(train=False, resize_size=32, crop_size=32)
    extract_features(trunk, fashion_mnist_train[:400], mapper, out, split="train")
    extract_features(trunk, fashion_mnist_train[400:600], mapper, out, split="test")
    return out


def test_cached_features_select_on_rows_held_out_of_train_never_on_test(tmp_path, features_dir):
    result = linear_grid_on_cached_features(features_dir, layer="res5", output_dir=str(tmp_path),
                                            lrs=(0.01, 0.1), weight_decays=(0.0,), epochs=2,
                                            val_fraction=0.25, val_seed=1)
    fit, val = holdout_indices(load_features(features_dir, "train", ("res5",)).labels, 0.25, seed=1)
    assert result.settings["num_train"] == len(fit) and result.settings["num_val"] == len(val) == 100
    assert result.settings["num_test"] == 200
    report = json.loads((tmp_path / "linear_grid.json").read_text())
    assert report["scored_on"] == "test" and "0.25 of every class of 'train'" in report["selected_on"]
    assert report["selected"] == max(report["cells"], key=lambda c: c["val_top1"])
    assert "test_top1" in report["selected"]
    with pytest.raises(ValueError, match="optimistic"):
        linear_grid_on_cached_features(features_dir, val_split="test", output_dir=str(tmp_path))

