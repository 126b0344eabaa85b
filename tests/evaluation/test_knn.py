"""Weighted kNN: perfect on separable features, chance on shuffled labels, NPID's vote weighting;
the kNN monitor hook logs knn_top1 and leaves the training alone."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from detectron2.config import instantiate
from detectron2.utils.events import EventStorage
from tolerances import U32, gamma

from d2ssl.data.mappers.classification import ClassificationMapper
from d2ssl.engine.train_loop import do_train
from d2ssl.evaluation.evaluator import topk_accuracy
from d2ssl.evaluation.features import FeatureSet
from d2ssl.evaluation.knn import knn_evaluate, knn_scores
from d2ssl.evaluation.knn_monitor import KNNMonitor
from d2ssl.evaluation.plots import plot_embedding_map, subsample_per_class
from d2ssl.modeling.backbone import build_resnet_trunk
from d2ssl.modeling.meta_arch.base import SSLMetaArch
from d2ssl.utils.metrics import read_metrics


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
    # float32: 0.8 and 0.6 stored (u each), rows and query normalised (gamma_{D+4} per value), the
    # D = 2 term inner product: similarities within gamma_16 of the exact ones (unit vectors), so
    # exp(s / 0.5) within gamma_16 / 0.5 relative, plus exp's ulp (2u) and a sum of <= 3 votes.
    rtol = gamma(16) / 0.5 + 2 * U32 + gamma(3)
    np.testing.assert_allclose(scores, [[np.exp(2.0), np.exp(1.6)]], rtol=rtol)
    # With k=3 the third neighbour joins class 1: exp(1.6) + exp(0) < exp(2), class 0 still wins.
    scores3 = knn_scores(memory, labels, query, k=3, temperature=0.5)
    np.testing.assert_allclose(scores3[0, 1], np.exp(1.6) + 1.0, rtol=rtol)
    assert topk_accuracy(scores3, np.array([0]), topk=(1,)) == {"top1": 100.0}
    with pytest.raises(ValueError, match="temperature > 0"):
        knn_scores(memory, labels, query, k=2, temperature=0.0)


def test_knn_monitor_leaves_the_training_state_alone(fashion_mnist_train):
    model = SSLMetaArch(build_resnet_trunk(depth=18, base_channels=8)).train()
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    monitor = KNNMonitor(fashion_mnist_train[:300], fashion_mnist_train[300:400],
                         ClassificationMapper(train=False, resize_size=32, crop_size=32), period=5, k=20)
    with EventStorage() as storage:
        monitor.trainer = SimpleNamespace(model=model, storage=storage, iter=3, max_iter=10)
        torch.manual_seed(7)
        expected = torch.rand(4)
        torch.manual_seed(7)
        monitor.after_step()  # iteration 4 of 10, period 5: not yet
        assert "knn_top1" not in storage.latest()
        monitor.trainer.iter = 4
        monitor.after_step()
        assert torch.equal(torch.rand(4), expected)  # the random stream is untouched
        top1 = storage.latest()["knn_top1"][0]
    # Random conv features of real photos are far above the 10% of chance.
    assert 30.0 < top1 <= 100.0
    assert model.training and model.trunk.training
    for k, v in model.state_dict().items():  # no BatchNorm statistic moved
        assert torch.equal(v, stats[k]), k


def test_knn_monitor_in_a_training_run(tiny_config):
    cfg = tiny_config("jigsaw", "train.max_iter=4", "train.log_period=2", "train.knn_monitor.period=2",
                      "train.knn_monitor.memory.limit=100", "train.knn_monitor.k=50",
                      "train.knn_monitor.queries.limit=50",
                      "dataloader.train.total_batch_size=8")
    do_train(cfg)
    values = [r["knn_top1"] for r in read_metrics(cfg.train.output_dir) if "knn_top1" in r]
    assert len(values) == 2
    # The last one (after iteration 3, the final weights) against the same kNN computed here without
    # d2ssl's feature extraction or kNN code: each photo alone through the trunk in eval mode, res5
    # averaged, cosine similarity, k = 50 nearest memory photos voting exp(similarity / 0.07).
    model = instantiate(cfg.model)
    model.load_state_dict(torch.load(f"{cfg.train.output_dir}/model_final.pth", weights_only=True)["model"])
    trunk, mapper = model.trunk.eval(), instantiate(cfg.train.knn_monitor.mapper)

    def features_and_labels(dicts):
        with torch.no_grad():
            rows = [trunk(mapper(d)["image"][None])["res5"].mean(dim=(2, 3))[0] for d in dicts]
        return torch.nn.functional.normalize(torch.stack(rows).double(), dim=1), [d["label"] for d in dicts]

    memory, memory_labels = features_and_labels(instantiate(cfg.train.knn_monitor.memory))
    queries, query_labels = features_and_labels(instantiate(cfg.train.knn_monitor.queries))
    similarity, nearest = (queries @ memory.T).topk(50, dim=1)
    hits = 0
    for q in range(len(queries)):
        votes = [0.0] * 10
        for sim, m in zip(similarity[q].tolist(), nearest[q].tolist()):
            votes[memory_labels[m]] += float(np.exp(sim / 0.07))
        hits += int(np.argmax(votes)) == query_labels[q]
    # Float32 batched features vs float64 one by one can flip a near-tie: one query of 50 at most.
    assert abs(values[-1] - 100.0 * hits / len(queries)) <= 100.0 / len(queries), (values, hits)


def test_embedding_map_png(tmp_path, photos):
    memory, _ = photos
    rows = subsample_per_class(memory.labels, 200)
    assert 190 <= len(rows) <= 200 and len(np.unique(memory.labels[rows])) == 10
    xy = plot_embedding_map(memory.features["res5"], memory.labels, str(tmp_path / "map.png"), max_points=200)
    assert xy.shape == (len(rows), 2) and np.isfinite(xy).all()
    assert (tmp_path / "map.png").read_bytes()[:4] == b"\x89PNG"
