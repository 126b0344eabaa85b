"""ClusterFit step 1: faiss k-means of extracted features, pseudo-labels, and how good the clusters are.

Follows VISSL's ``tools/cluster_features_and_label.py`` (Yan et al., "ClusterFit", CVPR 2020):
features ``(N, D)`` float32 -> L2 normalisation (``x / (||x|| + 1e-5)``, l. 82-84 of the tool at VISSL
commit 09270ed) -> optional whitening PCA to ``dimensionality_reduction`` dims (VISSL's
``DIMENSIONALITY_REDUCTION``, 0: none; ``vissl/utils/pca.py``, see :class:`WhiteningPCA`), not
normalised again -> ``faiss.Kmeans(D, NUM_CLUSTERS, niter=N_ITER, seed=...)`` (VISSL passes no seed:
faiss's default 1234, the default here too) -> each image's nearest centroid. A held-out split is
assigned to the nearest centroid of the training split's clusters (VISSL's ``TEST_PARTITION``).

Written for every run (VISSL names where VISSL writes the file, ``.npy`` instead of its pickle):

    {name}_train_N{K}_faiss_lbls.npy      (N,) int64, one cluster id per image in data set order:
                                          the ``labels_file`` of ClusterFit's training data set
    {name}_train_N{K}_faiss_lbls.json     the digest of the images labelled and K (when the features
                                          record it), checked by ``attach_labels``
    {name}_train_N{K}_faiss_centroids.npy (K, D') float32, D' after PCA
    {name}_train_N{K}_faiss_distances.npy (N,) float32 squared L2 distance to the centroid
    {name}_test_N{K}_faiss_lbls.npy       test split's nearest centroids (when a test split is given)
    clustering_summary.json               sizes (min/max/median), empty and singleton clusters, the
                                          k-means objective per iteration, time, and, where the
                                          data set has labels, NMI / ARI / purity
    clustering.png                        cluster-size histogram with the NMI in the title

Every file is written atomically (``d2ssl.utils.safe_io.atomic_write``: a full disk or a kill leaves
the previous file whole); the summary is removed first and written last, so a folder with a summary
holds one finished run, and its ``inputs`` name the sha256 of the features clustered. Nothing here
is reused: each run clusters again (the features it reads are reused by content, see
``d2ssl.evaluation.features``).

Quality against true labels is d2ssl's addition (none of the references reports it): NMI and
adjusted Rand index (scikit-learn) and purity (the fraction of images whose cluster's majority
class is their own). Labels < 0 (unlabelled) are left out of these.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field

import faiss
import numpy as np
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from d2ssl.config import dataset_name_of
from d2ssl.data.datasets import labels_record_path, write_labels_record
from d2ssl.engine.train_loop import setup_from_args
from d2ssl.evaluation.features import (
    array_digest,
    extract_from_config,
    extracted_dataset_digest,
    load_features,
)
from d2ssl.utils.safe_io import atomic_write

logger = logging.getLogger(__name__)

CLUSTER_BACKEND = "faiss"


@dataclass
class KMeansResult:
    """What one k-means run gives: ``centroids (K, D)``, ``assignments (N,)`` int64,
    ``distances (N,)`` squared L2 to the assigned centroid, ``objective`` per iteration (faiss's
    ``Kmeans.obj``: the sum of squared distances), wall-clock ``seconds`` of training and the device."""

    centroids: np.ndarray
    assignments: np.ndarray
    distances: np.ndarray
    objective: list[float]
    seconds: float
    device: str


@dataclass
class ClusteringOutputs:
    """Paths of the files a clustering run wrote and its JSON summary."""

    labels_file: str
    centroids_file: str
    distances_file: str
    summary_file: str
    plot_file: str
    test_labels_file: str | None = None
    summary: dict = field(default_factory=dict)


def use_faiss_gpu(use_gpu: bool | None = None) -> bool:
    """``None``: the GPU when faiss was built with GPU support and sees one (faiss-gpu), else the CPU."""
    available = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if use_gpu and not available:
        raise RuntimeError("use_gpu=True, but faiss sees no GPU (install faiss-gpu: pip install -e '.[gpu]')")
    return available if use_gpu is None else bool(use_gpu)


def _as_float32_matrix(features: np.ndarray, what: str) -> np.ndarray:
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"{what} must be a non-empty (N, D) array, got shape {features.shape}")
    if not np.all(np.isfinite(features)):
        raise ValueError(f"{what} holds NaN or infinite values: was the trunk diverged or the file corrupt?")
    return np.ascontiguousarray(features, dtype=np.float32)


def l2_normalize(features: np.ndarray) -> np.ndarray:
    """``(N, D) -> (N, D)``: ``x / (||x|| + 1e-5)``, VISSL's normalisation before k-means."""
    return features / (np.linalg.norm(features, axis=1, keepdims=True) + 1e-5)


