"""The batched linear grid trains, cell by cell, the classifiers torch.optim.SGD trains one at a time."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from d2ssl.evaluation.evaluator import topk_accuracy
from d2ssl.evaluation.features import FeatureSet
from d2ssl.evaluation.linear_grid import initial_classifier, lr_factor, train_linear_grid, write_grid_report

SETTINGS = dict(epochs=4, batch_size=64, momentum=0.9, seed=3)


@pytest.fixture(scope="module")
def photos(fashion_mnist_train):
    # Real photos, 7x7 average-pooled to 16-d "features" so that training takes milliseconds.
    def features(part):
        pixels = torch.from_numpy(np.stack([d["image"] for d in part])).float()[:, None] / 255.0
        pooled = F.avg_pool2d(pixels, 7).flatten(1).numpy()
        return FeatureSet({"res5": pooled}, np.array([d["label"] for d in part]), np.arange(len(part)))

    return features(fashion_mnist_train[:600]), features(fashion_mnist_train[600:900])


def _train_alone(train, val, lr, wd, standardize, schedule, milestones=(), epochs=4, batch_size=64,
                 momentum=0.9, seed=3):
    x = torch.from_numpy(np.asarray(train.features["res5"]))
    y = torch.from_numpy(train.labels)
    xv = torch.from_numpy(np.asarray(val.features["res5"]))
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    if standardize:
        x, xv = (x - mean) / std, (xv - mean) / std
    w0, b0 = initial_classifier(x.shape[1], 10, seed)
    fc = nn.Linear(x.shape[1], 10)
    with torch.no_grad():
        fc.weight.copy_(w0.T), fc.bias.copy_(b0)
    optimizer = torch.optim.SGD(fc.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        for group in optimizer.param_groups:
            group["lr"] = lr * lr_factor(schedule, epoch, epochs, milestones)
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
        assert cell["top1"] == pytest.approx(accuracy["top1"])
        assert cell["top5"] == pytest.approx(accuracy["top5"])
    # The cells really differ, and they learned something on real photos (chance: 10%).
    assert len({round(c["top1"], 3) for c in result.cells}) > 1
    assert result.best["top1"] > 50.0


def test_report_files(tmp_path, photos):
    train, val = photos
    result = train_linear_grid(train, val, lrs=(0.1,), weight_decays=(0.0,), epochs=1)
    report = write_grid_report(result, str(tmp_path))
    on_disk = json.loads((tmp_path / "linear_grid.json").read_text())
    assert on_disk["best"] == report["best"] and len(on_disk["cells"]) == 1
    assert "weight_decay" in (tmp_path / "linear_grid.txt").read_text()
    with pytest.raises(ValueError, match="schedule must be one of"):
        train_linear_grid(train, val, schedule="poly")
