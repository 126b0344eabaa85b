"""Clustering arithmetic that benchmarks/mutation.py found untested (mutants of
d2ssl/evaluation/clustering.py that survived the other tests): VISSL's normalisation constant, the
whitening PCA's scatter, order and floor, the bounds of K and N_ITER, nearest-centroid distances, the
size summary and the quality metrics on hand-checked inputs. Expected values come from hand arithmetic
or numpy, never from the functions under test."""

from __future__ import annotations

import inspect
import json
import logging
import os
import time

import numpy as np
import pytest

from d2ssl.evaluation.clustering import (
    WhiteningPCA,
    assign_to_centroids,
    cluster_and_label,
    cluster_sizes,
    clustering_quality,
    fit_pca,
    l2_normalize,
    preprocess_features,
    run_kmeans,
    size_summary,
)


def test_l2_normalize_divides_by_the_norm_plus_1e5():
    np.testing.assert_allclose(l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]])),
                               [[3 / 5.00001, 4 / 5.00001], [0.0, 0.0]], rtol=1e-12)


@pytest.mark.parametrize("bad, message", [
    (np.zeros(4), r"non-empty \(N, D\) array, got shape \(4,\)"),
    (np.zeros((0, 3)), r"non-empty \(N, D\) array, got shape \(0, 3\)"),
    (np.array([[1.0, np.nan]]), "NaN or infinite"),
    (np.array([[1.0, np.inf]]), "NaN or infinite"),
])
def test_features_must_be_a_finite_non_empty_matrix(bad, message):
    with pytest.raises(ValueError, match=message):
        preprocess_features(bad)


def test_preprocessing_normalises_then_applies_the_pca_as_float32():
    pca = WhiteningPCA(mean=np.array([1.0, 0.0], np.float32), projection=np.array([[2.0, 0.0]], np.float32))
    out = preprocess_features(np.array([[3.0, 4.0]]), pca)
    # (3, 4) / 5.00001 - (1, 0), times (2, 0)
    np.testing.assert_allclose(out, [[(3 / 5.00001 - 1) * 2]], rtol=1e-6)
    assert out.dtype == np.float32
    np.testing.assert_allclose(preprocess_features(np.array([[3.0, 4.0]]), normalize=False), [[3.0, 4.0]])


def _anisotropic(n: int = 400) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 3)) * np.array([5.0, 1.0, 0.2]) + np.array([1.0, -2.0, 3.0])


def test_whitening_pca_makes_the_scatter_the_identity_along_the_largest_directions():
    x = _anisotropic()
    pca = fit_pca(x, 2, normalize=False)
    np.testing.assert_allclose(pca.mean, x.mean(axis=0), rtol=1e-5, atol=1e-5)
    y = pca.apply(x).astype(np.float64)
    # The scatter Y^T Y (not divided by N) of the whitened training features is the identity.
    np.testing.assert_allclose(y.T @ y, np.eye(2), atol=2e-4)
    # The two kept directions are the two largest-variance axes (0 then 1), not the smallest (2).
    directions = np.abs(pca.projection) / np.linalg.norm(pca.projection, axis=1, keepdims=True)
    np.testing.assert_allclose(directions, [[1, 0, 0], [0, 1, 0]], atol=0.05)


def test_whitening_floors_tiny_eigenvalues_at_1e5_of_the_largest():
    rng = np.random.default_rng(1)
    x = np.c_[rng.normal(size=200), np.zeros(200)]  # no variance at all along axis 1
    pca = fit_pca(x, 2, normalize=False)
    centred = x - x.mean(axis=0)
    largest = float(centred[:, 0] @ centred[:, 0])
    # Row 2 scales axis 1 by 1 / sqrt(largest * 1e-5) instead of 1 / 0.
    np.testing.assert_allclose(np.linalg.norm(pca.projection, axis=1),
                               [1 / np.sqrt(largest), 1 / np.sqrt(largest * 1e-5)], rtol=1e-3)


