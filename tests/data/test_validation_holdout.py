"""The validation hold-out of model selection: one stratified draw for data sets and cached features."""

from __future__ import annotations

import numpy as np
import pytest

from d2ssl.data.datasets import DatasetError
from d2ssl.data.splits import holdout_indices, holdout_split, stratified_split


def test_holdout_is_the_stratified_cut_on_data_sets_and_on_label_arrays(fashion_mnist_small):
    fit, val = holdout_split(fashion_mnist_small, fraction=0.2, seed=3)
    assert (fit, val) == tuple(stratified_split(fashion_mnist_small, (0.8, 0.2), seed=3))
    fit_rows, val_rows = holdout_indices([d["label"] for d in fashion_mnist_small], 0.2, seed=3)
    assert [fashion_mnist_small[i]["image_id"] for i in val_rows] == [d["image_id"] for d in val]
    assert [fashion_mnist_small[i]["image_id"] for i in fit_rows] == [d["image_id"] for d in fit]
    assert not set(fit_rows) & set(val_rows) and len(fit_rows) + len(val_rows) == len(fashion_mnist_small)
    labels = np.array([d["label"] for d in fashion_mnist_small])
    for k in range(10):  # 20 % of every class, up to one image
        assert abs((labels[val_rows] == k).sum() - 0.2 * (labels == k).sum()) <= 1
    # Another seed draws other images.
    assert list(holdout_indices(labels, 0.2, seed=4)[1]) != list(val_rows)


def test_a_class_left_without_validation_or_training_images_is_named():
    labels = [0] * 20 + [1] * 20 + [2]  # class 2 has one image: it cannot be on both sides
    with pytest.raises(DatasetError, match=r"misses classes \[2\]"):
        holdout_indices(labels, 0.1, seed=0)
    with pytest.raises(ValueError, match="validation fraction"):
        holdout_indices(labels, 1.0)
