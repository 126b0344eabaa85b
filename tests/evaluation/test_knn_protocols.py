"""kNN protocols (d2ssl.evaluation.knn): NPID's memory-bank kNN and VISSL's nearest-neighbour benchmark
as their reference code runs them, against numpy oracles written from the references' formulas; the
temperature is honoured; top-5 fills zero-vote classes by ascending index; k above the memory size is
refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from d2ssl.data.mappers.classification import ClassificationMapper
from d2ssl.evaluation.features import FeatureSet, _layer_path, _paths
from d2ssl.evaluation.knn import (
    knn_evaluate,
    knn_on_cached_features,
    knn_scores,
    knn_topk_accuracy,
    npid_bank_knn,
    npid_bank_knn_from_config,
    ranked_classes,
)
from d2ssl.losses.nce import NCELossWithMemory
from d2ssl.modeling.backbone import build_resnet_trunk
from d2ssl.modeling.heads import mlp_head
from d2ssl.modeling.meta_arch.npid import NPID


def oracle_topk(memory: np.ndarray, memory_labels: np.ndarray, queries: np.ndarray, query_labels: np.ndarray,
                k: int, temperature: float, num_classes: int, normalize: bool) -> dict[str, float]:
    """NPID's kNN (lemniscate test.py l.106-123) in float64 numpy: similarities (cosine or raw dot),
    the k largest, weights exp(s / T) summed per class, classes ranked by votes (ties: lower index)."""
    memory, queries = memory.astype(np.float64), queries.astype(np.float64)
    if normalize:
        memory = memory / np.linalg.norm(memory, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = queries @ memory.T
    top1 = top5 = 0
    for q in range(len(queries)):
        nearest = np.argsort(-sims[q], kind="stable")[:k]
        votes = np.zeros(num_classes)
        for j in nearest:
            votes[memory_labels[j]] += np.exp(sims[q, j] / temperature)
        ranking = np.argsort(-votes, kind="stable")
        top1 += ranking[0] == query_labels[q]
        top5 += query_labels[q] in ranking[:5]
    return {"top1": 100.0 * top1 / len(queries), "top5": 100.0 * top5 / len(queries)}


def _random_sets(seed: int, n_memory: int = 300, n_queries: int = 60, dim: int = 16, classes: int = 10,
                 scale: float = 1.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    mem_labels, query_labels = rng.integers(0, classes, n_memory), rng.integers(0, classes, n_queries)
    memory = (centres[mem_labels] + 1.5 * rng.normal(size=(n_memory, dim))) * scale
    queries = (centres[query_labels] + 1.5 * rng.normal(size=(n_queries, dim))) * scale
    return memory.astype(np.float32), mem_labels, queries.astype(np.float32), query_labels


# ---------------------------------------------------------------- k and the temperature


def test_k_larger_than_the_memory_is_refused_naming_k_and_the_memory_size():
    memory, labels, queries, query_labels = _random_sets(0, n_memory=50)
    with pytest.raises(ValueError, match=r"k=200 is larger than the memory set \(50 images\)"):
        knn_scores(memory, labels, queries, k=200)
    with pytest.raises(ValueError, match=r"k=51 .*choose k <= 50"):
        knn_evaluate(FeatureSet({"res5": memory}, labels, np.arange(50)),
                     FeatureSet({"res5": queries}, query_labels, np.arange(len(queries))), ks=(20, 51))


def test_temperature_changes_the_prediction_as_npid_formula_says():
    # One class-0 neighbour at cosine 1 against two class-1 neighbours at cosine s: class 0 wins iff
    # exp(1/T) > 2 exp(s/T), i.e. s < 1 - T ln 2 (0.9515 at T 0.07, 0.9307 at T 0.1). s = 0.94 sits
    # between: T 0.07 predicts class 0, T 0.1 class 1. A kNN that ignored its temperature (ran at
    # the default 0.07) would answer class 0 at T 0.1.
    s = 0.94
    other = np.sqrt(1 - s * s)
    memory = np.array([[1.0, 0.0, 0.0], [s, other, 0.0], [s, 0.0, other]], np.float32)
    labels = np.array([0, 1, 1])
    mem, query = FeatureSet({"res5": memory}, labels, np.arange(3)), FeatureSet(
        {"res5": np.array([[1.0, 0.0, 0.0]], np.float32)}, np.array([1]), np.arange(1))
    assert knn_evaluate(mem, query, ks=(3,), temperature=0.07)["top1@3"] == 0.0
    assert knn_evaluate(mem, query, ks=(3,), temperature=0.1)["top1@3"] == 100.0


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_knn_evaluate_matches_a_numpy_oracle_at_the_temperature_given(temperature):
    memory, labels, queries, query_labels = _random_sets(1)
    got = knn_evaluate(FeatureSet({"res5": memory}, labels, np.arange(len(memory))),
                       FeatureSet({"res5": queries}, query_labels, np.arange(len(queries))),
                       ks=(20,), temperature=temperature)
    want = oracle_topk(memory, labels, queries, query_labels, 20, temperature, 10, normalize=True)
    assert (got["top1@20"], got["top5@20"]) == (want["top1"], want["top5"])
    # The votes themselves: float32 cosines are within ~D * 2^-24 (1e-6) of the float64 ones, which
    # moves exp(s / T) by a relative 1e-6 / T <= 1e-5; summing <= 20 such terms adds 20 * 2^-24.
    votes = knn_scores(memory, labels, queries, k=20, temperature=temperature, num_classes=10)
    m = memory / np.linalg.norm(memory, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = q.astype(np.float64) @ m.T.astype(np.float64)
    want_votes = np.zeros((len(q), 10))
    for i in range(len(q)):
        for j in np.argsort(-sims[i])[:20]:
            want_votes[i, labels[j]] += np.exp(sims[i, j] / temperature)
    np.testing.assert_allclose(votes, want_votes, rtol=2e-5, atol=0)


# ---------------------------------------------------------------- top-5 with few voting classes


def test_top5_fills_zero_vote_classes_by_ascending_index():
    votes = torch.tensor([[0.0, 3.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0]])
    assert ranked_classes(votes)[0].tolist() == [1, 4, 0, 2, 3, 5, 6, 7]
    # Only classes 1 and 4 got votes: 0, 2, 3 fill the top-5 (a hit for label 0), 5..7 do not.
    assert knn_topk_accuracy(votes, np.array([0])) == {"top1": 0.0, "top5": 100.0}
    assert knn_topk_accuracy(votes, np.array([5])) == {"top1": 0.0, "top5": 0.0}
    # With 1000 classes torch's default (unstable) sort and topk order the zero-vote classes
    # arbitrarily (e.g. 671, 657, ... on the CPU); the stable ranking stays by index.
    many = torch.zeros(2, 1000)
    many[0, 500], many[1, 7] = 1.0, 2.0
    assert ranked_classes(many)[:, :5].tolist() == [[500, 0, 1, 2, 3], [7, 0, 1, 2, 3]]
    assert knn_topk_accuracy(many, np.array([3, 4])) == {"top1": 0.0, "top5": 50.0}


# ---------------------------------------------------------------- VISSL's protocol


def _write_cache(folder, split: str, features: np.ndarray, labels: np.ndarray) -> None:
    paths = _paths(str(folder), split)
    np.save(_layer_path(str(folder), split, "res5"), features)
    np.save(paths["labels"], labels.astype(np.int64))
    np.save(paths["indices"], np.arange(len(labels), dtype=np.int64))
    with open(paths["meta"], "w") as f:
        json.dump({"num_images": len(labels), "dims": {"res5": features.shape[1]}, "layers": ["res5"],
                   "has_labels": True}, f)


def test_vissl_protocol_is_k200_sigma01_on_raw_inner_products(tmp_path):
    memory, labels, queries, query_labels = _random_sets(2, n_memory=256, scale=0.3)
    _write_cache(tmp_path, "train", memory, labels)
    _write_cache(tmp_path, "test", queries, query_labels)
    got = knn_on_cached_features(str(tmp_path), protocol="vissl")
    want = oracle_topk(memory, labels, queries, query_labels, 200, 0.1, 10, normalize=False)
    assert got == {"top1@200": want["top1"], "top5@200": want["top5"]}
    # Raw inner products are not cosines: the cosine kNN gives another answer on these features.
    cosine = oracle_topk(memory, labels, queries, query_labels, 200, 0.1, 10, normalize=True)
    assert cosine["top1"] != want["top1"]
    report = json.loads((tmp_path / "knn_vissl_res5.json").read_text())
    assert (report["protocol"], report["temperature"], report["l2_normalized"]) == ("vissl", 0.1, False)
    # --l2-norm / --temperature / --k override the protocol's values.
    normalized = knn_on_cached_features(str(tmp_path), protocol="vissl", normalize=True)
    assert normalized["top1@200"] == cosine["top1"]


def test_vissl_protocol_refuses_overflowing_vote_weights(tmp_path):
    memory, labels, queries, query_labels = _random_sets(3, n_memory=256, scale=30.0)
    _write_cache(tmp_path, "train", memory, labels)
    _write_cache(tmp_path, "test", queries, query_labels)
    with pytest.raises(ValueError, match="overflow float32.*not L2-normalised"):
        knn_on_cached_features(str(tmp_path), protocol="vissl")


# ---------------------------------------------------------------- NPID's memory-bank protocol


def _tiny_npid(num_train: int) -> NPID:
    torch.manual_seed(0)
    trunk = build_resnet_trunk(depth=18, base_channels=8, norm="BN", out_features=("res5",))
    loss = NCELossWithMemory(num_train, loss_type="cross_entropy", memory_params={"embedding_dim": 16},
                             negative_sampling_params={"num_negatives": 8})
    return NPID(trunk, mlp_head([64, 16]), loss)


def test_npid_bank_protocol_scores_head_embeddings_against_the_stored_bank(fashion_mnist_small):
    train, test = fashion_mnist_small[:256], [dict(d) for d in fashion_mnist_small[256:296]]
    model = _tiny_npid(len(train))
    labels = np.array([d["label"] for d in train])
    # A bank that knows the classes (as a trained one would): each row near its class's direction,
    # unit norm as the bank update leaves it; not what the trunk gives for these images.
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(10, 16))
    bank = directions[labels] + 0.5 * rng.normal(size=(len(train), 16))
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    model.loss.memory.copy_(torch.from_numpy(bank).float())
    mapper = ClassificationMapper(train=False, resize_size=32, crop_size=32)
    got = npid_bank_knn(model, train, test, mapper)  # k 200, T 0.07: lemniscate main.py l.177/203

    model.eval()
    with torch.no_grad():
        images = torch.stack([mapper(d)["image"] for d in test]).float()
        embedding = model.head(model.pooled_features(images)).double().numpy()
    embedding /= np.linalg.norm(embedding, axis=1, keepdims=True)
    want = oracle_topk(bank.astype(np.float32), labels, embedding, np.array([d["label"] for d in test]),
                       200, 0.07, 10, normalize=False)
    assert got == {"top1@200": want["top1"], "top5@200": want["top5"]}

    # Bank rows are labelled by image_id: another training set than the bank's is refused.
    with pytest.raises(ValueError, match="the bank holds 256 training images but .* 255"):
        npid_bank_knn(model, train[:255], test, mapper)


def test_npid_bank_from_config_loads_the_whole_checkpoint(tiny_config, tmp_path, fashion_mnist_small):
    cfg = tiny_config("npid", "dataloader.train.dataset.limit=256",
                      "model.loss.negative_sampling_params.num_negatives=64")
    from detectron2.config import instantiate

    from d2ssl.engine.train_loop import fill_num_train_samples

    fill_num_train_samples(cfg.model, 256)
    model = instantiate(cfg.model)
    model.loss.memory.copy_(torch.nn.functional.normalize(torch.randn_like(model.loss.memory), dim=1))
    checkpoint = tmp_path / "model_final.pth"
    torch.save({"model": model.state_dict()}, checkpoint)
    test = fashion_mnist_small[300:340]
    mapper = ClassificationMapper(train=False, resize_size=32, crop_size=32)
    train = instantiate(cfg.dataloader.train.dataset)
    want = npid_bank_knn(model, train, test, mapper)
    got = npid_bank_knn_from_config(cfg, str(checkpoint), test, mapper, output_json=str(tmp_path / "k.json"))
    assert got == want
    assert json.loads((tmp_path / "k.json").read_text())["protocol"] == "npid_bank"
    # A config whose training set is not the checkpoint's: refused, naming both sizes.
    other = tiny_config("npid", "dataloader.train.dataset.limit=200",
                        "model.loss.negative_sampling_params.num_negatives=64")
    with pytest.raises(ValueError, match="memory bank has 256 rows but .* training data set has 200"):
        npid_bank_knn_from_config(other, str(checkpoint), test, mapper)