@pytest.mark.parametrize("dims, ok", [(0, False), (1, True), (3, True), (4, False)])
def test_pca_dimension_must_lie_between_one_and_the_feature_dimension(dims, ok):
    if ok:
        assert fit_pca(_anisotropic(), dims).projection.shape == (dims, 3)
    else:
        with pytest.raises(ValueError, match=r"DIMENSIONALITY_REDUCTION=.* must lie in 1\.\.3"):
            fit_pca(_anisotropic(), dims)


def test_pca_is_fitted_on_normalised_features_by_default():
    x = _anisotropic()
    unit = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(fit_pca(x, 2).mean, unit.mean(axis=0), rtol=1e-5, atol=1e-6)


POINTS = np.array([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [10.0, 0.2], [0.0, 10.0]], dtype=np.float32)


@pytest.mark.parametrize("k, ok", [(0, False), (1, True), (5, True), (6, False)])
def test_number_of_clusters_must_lie_between_one_and_the_number_of_images(k, ok):
    if ok:
        assert run_kmeans(POINTS, k, n_iter=2).centroids.shape == (k, 2)
    else:
        with pytest.raises(ValueError, match=rf"NUM_CLUSTERS={k} must lie in 1\.\.5"):
            run_kmeans(POINTS, k)


def test_n_iter_must_be_positive_and_sets_the_objective_length():
    with pytest.raises(ValueError, match="N_ITER must be >= 1, got 0"):
        run_kmeans(POINTS, 2, n_iter=0)
    result = run_kmeans(POINTS, 3, n_iter=1)
    assert len(result.objective) == 1 and result.device == "cpu"


def test_kmeans_distances_are_squared_distances_to_the_assigned_centroid():
    result = run_kmeans(POINTS, 3, n_iter=10)
    expected = ((POINTS - result.centroids[result.assignments]) ** 2).sum(axis=1)
    np.testing.assert_allclose(result.distances, expected, rtol=1e-5, atol=1e-6)
    # and each image's centroid is its nearest one
    nearest = ((POINTS[:, None, :] - result.centroids[None]) ** 2).sum(axis=2).argmin(axis=1)
    assert result.assignments.tolist() == nearest.tolist()


def test_assignment_is_the_nearest_centroid_with_its_squared_distance():
    centroids = np.array([[0.0, 0.0], [10.0, 0.0]], dtype=np.float32)
    ids, distances = assign_to_centroids(np.array([[1.0, 1.0], [7.0, 0.0], [4.0, 0.0]]), centroids)
    assert ids.tolist() == [0, 1, 0]
    np.testing.assert_allclose(distances, [2.0, 9.0, 16.0])
    with pytest.raises(ValueError, match="features have 3 dims but centroids 2"):
        assign_to_centroids(np.zeros((1, 3)), centroids)


def test_cluster_sizes_count_empty_clusters_up_to_k():
    assert cluster_sizes(np.array([0, 2, 2]), 5).tolist() == [1, 0, 2, 0, 0]


def test_size_summary_on_hand_checked_sizes():
    assert size_summary(np.array([0, 1, 3, 4])) == {
        "num_clusters": 4, "min": 0, "max": 4, "median": 2.0, "num_empty": 1, "num_singleton": 1,
        "largest_fraction": 0.5}
    assert size_summary(np.array([0, 0]))["largest_fraction"] == 0.0
    assert size_summary(np.array([1, 0]))["largest_fraction"] == 1.0  # one image, all in one cluster


def test_quality_leaves_out_unlabelled_images_and_counts_purity_by_majority():
    clusters = np.array([0, 0, 0, 1, 1, 2, 2])
    labels = np.array([1, 1, 0, 2, 2, -1, -1])
    q = clustering_quality(clusters, labels)
    # 5 labelled images; cluster 0's majority holds 2 of 3, cluster 1's 2 of 2: purity 4 / 5.
    assert q["num_labelled"] == 5 and q["purity"] == pytest.approx(0.8, abs=1e-12)
    perfect = clustering_quality(np.array([3, 3, 1, 1]), np.array([0, 0, 1, 1]))
    assert perfect["nmi"] == pytest.approx(1.0, abs=1e-12) and perfect["ari"] == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="3 cluster ids but 2 labels"):
        clustering_quality(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="no image has a label >= 0"):
        clustering_quality(np.zeros(2), np.array([-1, -1]))
    # A label of 0 is a label (kept), only negatives are left out.
    assert clustering_quality(np.array([0, 1]), np.array([0, 0]))["num_labelled"] == 2


