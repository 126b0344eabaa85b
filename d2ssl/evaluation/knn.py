"""Weighted k-nearest-neighbour classification (NPID's vote), under three named protocols.

As ``kNN`` in NPID's ``lemniscate.pytorch/test.py`` (Wu et al. 2018): features of the labelled
"memory" images and of the test images are L2-normalised; each test image takes its ``k`` most
similar memory images by cosine similarity ``s``; each neighbour votes for its class with weight
``exp(s / temperature)``; classes are ranked by summed votes (top-1, top-5). NPID reports k=200
(and 20) with temperature 0.07 (its ``--nce-t``); VISSL's ``nearest_neighbor`` benchmark configs use
``TOPK: 200``, ``SIGMA: 0.1``. The neighbour search is faiss's exact inner-product index
(``IndexFlatIP``), on the GPUs when faiss-gpu and a GPU are there.

Protocols (``PROTOCOLS``; ``tools/knn_eval.py --protocol``), each what its reference code runs:

- ``trunk``: the formula above on cached, globally pooled trunk features of the centre view of both
  splits (d2ssl's own; ``k`` 20 and 200, ``T`` 0.07).
- ``npid_bank``: NPID's published ImageNet kNN, lemniscate.pytorch f7cfe29 ``main.py`` l.177/203
  (``kNN(..., 200, args.nce_t)``, ``recompute_memory=0``; ``--nce-t`` 0.07, l.72) and ``test.py``
  ``kNN`` l.67-135: the L2-normalised embedding-head output of each test image (``models/resnet.py``
  l.151-152) against the MEMORY BANK rows as they are stored (``lemniscate.memory``, l.74; not
  recomputed, not re-normalised), labelled by the training set in bank-row (``image_id``) order.
- ``vissl``: VISSL 09270ed ``vissl/utils/knn_utils.py`` ``run_knn_at_layer`` l.207-290 with
  ``configs/config/benchmark/nearest_neighbor/eval_resnet_8gpu_in1k_kNN.yaml`` l.63-66: ``TOPK`` 200,
  ``SIGMA`` 0.1 and ``L2_NORM_FEATS: False``, i.e. raw inner products of the features, not cosines.
  Its features are the cached layer named (the yaml reads the output of the model's heads, l.43-52,
  which d2ssl's extraction does not cache: extract that output to compare with VISSL's numbers).
  With fewer than five classes VISSL reports top-5 as 0 (``Accuracies.from_batch`` l.85-88); here
  every query counts as a top-5 hit then, as in the other protocols.

Classes are ranked by a stable descending sort of the votes (``ranked_classes``): both references
rank with ``probs.sort(1, True)`` (test.py l.116, knn_utils.py l.317), whose order among equal votes
torch leaves unspecified, so when fewer than five classes got votes the classes that fill the top-5 are
the reference's accident; here they are the lowest class indices, which is what that sort gives on the
CPU for small class counts (``test_top5_fills_zero_vote_classes_by_ascending_index``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence

import faiss
import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.utils.file_io import PathManager
from omegaconf import DictConfig
from torch import nn
from torch.nn import functional as F

from d2ssl.evaluation.features import FeatureSet, load_features
from d2ssl.losses.nce import NCELossWithMemory

logger = logging.getLogger(__name__)

NPID_KS = (20, 200)
NPID_TEMPERATURE = 0.07
NPID_BANK_K = 200  # lemniscate main.py l.177/203
VISSL_TOPK, VISSL_SIGMA = 200, 0.1
PROTOCOLS = ("trunk", "npid_bank", "vissl")


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
    memory: np.ndarray, queries: np.ndarray, k: int, use_gpu: bool | None = None, normalize: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Similarities ``(Q, k)`` and memory indices ``(Q, k)`` of each query's ``k`` nearest memory rows
    (most similar first): cosines, or raw inner products with ``normalize=False`` (VISSL's
    ``L2_NORM_FEATS: False``). ``use_gpu=None``: GPU when faiss can use one.

    ``k`` larger than the memory is refused: both references call ``topk(K)`` on all memory rows,
    which fails there too, and voting with fewer neighbours than asked would report a different k."""
    if k > len(memory):
        raise ValueError(
            f"kNN k={k} is larger than the memory set ({len(memory)} images): each query would vote with "
            f"fewer than k neighbours; choose k <= {len(memory)} or a larger memory split"
        )
    if normalize:
        memory, queries = l2_normalize(memory), l2_normalize(queries)
    else:
        memory = np.ascontiguousarray(memory, dtype=np.float32)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
    index = faiss.IndexFlatIP(memory.shape[1])
    if _use_gpu(use_gpu):
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(memory)
    return index.search(queries, k)