@dataclass
class WhiteningPCA:
    """VISSL's PCA (``vissl/utils/pca.py`` l. 15-68, after DeepCluster's ``eval_retrieval.py``), fitted
    by :func:`fit_pca`: ``apply(x) = (x - mean) @ projection.T``, ``(N, D) -> (N, D')``.

    ``projection`` is ``diag(1 / sqrt(d)) V^T`` for the ``D'`` largest eigenvalues ``d`` (eigenvectors
    ``V``) of the scatter matrix ``X^T X`` of the centred features (not divided by N), eigenvalues below
    ``max(d) * 1e-5`` raised to that floor. faiss's ``PCAMatrix(eigen_power=-0.5)`` whitens too, but
    divides the scatter by N (outputs sqrt(N) times larger) and has no floor, hence numpy here.

    One difference from VISSL, on purpose: VISSL's ``fit_transform`` centres the training features in
    place in ``fit`` (l. 28) and again in ``apply`` (l. 59), so it clusters ``x - 2 mean`` but assigns
    images (its ``_create_dataset_split``, ``transform``) as ``x - mean``, against centroids of the
    other. Here both are ``x - mean``. The published ClusterFit runs use no PCA
    (``DIMENSIONALITY_REDUCTION: 0``), so this changes none of its numbers.
    """

    mean: np.ndarray
    projection: np.ndarray

    def apply(self, features: np.ndarray) -> np.ndarray:
        return (np.asarray(features, dtype=np.float32) - self.mean) @ self.projection.T


def fit_pca(features: np.ndarray, dimensionality_reduction: int, normalize: bool = True) -> WhiteningPCA:
    """:class:`WhiteningPCA` from ``D`` to ``dimensionality_reduction`` dims, fitted on ``features (N, D)``
    after the L2 normalisation when ``normalize`` (VISSL's order)."""
    features = _as_float32_matrix(features, "features")
    if not 0 < dimensionality_reduction <= features.shape[1]:
        raise ValueError(
            f"DIMENSIONALITY_REDUCTION={dimensionality_reduction} must lie in 1..{features.shape[1]} "
            f"(the feature dimension), or be 0 for no PCA"
        )
    if normalize:
        features = l2_normalize(features)
    # float32 throughout, as VISSL (its features are float32 and numpy keeps that dtype).
    mean = features.mean(axis=0)
    centred = features - mean
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred)
    floor = eigenvalues.max() * 1e-5
    eigenvalues = np.where(eigenvalues < floor, floor, eigenvalues)
    keep = np.argsort(eigenvalues)[::-1][: int(dimensionality_reduction)]
    # VISSL's diag(1 / sqrt(d)) V^T, the reciprocal taken first as there (same rounding).
    projection = (eigenvectors[:, keep] * (1.0 / np.sqrt(eigenvalues[keep]))).T
    return WhiteningPCA(mean=mean.astype(np.float32), projection=np.ascontiguousarray(projection, np.float32))


def preprocess_features(
    features: np.ndarray, pca: WhiteningPCA | None = None, normalize: bool = True
) -> np.ndarray:
    """``(N, D) -> (N, D')``: L2 normalisation then the PCA (fitted on the training split), float32, as
    VISSL's ``cluster_features_and_label.py`` (l. 82-90 and 144-150): no normalisation after the PCA."""
    features = _as_float32_matrix(features, "features")
    if normalize:
        features = l2_normalize(features)
    if pca is not None:
        features = pca.apply(features)
    return np.ascontiguousarray(features, dtype=np.float32)


