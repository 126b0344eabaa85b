"""kNN edge cases that benchmarks/mutation.py found untested (mutants of d2ssl/evaluation/knn.py that
survived the other tests): the smallest legal k and temperature bounds, k equal to the memory size,
normalisation of short vectors, the class count taken from the labels, the default top-k keys.
Expected values come from hand arithmetic or numpy, never from the functions under test."""

from __future__ import annotations

import json

import numpy as np
import pytest

from d2ssl.evaluation.features import FeatureSet, _layer_path, _paths
from d2ssl.evaluation.knn import (
    knn_evaluate,
    knn_on_cached_features,
    knn_scores,
    knn_topk_accuracy,
    l2_normalize,
    nearest_neighbors,
)

# Three memory rows on the axes of the plane, labels 0, 1, 2; the query is closest to row 0.
MEMORY = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
LABELS = np.array([0, 1, 2])
QUERY = np.array([[0.8, 0.6]], dtype=np.float32)  # unit norm: cosines 0.8, 0.6, -0.8


def test_k_of_one_votes_with_the_single_nearest_row():
    votes = knn_scores(MEMORY, LABELS, QUERY, k=1, temperature=0.5)
    # exp(0.8 / 0.5) for class 0 only
    np.testing.assert_allclose(votes, [[np.exp(1.6), 0.0, 0.0]], rtol=1e-6)


def test_k_equal_to_the_memory_size_is_accepted_and_every_row_votes():
    votes = knn_scores(MEMORY, LABELS, QUERY, k=3, temperature=1.0)
    np.testing.assert_allclose(votes, [[np.exp(0.8), np.exp(0.6), np.exp(-0.8)]], rtol=1e-6)


@pytest.mark.parametrize("k, temperature", [(0, 0.07), (3, 0.0), (3, -0.1)])
def test_k_below_one_or_a_non_positive_temperature_is_refused_naming_both(k, temperature):
    with pytest.raises(ValueError, match=r"k >= 1 and temperature > 0"):
        knn_scores(MEMORY, LABELS, QUERY, k=k, temperature=temperature)


def test_memory_labels_of_another_length_are_refused():
    with pytest.raises(ValueError, match="3 memory features but 2 labels"):
        knn_scores(MEMORY, LABELS[:2], QUERY, k=1)


def test_class_count_is_the_largest_label_plus_one():
    votes = knn_scores(MEMORY, np.array([0, 4, 0]), QUERY, k=2, temperature=1.0)
    assert votes.shape == (1, 5)
    np.testing.assert_allclose(votes, [[np.exp(0.8), 0, 0, 0, np.exp(0.6)]], rtol=1e-6)


def test_short_rows_are_scaled_up_to_unit_length_and_zero_rows_stay_zero():
    x = np.array([[0.03, 0.04], [0.0, 0.0], [3.0, 4.0]])
    np.testing.assert_allclose(l2_normalize(x), [[0.6, 0.8], [0.0, 0.0], [0.6, 0.8]], rtol=1e-6)


def test_raw_inner_products_without_normalisation():
    sims, idx = nearest_neighbors(MEMORY * 2, QUERY * 3, k=3, normalize=False)
    # (2 * memory) . (3 * query) = 6 * cosines, most similar first
    np.testing.assert_allclose(sims, [[4.8, 3.6, -4.8]], rtol=1e-6)
    np.testing.assert_array_equal(idx, [[0, 1, 2]])


def test_neighbours_are_ranked_by_cosine_unless_asked_otherwise():
    # Row 1 is short but points the query's way: first by cosine, last by raw inner product.
    memory = np.array([[10.0, 0.0], [0.0, 0.1], [10.0, 10.0]], dtype=np.float32)
    sims, idx = nearest_neighbors(memory, np.array([[0.0, 2.0]], dtype=np.float32), k=3)
    np.testing.assert_array_equal(idx, [[1, 2, 0]])
    np.testing.assert_allclose(sims, [[1.0, np.sqrt(0.5), 0.0]], atol=1e-6)


def _write_cache(folder, split: str, features: np.ndarray, labels: np.ndarray) -> None:
    paths = _paths(str(folder), split)
    np.save(_layer_path(str(folder), split, "res5"), features)
    np.save(paths["labels"], labels.astype(np.int64))
    np.save(paths["indices"], np.arange(len(labels), dtype=np.int64))
    with open(paths["meta"], "w") as f:
        json.dump({"num_images": len(labels), "dims": {"res5": features.shape[1]}, "layers": ["res5"],
                   "has_labels": True}, f)


def test_trunk_protocol_defaults_are_cosine_k20_and_k200_at_temperature_007(tmp_path):
    # Class 0: 100 long rows at 45 degrees from the query; class 1: 100 short rows along it. By cosine
    # (1 against 0.71) every neighbour set votes class 1; raw inner products (10 against 0.1) would pick
    # class 0 (or overflow exp(s / 0.07)).
    memory = np.array([[10.0, 10.0]] * 100 + [[0.0, 0.1]] * 100, dtype=np.float32)
    _write_cache(tmp_path, "train", memory, np.array([0] * 100 + [1] * 100))
    _write_cache(tmp_path, "test", np.array([[0.0, 1.0]], dtype=np.float32), np.array([1]))
    got = knn_on_cached_features(str(tmp_path))
    assert got == {"top1@20": 100.0, "top5@20": 100.0, "top1@200": 100.0, "top5@200": 100.0}
    report = json.loads((tmp_path / "knn_res5.json").read_text())
    assert (report["protocol"], report["temperature"], report["l2_normalized"]) == ("trunk", 0.07, True)
    assert (report["num_memory"], report["num_queries"]) == (200, 1)


def test_default_topk_is_top1_and_top5_in_percent():
    votes = np.array([[0.0, 1, 2, 3, 4, 5, 6], [6.0, 5, 4, 3, 2, 1, 0]])
    # row 0 ranks 6,5,4,3,2: label 2 is 5th; row 1 ranks 0,1,2,3,4: label 6 is last
    assert knn_topk_accuracy(votes, np.array([2, 6])) == {"top1": 0.0, "top5": 50.0}


@pytest.mark.parametrize("unlabelled", ["memory", "queries"])
def test_knn_evaluate_refuses_either_split_without_labels(unlabelled):
    labelled = FeatureSet({"res5": MEMORY}, LABELS, np.arange(3))
    bare = FeatureSet({"res5": MEMORY}, None, np.arange(3))
    memory, queries = (bare, labelled) if unlabelled == "memory" else (labelled, bare)
    with pytest.raises(ValueError, match="needs labels for both"):
        knn_evaluate(memory, queries, ks=(1,))


def test_default_k_is_200_neighbours():
    # 201 identical rows along the query, all class 0: 200 of them vote exp(1 / 0.5) each.
    memory = np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (201, 1))
    votes = knn_scores(memory, np.zeros(201, dtype=np.int64), np.array([[2.0, 0.0]], dtype=np.float32),
                       temperature=0.5)
    # 200 float32 additions of the same weight: at most ~200 roundings of 2**-24 relative each
    np.testing.assert_allclose(votes, [[200 * np.exp(2.0)]], rtol=201 * 2.0**-24)
