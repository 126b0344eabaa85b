"""ClusterFit step 1: k-means of features, pseudo-label files in data set order, quality metrics."""

from __future__ import annotations

import json
import math
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
from tolerances import gamma

from d2ssl.data.datasets import DatasetError, attach_labels
from d2ssl.evaluation import clustering
from d2ssl.evaluation.clustering import (
    cluster_and_label,
    clustering_quality,
    l2_normalize,
    run_kmeans,
    size_summary,
)

NUM_IMAGES = 1500
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pixels(fashion_mnist_train) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Real photos and their raw pixels as ``(N, 784)`` features: a feature space whose clusters are
    known to follow the classes (k-means on Fashion-MNIST pixels reaches an NMI of about 0.5 in the
    clustering literature)."""
    images = [dict(d, image_id=i) for i, d in enumerate(fashion_mnist_train[2000:2000 + NUM_IMAGES])]
    features = np.stack([d["image"].reshape(-1) for d in images]).astype(np.float32) / 255.0
    labels = np.array([d["label"] for d in images])
    return images, features, labels


def nearest(features: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    distances = ((features[:, None, :] - centroids[None, :, :]) ** 2).sum(-1)
    return distances.argmin(1)


def test_cluster_ids_are_each_images_nearest_centroid_in_data_set_order(pixels, tmp_path):
    images, features, labels = pixels
    train, test = features[:1000], features[1000:]
    out = cluster_and_label(train, str(tmp_path), num_clusters=12, n_iter=10, seed=0, dataset_name="fmnist",
                            train_labels=labels[:1000], test_features=test, test_labels=labels[1000:])
    ids = np.load(out.labels_file)
    centroids = np.load(out.centroids_file)
    assert ids.shape == (1000,) and ids.dtype == np.int64
    assert centroids.shape == (12, 784)
    # Row i of the label file is image i's cluster: its nearest centroid (after L2 normalisation).
    np.testing.assert_array_equal(ids, nearest(l2_normalize(train), centroids))
    # The held-out split gets the nearest centroid of the training split's clusters.
    test_ids = np.load(out.test_labels_file)
    np.testing.assert_array_equal(test_ids, nearest(l2_normalize(test), centroids))
    assert out.labels_file.endswith("fmnist_train_N12_faiss_lbls.npy")
    assert out.test_labels_file.endswith("fmnist_test_N12_faiss_lbls.npy")


def test_summary_reports_sizes_objective_quality_and_writes_the_plot(pixels, tmp_path):
    _, features, labels = pixels
    out = cluster_and_label(features, str(tmp_path), num_clusters=10, n_iter=8, seed=0, train_labels=labels)
    summary = json.loads((tmp_path / "clustering_summary.json").read_text())
    sizes = np.bincount(np.load(out.labels_file), minlength=10)
    assert summary["sizes"]["min"] == sizes.min() and summary["sizes"]["max"] == sizes.max()
    assert summary["sizes"]["median"] == np.median(sizes)
    assert summary["sizes"]["num_empty"] == (sizes == 0).sum()
    assert 1 <= len(summary["objective"]) <= 8
    assert summary["objective"][-1] <= summary["objective"][0]  # k-means never increases its objective
    assert summary["train_quality"]["nmi"] == pytest.approx(clustering_quality(np.load(out.labels_file),
                                                                               labels)["nmi"])
    assert summary["kmeans_seconds"] >= 0 and summary["device"] == "cpu"
    assert (tmp_path / "clustering.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_seed_gives_the_same_clusters(pixels):
    _, features, _ = pixels
    x = l2_normalize(features)
    a, b = run_kmeans(x, 20, n_iter=5, seed=7), run_kmeans(x, 20, n_iter=5, seed=7)
    np.testing.assert_array_equal(a.assignments, b.assignments)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    other = run_kmeans(x, 20, n_iter=5, seed=8)
    assert not np.array_equal(a.centroids, other.centroids)  # the seed does pick the start


def test_faiss_is_called_with_the_configured_clusters_and_iterations(pixels, monkeypatch):
    _, features, _ = pixels
    calls = []
    real_kmeans = clustering.faiss.Kmeans

    def recording_kmeans(d, k, **kwargs):
        calls.append((d, k, kwargs))
        return real_kmeans(d, k, **kwargs)

    monkeypatch.setattr(clustering.faiss, "Kmeans", recording_kmeans)
    result = run_kmeans(l2_normalize(features), 17, n_iter=4, seed=3)
    assert len(calls) == 1
    d, k, kwargs = calls[0]
    assert (d, k, kwargs["niter"], kwargs["seed"]) == (784, 17, 4, 3)
    assert result.centroids.shape == (17, 784)
    assert 1 <= len(result.objective) <= 4  # faiss stops early once the objective no longer changes


def test_clusters_of_class_structured_features_have_high_nmi_and_shuffled_ones_none(pixels):
    _, features, labels = pixels
    shuffled_labels = np.random.default_rng(0).permutation(labels)
    for seed in range(3):
        ids = run_kmeans(l2_normalize(features), 10, n_iter=10, seed=seed).assignments
        structured, unrelated = clustering_quality(ids, labels), clustering_quality(ids, shuffled_labels)
        assert structured["nmi"] > 0.35 and structured["purity"] > 0.45
        assert unrelated["nmi"] < 0.05 and abs(unrelated["ari"]) < 0.02


def test_quality_metrics_on_a_hand_checked_example():
    clusters = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    labels = np.array([3, 3, 1, 1, 1, 2, 2, -1])  # -1: unlabelled, left out
    quality = clustering_quality(clusters, labels)
    assert quality["num_labelled"] == 7
    assert quality["purity"] == pytest.approx((2 + 2 + 2) / 7)
    perfect = clustering_quality(np.array([5, 5, 1, 1]), np.array([0, 0, 1, 1]))
    assert perfect["nmi"] == pytest.approx(1.0) and perfect["ari"] == pytest.approx(1.0)


def test_nmi_and_ari_are_the_hand_computed_values_without_the_unlabelled_image():
    # 7 labelled images (the 8th, label -1, is left out); contingency (cluster x label):
    #   cluster 0: label 0 x2, label 1 x1;  cluster 1: label 1 x2, label 2 x2.
    clusters = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    labels = np.array([0, 0, 1, 1, 1, 2, 2, -1])
    quality = clustering_quality(clusters, labels)
    # NMI = I(U; V) / mean(H(U), H(V)) (the arithmetic mean: scikit-learn's default since 0.22, the
    # definition d2ssl reports), I = sum_ij n_ij / N ln(N n_ij / (a_i b_j)), natural logs.
    mutual = (2 * math.log(7 / 3) + math.log(7 / 9) + 2 * math.log(7 / 6) + 2 * math.log(7 / 4)) / 7
    h_clusters = -(3 / 7 * math.log(3 / 7) + 4 / 7 * math.log(4 / 7))
    h_labels = -(2 * 2 / 7 * math.log(2 / 7) + 3 / 7 * math.log(3 / 7))
    nmi = mutual / ((h_clusters + h_labels) / 2)
    # ARI from pair counts: 21 pairs, 9 in one cluster (3 + 6), 5 with one label (1 + 3 + 1), 3 both
    # (1 + 0 + 1 + 1): (3 - 9 * 5 / 21) / ((9 + 5) / 2 - 9 * 5 / 21) = 3 / 17.
    ari = 3 / 17
    # float64 sums of under 16 terms of size <= 2 ln 7: within 2 gamma_16 * 16 * 2 ln 7 (~3e-14).
    tol = 2 * gamma(16, 2.0**-53) * 16 * 2 * math.log(7)
    assert quality["num_labelled"] == 7
    assert quality["nmi"] == pytest.approx(nmi, abs=tol) and quality["ari"] == pytest.approx(ari, abs=tol)
    # The geometric-mean NMI (scikit-learn before 0.22) is another number here (H(U) != H(V)).
    assert abs(mutual / math.sqrt(h_clusters * h_labels) - nmi) > 1e-3


def test_size_summary_reports_empty_and_singleton_clusters():
    summary = size_summary(np.array([0, 0, 1, 5, 10]))
    assert summary == {"num_clusters": 5, "min": 0, "max": 10, "median": 1.0, "num_empty": 2,
                       "num_singleton": 1, "largest_fraction": 10 / 16}


def test_pca_reduces_the_clustered_dimension(pixels, tmp_path):
    _, features, _ = pixels
    out = cluster_and_label(features, str(tmp_path), num_clusters=5, n_iter=3, dimensionality_reduction=16)
    assert np.load(out.centroids_file).shape == (5, 16)
    assert out.summary["clustered_dim"] == 16 and out.summary["feature_dim"] == 784
    with pytest.raises(ValueError, match="DIMENSIONALITY_REDUCTION=1000"):
        cluster_and_label(features, str(tmp_path), num_clusters=5, dimensionality_reduction=1000)


def test_bad_inputs_name_what_is_wrong(pixels):
    _, features, _ = pixels
    with pytest.raises(ValueError, match="NUM_CLUSTERS=5000"):
        run_kmeans(features, 5000)
    bad = features.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        run_kmeans(bad, 5)


def test_pseudo_label_file_length_equals_the_data_sets_and_a_wrong_length_names_both(pixels, tmp_path):
    images, features, _ = pixels
    out = cluster_and_label(features, str(tmp_path), num_clusters=10, n_iter=3)
    labelled = attach_labels(images, out.labels_file)
    ids = np.load(out.labels_file)
    assert len(ids) == len(images)
    assert [d["label"] for d in labelled] == ids.tolist()
    assert [d["image_id"] for d in labelled] == list(range(len(images)))
    wrong_length = rf"holds \({len(images)},\) labels, but the data set lists {len(images) - 1} images"
    with pytest.raises(DatasetError, match=wrong_length):
        attach_labels(images[:-1], out.labels_file)
    with pytest.raises(DatasetError, match="faiss_lbls.npy"):
        attach_labels(images[:-1], out.labels_file)


def test_labels_file_is_never_unpickled(tmp_path):
    path = tmp_path / "labels.npy"
    np.save(path, np.array([1, "x", None], dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match="labels.npy"):
        attach_labels([{"image_id": i} for i in range(3)], str(path))


def test_cluster_features_tool_runs_step_one_and_reclusters_cached_features(tmp_path, monkeypatch):
    # A randomly initialised tiny trunk (no weights file) on 300 + 100 real photos.
    out = tmp_path / "cluster"
    argv = ["--config-file", str(REPO / "configs" / "tiny" / "clusterfit_cluster.py"), "--num-gpus", "0",
            "train.weights_init.PARAMS_FILE=", "dataloader.train.dataset.limit=300",
            "dataloader.test.dataset.limit=100", "clustering.NUM_CLUSTERS=6", "clustering.N_ITER=5",
            f"extraction.output_dir={out / 'features'}", f"train.output_dir={out}"]
    monkeypatch.setattr(sys, "argv", ["cluster_features.py", *argv])
    runpy.run_path(str(REPO / "tools" / "cluster_features.py"), run_name="__main__")
    summary = json.loads((out / "clustering_summary.json").read_text())
    ids = np.load(out / "fashion_mnist_train_N6_faiss_lbls.npy")
    assert ids.shape == (300,) and summary["NUM_CLUSTERS"] == 6 and summary["feature_dim"] == 128
    assert np.load(out / "fashion_mnist_test_N6_faiss_lbls.npy").shape == (100,)
    assert 0 <= summary["train_quality"]["nmi"] <= 1 and summary["test_quality"]["num_labelled"] == 100
    # VISSL's FEATURES.EXTRACT False: cluster the cached features again, same seed, same clusters.
    monkeypatch.setattr(sys, "argv", ["cluster_features.py", *argv, "clustering.FEATURES.EXTRACT=False",
                                      f"clustering.FEATURES.PATH={out / 'features'}",
                                      f"train.output_dir={out / 'again'}"])
    runpy.run_path(str(REPO / "tools" / "cluster_features.py"), run_name="__main__")
    np.testing.assert_array_equal(np.load(out / "again" / "fashion_mnist_train_N6_faiss_lbls.npy"), ids)