def knn_scores(
    memory_features: np.ndarray,
    memory_labels: np.ndarray,
    query_features: np.ndarray,
    k: int = 200,
    temperature: float = NPID_TEMPERATURE,
    num_classes: int | None = None,
    use_gpu: bool | None = None,
    normalize: bool = True,
) -> np.ndarray:
    """``(Q, C)`` summed votes ``sum over the k neighbours of class c of exp(similarity / T)``
    (similarity: cosine, or the raw inner product with ``normalize=False``)."""
    if k < 1 or temperature <= 0:
        raise ValueError(f"kNN needs k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    memory_labels = np.asarray(memory_labels, dtype=np.int64)
    if len(memory_labels) != len(memory_features):
        raise ValueError(f"{len(memory_features)} memory features but {len(memory_labels)} labels")
    num_classes = num_classes or int(memory_labels.max()) + 1
    similarities, neighbors = nearest_neighbors(memory_features, query_features, k, use_gpu, normalize)
    weights = torch.from_numpy(similarities).div_(temperature).exp_()
    if not torch.isfinite(weights).all():
        # Unnormalised features (VISSL's L2_NORM_FEATS False) can overflow exp(s / T) in float32; the
        # reference then multiplies inf by its one-hot zeros and ranks NaNs: refuse instead.
        raise ValueError(
            f"kNN vote weights exp(similarity / {temperature}) overflow float32 (largest similarity "
            f"{float(np.max(similarities)):.4g}): the features are not L2-normalised; normalise them "
            f"(--l2-norm) or use a larger temperature"
        )
    votes = torch.zeros(len(query_features), num_classes, dtype=weights.dtype)
    votes.scatter_add_(1, torch.from_numpy(memory_labels[neighbors]), weights)
    return votes.numpy()


def ranked_classes(votes: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(Q, C)`` votes -> ``(Q, C)`` class indices, most votes first, equal votes by ascending class
    index (a stable sort; see the module docstring for why)."""
    return torch.sort(torch.as_tensor(votes), dim=1, descending=True, stable=True).indices


def knn_topk_accuracy(votes: np.ndarray | torch.Tensor, labels: np.ndarray,
                      topk: Sequence[int] = (1, 5)) -> dict[str, float]:
    """``{"top1": %, "top5": %}``: the label among the first ``k`` of ``ranked_classes`` (all rows
    count when ``k`` is at least the number of classes)."""
    ranked = ranked_classes(votes)
    hits = ranked == torch.as_tensor(np.asarray(labels), dtype=torch.int64).view(-1, 1)
    return {f"top{k}": 100.0 * float(hits[:, :k].any(dim=1).sum()) / len(labels) for k in topk}


def knn_evaluate(
    memory: FeatureSet,
    queries: FeatureSet,
    layer: str = "res5",
    ks: Sequence[int] = NPID_KS,
    temperature: float = NPID_TEMPERATURE,
    use_gpu: bool | None = None,
    normalize: bool = True,
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
                            num_classes, use_gpu, normalize)
        for name, value in knn_topk_accuracy(scores, queries.labels).items():
            results[f"{name}@{k}"] = value
    logger.info("kNN on %s (%d memory, %d queries, T=%g): %s", layer, len(memory), len(queries), temperature,
                ", ".join(f"{k} {v:.2f}" for k, v in results.items()))
    return results


def knn_on_cached_features(
    features_dir: str,
    train_split: str = "train",
    test_split: str = "test",
    layer: str = "res5",
    ks: Sequence[int] | None = None,
    temperature: float | None = None,
    use_gpu: bool | None = None,
    protocol: str = "trunk",
    normalize: bool | None = None,
) -> dict[str, float]:
    """``knn_evaluate`` of what ``extract_features`` wrote to ``features_dir`` under ``protocol``
    ``"trunk"`` (defaults: ``ks`` 20, 200, ``T`` 0.07, cosine) or ``"vissl"`` (200, 0.1, raw inner
    product as VISSL's in1k kNN yaml); ``None`` takes the protocol's value. The results also go to
    ``{features_dir}/knn_{layer}.json`` (``knn_vissl_{layer}.json`` for VISSL's protocol)."""
    defaults = {"trunk": (NPID_KS, NPID_TEMPERATURE, True), "vissl": ((VISSL_TOPK,), VISSL_SIGMA, False)}
    if protocol not in defaults:
        raise ValueError(
            f"protocol {protocol!r} does not read cached features; choose one of {sorted(defaults)} (the "
            f"npid_bank protocol reads a checkpoint: npid_bank_knn_from_config)"
        )
    ks = list(ks or defaults[protocol][0])
    temperature = defaults[protocol][1] if temperature is None else temperature
    normalize = defaults[protocol][2] if normalize is None else normalize
    memory = load_features(features_dir, train_split, (layer,))
    queries = load_features(features_dir, test_split, (layer,))
    results = knn_evaluate(memory, queries, layer, ks, temperature, use_gpu, normalize)
    report = {"protocol": protocol, "layer": layer, "temperature": temperature, "l2_normalized": normalize,
              "memory": train_split, "queries": test_split, "num_memory": len(memory),
              "num_queries": len(queries), **results}
    name = f"knn_{layer}.json" if protocol == "trunk" else f"knn_{protocol}_{layer}.json"
    with PathManager.open(os.path.join(features_dir, name), "w") as f:
        json.dump(report, f, indent=2)
    return results


# ------------------------------------------------------------------ NPID's memory-bank protocol


def bank_of(model: nn.Module) -> NCELossWithMemory:
    """The ``NCELossWithMemory`` of an NPID / PIRL model (``model.loss``), or an error saying what
    the model is."""
    loss = getattr(model, "loss", None)
    if not isinstance(loss, NCELossWithMemory):
        raise ValueError(
            f"the npid_bank kNN protocol needs a model with a memory bank (NPID, PIRL: model.loss is an "
            f"NCELossWithMemory); {type(model).__name__} has none: use --protocol trunk or vissl"
        )
    return loss


def default_embedding_head(model: nn.Module) -> str:
    """``"head"`` (NPID) or ``"image_head"`` (PIRL: the image embedding is what updates the bank,
    ``update_mem_with_emb_index=1``)."""
    for name in ("head", "image_head"):
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    raise ValueError(f"{type(model).__name__} has neither .head nor .image_head: name the embedding head")


@torch.no_grad()
def head_embeddings(model: nn.Module, images: Sequence[dict], mapper: Callable[[dict], dict],
                    head: str | None = None, batch_size: int = 256) -> np.ndarray:
    """``(N, D)`` float32 L2-normalised ``head(pooled trunk feature)`` of each image's ``mapper`` view,
    in data set order, the model in eval mode (restored after). NPID's network ends in an L2 norm
    (lemniscate ``models/resnet.py`` l.151-152); d2ssl's loss normalises instead, so it is done here."""
    head_module = getattr(model, head or default_embedding_head(model))
    was_training = model.training
    model.eval()
    try:
        rows = []
        for start in range(0, len(images), batch_size):
            batch = [mapper(d) for d in images[start:start + batch_size]]
            embedding = head_module(model.pooled_features(model.stack(batch, "image")))
            rows.append(F.normalize(embedding.float(), dim=1).cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)


def bank_labels(model: nn.Module, train_images: Sequence[dict]) -> np.ndarray:
    """Labels of the bank's rows: row ``i`` is the training image with ``image_id`` ``i`` (the
    loader's index, ``d2ssl.data.datasets``). ``train_images`` must be the data set the bank was trained
    on: same count as the loss's ``num_train_samples``, ``image_id`` exactly ``0..N-1``, all labelled."""
    loss = bank_of(model)
    ids = sorted(int(d["image_id"]) for d in train_images)
    if len(train_images) != loss.num_train_samples or ids != list(range(len(train_images))):
        raise ValueError(
            f"the bank holds {loss.num_train_samples} training images but the training data set given has "
            f"{len(train_images)} with image_id {ids[:1]}..{ids[-1:]}: bank rows are labelled by "
            f"image_id, so the data set must be the one the checkpoint was pretrained on, unchanged"
        )
    if not all("label" in d for d in train_images):
        raise ValueError("the npid_bank protocol labels bank rows by the training images' labels; some "
                         "training images have none: use a labelled training set")
    labels = np.empty(len(train_images), np.int64)
    for d in train_images:
        labels[int(d["image_id"])] = int(d["label"])
    return labels


def npid_bank_knn(
    model: nn.Module,
    train_images: Sequence[dict],
    test_images: Sequence[dict],
    mapper: Callable[[dict], dict],
    k: int = NPID_BANK_K,
    temperature: float = NPID_TEMPERATURE,
    head: str | None = None,
    batch_size: int = 256,
    use_gpu: bool | None = None,
) -> dict[str, float]:
    """NPID's published kNN (module docstring): each test image's normalised embedding against the
    bank rows as stored, ``k`` 200, ``T`` 0.07. Returns ``{"top1@200": %, "top5@200": %}``."""
    labels = bank_labels(model, train_images)
    bank = bank_of(model).memory[: len(labels)].float().cpu().numpy()
    queries = head_embeddings(model, test_images, mapper, head, batch_size)
    if queries.shape[1] != bank.shape[1]:
        raise ValueError(f"the embedding head gives {queries.shape[1]}-d embeddings but the bank rows are "
                         f"{bank.shape[1]}-d: name the head that feeds the bank")
    query_labels = np.array([int(d["label"]) for d in test_images])
    num_classes = int(max(labels.max(), query_labels.max())) + 1
    # normalize=False: the queries are unit vectors already and the bank is used as stored (test.py l.74).
    votes = knn_scores(bank, labels, queries, k, temperature, num_classes, use_gpu, normalize=False)
    results = {f"{name}@{k}": value for name, value in knn_topk_accuracy(votes, query_labels).items()}
    logger.info("kNN npid_bank (%d bank rows, %d queries, k=%d, T=%g): %s", len(labels), len(test_images), k,
                temperature, ", ".join(f"{n} {v:.2f}" for n, v in results.items()))
    return results


def npid_bank_knn_from_config(cfg: DictConfig, checkpoint: str, test_images: Sequence[dict],
                              mapper: Callable[[dict], dict], k: int = NPID_BANK_K,
                              temperature: float = NPID_TEMPERATURE, head: str | None = None,
                              output_json: str = "") -> dict[str, float]:
    """``npid_bank_knn`` of the NPID / PIRL model of a pretraining config (``cfg.model``, its
    ``dataloader.train.dataset`` labelling the bank) with every weight and the bank of ``checkpoint``
    (a d2ssl run's ``model_final.pth``: loaded strictly, without unpickling code)."""
    from d2ssl.checkpoint.load import read_state_dict
    from d2ssl.engine.train_loop import fill_num_train_samples

    train_images = instantiate(cfg.dataloader.train.dataset)
    fill_num_train_samples(cfg.model, len(train_images))
    model = instantiate(cfg.model)
    state_dict, _ = read_state_dict(checkpoint)
    bank = state_dict.get("loss.memory")
    if bank is not None and bank.shape[0] != bank_of(model).memory.shape[0]:
        raise ValueError(
            f"{checkpoint}: its memory bank has {bank.shape[0]} rows but the config's training data set has "
            f"{len(train_images)} images: give the config (and overrides) the checkpoint was pretrained with"
        )
    try:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"{checkpoint} does not fit the config's model: {e}; give the config it was "
                         f"pretrained with") from e
    if missing or unexpected:
        raise ValueError(f"{checkpoint} does not fit the config's model: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}; give the config it was pretrained with")
    model.to(cfg.train.get("device", "cpu"))
    results = npid_bank_knn(model, train_images, test_images, mapper, k, temperature, head)
    if output_json:
        report = {"protocol": "npid_bank", "checkpoint": checkpoint, "temperature": temperature,
                  "num_memory": len(train_images), "num_queries": len(test_images), **results}
        with PathManager.open(output_json, "w") as f:
            json.dump(report, f, indent=2)
    return results