def test_kmeans_seconds_are_the_time_it_took():
    before = time.perf_counter()
    result = run_kmeans(POINTS, 2, n_iter=3)
    assert 0 <= result.seconds <= time.perf_counter() - before


def test_the_summary_lists_every_file_written_and_only_those(tmp_path):
    outputs = cluster_and_label(POINTS, str(tmp_path), num_clusters=2, n_iter=3, dataset_name="pts",
                                test_features=POINTS[:2])
    files = outputs.summary["files"]
    assert set(files) == {"labels_file", "centroids_file", "distances_file", "summary_file", "plot_file",
                          "test_labels_file"}
    assert all(os.path.isfile(path) for path in files.values())
    assert json.loads((tmp_path / "clustering_summary.json").read_text())["files"] == files
    # no data set digest given: no labels record beside either labels file
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in files.values())


def test_labels_records_are_written_for_the_splits_given_a_digest(tmp_path):
    outputs = cluster_and_label(POINTS, str(tmp_path), num_clusters=2, n_iter=3, dataset_name="pts",
                                test_features=POINTS[:2], train_dataset_digest="abc",
                                test_dataset_digest="def")
    written = {os.path.basename(p) for p in outputs.summary["files"].values()}
    extra = sorted(set(os.listdir(tmp_path)) - written)
    records = [json.loads((tmp_path / name).read_text()) for name in extra]
    assert sorted((r["dataset_digest"], r["num_images"], r["num_classes"]) for r in records) == [
        ("abc", 5, 2), ("def", 2, 2)]
    assert outputs.summary["num_images"] == 5 and outputs.summary["feature_dim"] == 2
    # Clustering again into the same folder without digests: the old records must not vouch for it.
    again = cluster_and_label(POINTS, str(tmp_path), num_clusters=2, n_iter=3, dataset_name="pts",
                              test_features=POINTS[:2])
    written = sorted(os.path.basename(p) for p in again.summary["files"].values())
    assert sorted(os.listdir(tmp_path)) == written


def test_empty_clusters_are_reported_in_the_log(tmp_path, caplog):
    same = np.zeros((6, 2), dtype=np.float32)  # six equal points: two of three clusters stay empty
    with caplog.at_level(logging.WARNING, logger="d2ssl.evaluation.clustering"):
        outputs = cluster_and_label(same, str(tmp_path / "a"), num_clusters=3, n_iter=2)
    empty = outputs.summary["sizes"]["num_empty"]
    assert empty >= 1 and f"{empty} of 3 clusters are empty" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="d2ssl.evaluation.clustering"):
        cluster_and_label(POINTS, str(tmp_path / "b"), num_clusters=1, n_iter=2)
    assert "clusters are empty" not in caplog.text


def _defaults(function) -> dict:
    return {k: p.default for k, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty}


def test_defaults_are_vissl_clusterfit_and_faiss():
    # VISSL's CLUSTERFIT: NUM_CLUSTERS 16000, N_ITER 50, no PCA, L2 normalisation; 1234 is faiss's seed
    assert _defaults(run_kmeans) == {"n_iter": 50, "seed": 1234, "use_gpu": None, "verbose": False}
    assert _defaults(cluster_and_label) == {
        "num_clusters": 16000, "n_iter": 50, "seed": 1234, "dimensionality_reduction": 0, "normalize": True,
        "dataset_name": "dataset", "train_labels": None, "test_features": None, "test_labels": None,
        "use_gpu": None, "train_dataset_digest": None, "test_dataset_digest": None}


def test_without_a_test_split_the_summary_names_no_test_labels_file(tmp_path):
    outputs = cluster_and_label(POINTS, str(tmp_path), num_clusters=2, n_iter=3)
    assert set(outputs.summary["files"]) == {"labels_file", "centroids_file", "distances_file",
                                             "summary_file", "plot_file"}