def run_kmeans(
    features: np.ndarray,
    num_clusters: int,
    n_iter: int = 50,
    seed: int = 1234,
    use_gpu: bool | None = None,
    verbose: bool = False,
    **clustering_params,
) -> KMeansResult:
    """faiss k-means of ``features (N, D)`` into ``num_clusters`` clusters with ``n_iter`` iterations.

    ``seed`` fixes faiss's initial centroids (a random sample of the points), so the same features and
    seed give the same clusters; 1234 is faiss's default, which VISSL ran with (it passes no seed).
    ``clustering_params`` go to faiss's ``ClusteringParameters`` (e.g. ``max_points_per_centroid``:
    faiss subsamples to 256 points per centroid by default, as in VISSL; ``spherical=True`` for unit-norm
    centroids).
    """
    features = _as_float32_matrix(features, "features")
    num_clusters, n_iter = int(num_clusters), int(n_iter)
    if not 1 <= num_clusters <= features.shape[0]:
        raise ValueError(
            f"NUM_CLUSTERS={num_clusters} must lie in 1..{features.shape[0]} (the number of images clustered)"
        )
    if n_iter < 1:
        raise ValueError(f"N_ITER must be >= 1, got {n_iter}")
    gpu = use_faiss_gpu(use_gpu)
    kmeans = faiss.Kmeans(
        features.shape[1], num_clusters, niter=n_iter, seed=int(seed), verbose=verbose, gpu=gpu,
        **clustering_params,
    )
    start = time.perf_counter()
    kmeans.train(features)
    seconds = time.perf_counter() - start
    distances, assignments = kmeans.index.search(features, 1)
    return KMeansResult(
        centroids=np.asarray(kmeans.centroids, dtype=np.float32),
        assignments=assignments[:, 0].astype(np.int64),
        distances=distances[:, 0].astype(np.float32),
        objective=[float(v) for v in kmeans.obj],
        seconds=seconds,
        device="gpu" if gpu else "cpu",
    )


