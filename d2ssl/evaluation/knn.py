"""Weighted k-nearest-neighbour classification on L2-normalised features (NPID's protocol).

As ``kNN`` in NPID's ``lemniscate.pytorch/test.py`` (Wu et al. 2018): features of the labelled
"memory" images and of the test images are L2-normalised; each test image takes its ``k`` most
similar memory images by cosine similarity ``s``; each neighbour votes for its class with weight
``exp(s / temperature)``; classes are ranked by summed votes (top-1, top-5). NPID reports k=200
(and 20) with temperature 0.07 (its ``--nce-t``); VISSL's ``nearest_neighbor`` benchmark configs use
``TOPK: 200``, ``SIGMA: 0.1``. The neighbour search is faiss's exact inner-product index
(``IndexFlatIP``), on the GPUs when faiss-gpu and a GPU are there.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

import faiss
import numpy as np
import torch
from detectron2.utils.file_io import PathManager

from d2ssl.evaluation.evaluator import topk_accuracy
from d2ssl.evaluation.features import FeatureSet, load_features

logger = logging.getLogger(__name__)

NPID_KS = (20, 200)
NPID_TEMPERATURE = 0.07
VISSL_TOPK, VISSL_SIGMA = 200, 0.1


def l2_normalize(features: np.ndarray) -> np.ndarray:
    """``(N, D)`` rows scaled to unit L2 norm (zero rows stay zero), float32, contiguous."""
    x = np.ascontiguousarray(features, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _use_gpu(use_gpu: bool | None) -> bool:
    available = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if use_gpu and not available:
        raise RuntimeError("use_gpu=True but faiss has no GPU support or sees no GPU (install faiss-gpu)")
    return available if use_gpu is None else bool(use_gpu)


def nearest_neighbors(
    memory: np.ndarray, queries: np.ndarray, k: int, use_gpu: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities ``(Q, k)`` and memory indices ``(Q, k)`` of each query's ``k`` nearest
    memory rows (most similar first). ``use_gpu=None``: GPU when faiss can use one."""
    memory, queries = l2_normalize(memory), l2_normalize(queries)
    index = faiss.IndexFlatIP(memory.shape[1])
    if _use_gpu(use_gpu):
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(memory)
    return index.search(queries, min(k, len(memory)))


def knn_scores(
    memory_features: np.ndarray,
    memory_labels: np.ndarray,
    query_features: np.ndarray,
    k: int = 200,
    temperature: float = NPID_TEMPERATURE,
    num_classes: int | None = None,
    use_gpu: bool | None = None,
) -> np.ndarray:
    """``(Q, C)`` summed votes ``sum over the k neighbours of class c of exp(similarity / T)``."""
    if k < 1 or temperature <= 0:
        raise ValueError(f"kNN needs k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    memory_labels = np.asarray(memory_labels, dtype=np.int64)
    if len(memory_labels) != len(memory_features):
        raise ValueError(f"{len(memory_features)} memory features but {len(memory_labels)} labels")
    num_classes = num_classes or int(memory_labels.max()) + 1
    similarities, neighbors = nearest_neighbors(memory_features, query_features, k, use_gpu)
    weights = torch.from_numpy(similarities).div_(temperature).exp_()
    votes = torch.zeros(len(query_features), num_classes, dtype=weights.dtype)
    votes.scatter_add_(1, torch.from_numpy(memory_labels[neighbors]), weights)
    return votes.numpy()


def knn_evaluate(
    memory: FeatureSet,
    queries: FeatureSet,
    layer: str = "res5",
    ks: Sequence[int] = NPID_KS,
    temperature: float = NPID_TEMPERATURE,
    use_gpu: bool | None = None,
) -> dict[str, float]:
    """kNN top-1/top-5 of ``queries`` voted by ``memory`` (both labelled), for each ``k`` in ``ks``.

    Returns ``{"top1@20": %, "top5@20": %, "top1@200": %, ...}`` (percent).
    """
    if memory.labels is None or queries.labels is None:
        raise ValueError("kNN evaluation needs labels for both the memory and the query features")
    num_classes = int(max(memory.labels.max(), queries.labels.max())) + 1
    results = {}
    for k in ks:
        scores = knn_scores(memory.features[layer], memory.labels, queries.features[layer], k, temperature,
                            num_classes, use_gpu)
        for name, value in topk_accuracy(scores, queries.labels).items():
            results[f"{name}@{k}"] = value
    logger.info("kNN on %s (%d memory, %d queries, T=%g): %s", layer, len(memory), len(queries), temperature,
                ", ".join(f"{k} {v:.2f}" for k, v in results.items()))
    return results


def knn_on_cached_features(
    features_dir: str,
    train_split: str = "train",
    test_split: str = "test",
    layer: str = "res5",
    ks: Sequence[int] = NPID_KS,
    temperature: float = NPID_TEMPERATURE,
    use_gpu: bool | None = None,
) -> dict[str, float]:
    """``knn_evaluate`` of what ``extract_features`` wrote to ``features_dir``; the results also go
    to ``{features_dir}/knn_{layer}.json``."""
    memory = load_features(features_dir, train_split, (layer,))
    queries = load_features(features_dir, test_split, (layer,))
    results = knn_evaluate(memory, queries, layer, ks, temperature, use_gpu)
    report = {"layer": layer, "temperature": temperature, "memory": train_split, "queries": test_split,
              "num_memory": len(memory), "num_queries": len(queries), **results}
    with PathManager.open(os.path.join(features_dir, f"knn_{layer}.json"), "w") as f:
        json.dump(report, f, indent=2)
    return results
