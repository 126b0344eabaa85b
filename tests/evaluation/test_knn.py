"""Weighted kNN: perfect on separable features, chance on shuffled labels, NPID's vote weighting."""

from __future__ import annotations

import numpy as np
import pytest

from d2ssl.evaluation.features import FeatureSet
from d2ssl.evaluation.knn import knn_evaluate, knn_scores, topk_accuracy


def _pixels(images: list[dict]) -> np.ndarray:
    return np.stack([d["image"].reshape(-1) for d in images]).astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def photos(fashion_mnist_train):
    train, test = fashion_mnist_train[:2000], fashion_mnist_train[2000:2500]
    return tuple(
        FeatureSet({"res5": _pixels(part)}, np.array([d["label"] for d in part]), np.arange(len(part)))
        for part in (train, test)
    )


def test_separable_features_give_100_percent(photos):
    memory, queries = photos
    # The raw photos plus a large one-hot of the class: every nearest neighbour has the right class.
    def separable(fs):
        onehot = np.eye(10, dtype=np.float32)[fs.labels] * 100.0
        return FeatureSet({"res5": np.concatenate([fs.features["res5"], onehot], 1)}, fs.labels, fs.indices)

    results = knn_evaluate(separable(memory), separable(queries), ks=(20, 200))
    assert results["top1@20"] == 100.0 and results["top1@200"] == 100.0


def test_real_photos_well_above_chance_and_shuffled_labels_at_chance(photos):
    memory, queries = photos
    results = knn_evaluate(memory, queries, ks=(20,))
    assert results["top1@20"] > 70.0  # pixel kNN on Fashion-MNIST is ~80%
    # Labels shuffled on both sides: with only the memory's shuffled, queries of one class share one
    # neighbourhood and so one outcome (about 10 independent trials); shuffling the queries' labels
    # too makes each query an independent trial with hit probability 1/10 (top-1) and 1/2 (top-5).
    rng = np.random.default_rng(0)
    chance = knn_evaluate(FeatureSet(memory.features, rng.permutation(memory.labels), memory.indices),
                          FeatureSet(queries.features, rng.permutation(queries.labels), queries.indices),
                          ks=(20, 200))
    # Within 4 standard deviations of a binomial over 500 queries: 1.34% (top-1), 2.24% (top-5).
    assert abs(chance["top1@200"] - 10.0) < 5.4 and abs(chance["top1@20"] - 10.0) < 5.4
    assert abs(chance["top5@200"] - 50.0) < 9.0


def test_votes_are_summed_exp_similarity_over_temperature():
    memory = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], np.float32)
    labels = np.array([0, 1, 1])
    query = np.array([[2.0, 0.0]], np.float32)  # normalised to (1, 0): similarities 1, 0.8, 0
    scores = knn_scores(memory, labels, query, k=2, temperature=0.5)
    np.testing.assert_allclose(scores, [[np.exp(2.0), np.exp(1.6)]], rtol=1e-6)
    # With k=3 the third neighbour joins class 1: exp(1.6) + exp(0) < exp(2), class 0 still wins.
    scores3 = knn_scores(memory, labels, query, k=3, temperature=0.5)
    np.testing.assert_allclose(scores3[0, 1], np.exp(1.6) + 1.0, rtol=1e-6)
    assert topk_accuracy(scores3, np.array([0]), topk=(1,)) == {"top1": 100.0}
    with pytest.raises(ValueError, match="temperature > 0"):
        knn_scores(memory, labels, query, k=2, temperature=0.0)