def assign_to_centroids(
    features: np.ndarray, centroids: np.ndarray, use_gpu: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid (L2) of each row: ``(N, D), (K, D) -> ids (N,) int64, squared distances (N,)``."""
    features = _as_float32_matrix(features, "features")
    centroids = _as_float32_matrix(centroids, "centroids")
    if features.shape[1] != centroids.shape[1]:
        raise ValueError(f"features have {features.shape[1]} dims but centroids {centroids.shape[1]}")
    index = faiss.IndexFlatL2(centroids.shape[1])
    if use_faiss_gpu(use_gpu):
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(centroids)
    distances, ids = index.search(features, 1)
    return ids[:, 0].astype(np.int64), distances[:, 0].astype(np.float32)


def cluster_sizes(assignments: np.ndarray, num_clusters: int) -> np.ndarray:
    """``(N,)`` cluster ids -> ``(K,)`` number of images in each cluster (zeros for empty clusters)."""
    return np.bincount(np.asarray(assignments, dtype=np.int64), minlength=num_clusters)


def size_summary(sizes: np.ndarray) -> dict:
    """Sizes min/max/median, and the empty and single-image clusters (reported, not hidden)."""
    sizes = np.asarray(sizes)
    return {
        "num_clusters": int(len(sizes)),
        "min": int(sizes.min()),
        "max": int(sizes.max()),
        "median": float(np.median(sizes)),
        "num_empty": int((sizes == 0).sum()),
        "num_singleton": int((sizes == 1).sum()),
        "largest_fraction": float(sizes.max() / max(int(sizes.sum()), 1)),
    }


def clustering_quality(assignments: np.ndarray, labels: np.ndarray) -> dict:
    """NMI, adjusted Rand index and purity of cluster ids ``(N,)`` against true labels ``(N,)``.

    Images with a label < 0 (unlabelled) are left out; ``num_labelled`` says how many were scored.
    """
    assignments, labels = np.asarray(assignments, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    if assignments.shape != labels.shape:
        raise ValueError(f"{len(assignments)} cluster ids but {len(labels)} labels: need one label per image")
    keep = labels >= 0
    assignments, labels = assignments[keep], labels[keep]
    if len(labels) == 0:
        raise ValueError("no image has a label >= 0: clustering quality needs true labels")
    # Purity: each cluster votes for its majority class.
    contingency = np.zeros((assignments.max() + 1, labels.max() + 1), dtype=np.int64)
    np.add.at(contingency, (assignments, labels), 1)
    return {
        "nmi": float(normalized_mutual_info_score(labels, assignments)),
        "ari": float(adjusted_rand_score(labels, assignments)),
        "purity": float(contingency.max(axis=1).sum() / len(labels)),
        "num_labelled": int(len(labels)),
    }


def plot_cluster_sizes(sizes: np.ndarray, path: str, nmi: float | None = None, title: str = "") -> None:
    """PNG: histogram of the cluster sizes (empty clusters in the first bin), NMI in the title."""
    # Imported here: the backend must be chosen before pyplot is first imported, and only plots need it.
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(sizes, bins=min(50, max(len(sizes), 1)), color="tab:blue")
    ax.set_xlabel("images per cluster")
    ax.set_ylabel("clusters")
    stats = f"{len(sizes)} clusters, {int((sizes == 0).sum())} empty"
    if nmi is not None:
        stats += f", NMI {nmi:.3f}"
    ax.set_title(f"{title}\n{stats}" if title else stats)
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)


def _save_npy(path: str, array: np.ndarray) -> None:
    # Atomic, as checkpoints: a full disk or a kill leaves the previous file whole, never half of one.
    atomic_write(path, lambda f: np.save(f, array))


def cluster_and_label(
    train_features: np.ndarray,
    output_dir: str,
    num_clusters: int = 16000,
    n_iter: int = 50,
    seed: int = 1234,
    dimensionality_reduction: int = 0,
    normalize: bool = True,
    dataset_name: str = "dataset",
    train_labels: np.ndarray | None = None,
    test_features: np.ndarray | None = None,
    test_labels: np.ndarray | None = None,
    use_gpu: bool | None = None,
    train_dataset_digest: str | None = None,
    test_dataset_digest: str | None = None,
    **clustering_params,
) -> ClusteringOutputs:
    """ClusterFit step 1 on features in data set order; writes the files listed in the module docstring.

    Args:
        train_features: ``(N, D)`` features of the split to cluster (VISSL's ``DATA_PARTITION``).
        num_clusters, n_iter, seed: VISSL's ``NUM_CLUSTERS``, ``N_ITER`` and the k-means seed.
        dimensionality_reduction: whitening PCA output dims, 0 for none (VISSL's
            ``DIMENSIONALITY_REDUCTION``).
        normalize: L2-normalise (before the PCA) before k-means, as VISSL.
        dataset_name: VISSL's ``DATASET_NAME``, the prefix of the output files.
        train_labels, test_labels: ``(N,)`` true labels for NMI / ARI / purity, or None.
        test_features: ``(M, D)`` features of a held-out split, assigned to the nearest centroid
            (VISSL's ``TEST_PARTITION``).
        train_dataset_digest, test_dataset_digest: ``dataset_digest`` of the images the features are
            of; recorded beside each labels file (``write_labels_record``), so that ClusterFit's
            ``attach_labels`` refuses the labels on other images.
    """
    pca = fit_pca(train_features, dimensionality_reduction, normalize) if dimensionality_reduction else None
    train = preprocess_features(train_features, pca, normalize)
    logger.info("k-means of %s features into %d clusters, %d iterations", train.shape, num_clusters, n_iter)
    # faiss prints one line per k-means iteration with its objective and time: the progress of the
    # one step that can take hours (16000 clusters of 1.28M images).
    clustering_params.setdefault("verbose", comm.is_main_process())
    result = run_kmeans(train, num_clusters, n_iter, seed, use_gpu, **clustering_params)
    sizes = cluster_sizes(result.assignments, num_clusters)
    summary: dict = {
        "dataset_name": dataset_name,
        "num_images": int(train.shape[0]),
        "feature_dim": int(np.asarray(train_features).shape[1]),
        "clustered_dim": int(train.shape[1]),
        "NUM_CLUSTERS": int(num_clusters),
        "N_ITER": int(n_iter),
        "seed": int(seed),
        "DIMENSIONALITY_REDUCTION": int(dimensionality_reduction),
        "l2_normalize": bool(normalize),
        "device": result.device,
        "kmeans_seconds": round(result.seconds, 3),
        "objective": result.objective,
        "sizes": size_summary(sizes),
    }
    if summary["sizes"]["num_empty"]:
        logger.warning("%d of %d clusters are empty", summary["sizes"]["num_empty"], num_clusters)
    if train_labels is not None:
        summary["train_quality"] = clustering_quality(result.assignments, train_labels)

    # What the clusters were computed from, so that a consumer can check the labels belong to its
    # features (the features' meta file holds their weights and data set digests).
    summary["inputs"] = {
        "train_features_sha256": array_digest(_as_float32_matrix(train_features, "train_features")),
        "test_features_sha256": None if test_features is None
        else array_digest(_as_float32_matrix(test_features, "test_features")),
        "train_dataset_digest": train_dataset_digest,
        "test_dataset_digest": test_dataset_digest,
    }
    PathManager.mkdirs(output_dir)
    test_labels_file = os.path.join(output_dir,
                                    f"{dataset_name}_test_N{num_clusters}_{CLUSTER_BACKEND}_lbls.npy")
    prefix = os.path.join(output_dir, f"{dataset_name}_train_N{num_clusters}_{CLUSTER_BACKEND}")
    outputs = ClusteringOutputs(
        labels_file=f"{prefix}_lbls.npy",
        centroids_file=f"{prefix}_centroids.npy",
        distances_file=f"{prefix}_distances.npy",
        summary_file=os.path.join(output_dir, "clustering_summary.json"),
        plot_file=os.path.join(output_dir, "clustering.png"),
    )
    # The summary is written last: until then the folder holds no finished clustering (files of an
    # older run beside new ones are not presented as one result).
    if PathManager.exists(outputs.summary_file):
        PathManager.rm(outputs.summary_file)
    for labels_file in (outputs.labels_file, test_labels_file):  # an older run's record must not vouch
        if PathManager.exists(labels_record_path(labels_file)):
            PathManager.rm(labels_record_path(labels_file))
    _save_npy(outputs.labels_file, result.assignments)
    if train_dataset_digest:
        write_labels_record(outputs.labels_file, train_dataset_digest, len(result.assignments), num_clusters,
                            f"{dataset_name} train")
    _save_npy(outputs.centroids_file, result.centroids)
    _save_npy(outputs.distances_file, result.distances)
    if test_features is not None:
        test = preprocess_features(test_features, pca, normalize)
        test_ids, _ = assign_to_centroids(test, result.centroids, use_gpu)
        outputs.test_labels_file = test_labels_file
        _save_npy(outputs.test_labels_file, test_ids)
        if test_dataset_digest:
            write_labels_record(outputs.test_labels_file, test_dataset_digest, len(test_ids), num_clusters,
                                f"{dataset_name} test")
        summary["test_sizes"] = size_summary(cluster_sizes(test_ids, num_clusters))
        if test_labels is not None:
            summary["test_quality"] = clustering_quality(test_ids, test_labels)
    nmi = summary.get("train_quality", {}).get("nmi")
    plot_cluster_sizes(sizes, outputs.plot_file, nmi, title=f"{dataset_name}: k-means, K={num_clusters}")
    summary["files"] = {k: v for k, v in asdict(outputs).items() if k != "summary" and v}
    atomic_write(outputs.summary_file, lambda f: json.dump(summary, f, indent=2), mode="w")
    outputs.summary = summary
    logger.info("clustering summary: %s", {k: v for k, v in summary.items() if k != "objective"})
    return outputs


# ---------------------------------------------------------------- config-driven entry (the tool)

CLUSTERING_KEYS = ("NUM_CLUSTERS", "N_ITER", "SEED", "L2_NORMALIZE", "USE_GPU", "OUTPUT_DIR", "FEATURES")
FEATURES_KEYS = ("EXTRACT", "PATH", "DATA_PARTITION", "TEST_PARTITION", "DATASET_NAME", "LAYER_NAME",
                 "DIMENSIONALITY_REDUCTION")


def _check_keys(node, allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(node.keys()) - set(allowed))
    if unknown:
        raise KeyError(f"unknown key {where}.{unknown[0]}; allowed: {list(allowed)}")


def cluster_from_config(cfg) -> ClusteringOutputs | None:
    """ClusterFit step 1 from a config (``configs/clusterfit/``): the ``extraction`` section and
    ``dataloader.<split>`` of ``d2ssl.evaluation.features.extract_from_config``, plus ``clustering``
    with VISSL's ``CLUSTERFIT`` names (see ``configs/clusterfit/cluster_features_R50.py``).

    With ``FEATURES.EXTRACT`` the features are extracted first (every process takes a shard; a finished
    extraction with the same data, view and weights is reused); otherwise they are read from
    ``FEATURES.PATH`` (empty: ``extraction.output_dir``), VISSL's ``EXTRACT: False``. k-means runs in
    the main process; other processes return None.
    """
    c = cfg.clustering
    _check_keys(c, CLUSTERING_KEYS, "clustering")
    _check_keys(c.FEATURES, FEATURES_KEYS, "clustering.FEATURES")
    f = c.FEATURES
    if f.EXTRACT:
        splits = [s for s in (f.DATA_PARTITION, f.TEST_PARTITION) if s]
        missing = [s for s in splits if s not in cfg.extraction.splits]
        if missing:
            raise KeyError(f"clustering.FEATURES names split(s) {missing} that extraction.splits "
                           f"{list(cfg.extraction.splits)} does not extract")
        if f.LAYER_NAME not in cfg.extraction.layers:
            raise KeyError(f"clustering.FEATURES.LAYER_NAME={f.LAYER_NAME!r} is not among extraction.layers "
                           f"{list(cfg.extraction.layers)}")
        extract_from_config(cfg)
    if not comm.is_main_process():
        return None
    path = cfg.extraction.output_dir if f.EXTRACT else (f.PATH or cfg.extraction.output_dir)
    train = load_features(path, f.DATA_PARTITION, [f.LAYER_NAME])
    test = load_features(path, f.TEST_PARTITION, [f.LAYER_NAME]) if f.TEST_PARTITION else None
    return cluster_and_label(
        np.asarray(train.features[f.LAYER_NAME]),
        c.OUTPUT_DIR or cfg.train.output_dir,
        num_clusters=c.NUM_CLUSTERS,
        n_iter=c.N_ITER,
        seed=c.SEED,
        dimensionality_reduction=f.DIMENSIONALITY_REDUCTION,
        normalize=c.L2_NORMALIZE,
        # Empty: named after the data set clustered (photos_train_N50_... for folder:/x/photos/train).
        dataset_name=f.DATASET_NAME or dataset_name_of(cfg.dataloader[f.DATA_PARTITION].dataset,
                                                       f.DATA_PARTITION),
        train_labels=train.labels,
        test_features=None if test is None else np.asarray(test.features[f.LAYER_NAME]),
        test_labels=None if test is None else test.labels,
        use_gpu=c.USE_GPU,
        train_dataset_digest=extracted_dataset_digest(path, f.DATA_PARTITION),
        test_dataset_digest=extracted_dataset_digest(path, f.TEST_PARTITION) if f.TEST_PARTITION else None,
    )


def main(args) -> dict:
    """Entry point of ``tools/cluster_features.py`` in each launched process: the config (``key=value``
    overrides checked against it, logs and config.yaml in ``train.output_dir``), then
    ``cluster_from_config``; returns the summary (main process)."""
    outputs = cluster_from_config(setup_from_args(args))
    return outputs.summary if outputs is not None else {}
