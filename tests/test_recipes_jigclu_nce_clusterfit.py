"""The configs that cite a published number run, by default, what the reference CODE ran for it.

Every expected value below is written down from the reference code, with the file and line it comes
from: JigClu = github.com/dvlab-research/JigsawClustering at commit 1490f3b, VISSL =
github.com/facebookresearch/vissl at commit 09270ed. The configs are loaded and their optimizer, lr
schedule, mapper and loss instantiated without data; learning rates are compared per parameter group at
several epochs. A config whose value drifts from the reference fails here.
"""

from __future__ import annotations

import bisect
import math
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
from detectron2.config import instantiate
from torchvision import transforms as T

from d2ssl.data.mappers.image import ImageMapper
from d2ssl.engine.schedules import vissl_linear_warmup_start, vissl_warmup_multistep
from d2ssl.engine.train_loop import scale_to_world_size, setup_config
from d2ssl.evaluation import clustering
from d2ssl.evaluation.clustering import (
    cluster_and_label,
    fit_pca,
    l2_normalize,
    preprocess_features,
    run_kmeans,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# detectron2's own list of the modules whose parameters get weight_decay_norm (get_default_optimizer_params).
NORM_TYPES = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.SyncBatchNorm, torch.nn.GroupNorm,
              torch.nn.LayerNorm)
# Relative tolerance of learning rates: products of a few float64 factors (gamma powers, ratios).
LR_RTOL = 1e-12


def _config(name: str, *overrides: str):
    return setup_config(str(CONFIGS / name), list(overrides))


def _optimizer_on(cfg, modules: dict[str, torch.nn.Module] | torch.nn.Module):
    """The config's optimizer over ``modules`` (parameters on the meta device: nothing allocated)."""
    model = modules if isinstance(modules, torch.nn.Module) else torch.nn.ModuleDict(modules)
    cfg.optimizer.params.model = model
    return model, instantiate(cfg.optimizer)


def _meta(node):
    with torch.device("meta"):
        return instantiate(node)


def _group_of(optimizer, model) -> dict[str, dict]:
    """Parameter name -> its param group."""
    by_id = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    return {name: by_id[id(p)] for name, p in model.named_parameters()}


def _norm_param_names(model) -> set[str]:
    return {f"{m_name}.{p_name}" if m_name else p_name
            for m_name, m in model.named_modules() if isinstance(m, NORM_TYPES)
            for p_name, _ in m.named_parameters(recurse=False)}


def _lr_at(group: dict, schedule, epoch: float, num_epochs: int) -> float:
    # detectron2's LRMultiplier: initial lr of the group x multiplier(iteration / max_iter).
    return group["lr"] * schedule(epoch / num_epochs)


def _assert_all_equal(values, expected: float, rel: float, what) -> None:
    ok = values and all(v == pytest.approx(expected, rel=rel) for v in values)
    assert ok, (what, sorted(set(values)), expected)


# ------------------------------------------------------------------ JigClu semi-supervised (item 1)

def jigclu_semi_lr(epoch: int, lr: float, schedule=(30, 60, 90)) -> float:
    """main_semi.py l. 559-568 (the second adjust_learning_rate, which overrides l. 551-557), called at
    the start of every epoch (l. 341-344): ``args.lr`` x 0.1 per milestone passed, into EVERY group."""
    for milestone in schedule:
        lr *= 0.1 if epoch >= milestone else 1.0
    return lr


# README l. 103-104 / 117-118: --lr 0.01 (10 %) and 0.02 (1 %), --wd 0.0, --batch-size 256; main_semi.py
# l. 43 (epochs 100), l. 56 (schedule 30 60 90), l. 58 (momentum 0.9), l. 257-263 (torch SGD: no nesterov).
SEMI = {"semi_jigclu_R50_10percent.py": 0.01, "semi_jigclu_R50_1percent.py": 0.02}
# README l. 104 / 118: --lr-last-layer 0.2 (10 %) and 5.0 (1 %): the opt-in _lastlayer_lr configs.
SEMI_LAST_LAYER_FLAG = {"semi_jigclu_R50_10percent_lastlayer_lr.py": (0.01, 0.2),
                        "semi_jigclu_R50_1percent_lastlayer_lr.py": (0.02, 5.0)}
SEMI_EPOCHS = [0, 1, 29, 30, 59, 60, 89, 90, 99]


def _semi_optimizer(name: str):
    cfg = _config(f"eval/{name}", "model.trunk.norm=BN")  # SyncBN needs a process group; same params
    model, optimizer = _optimizer_on(cfg, _meta(cfg.model))
    return cfg, model, optimizer, instantiate(cfg.lr_multiplier)


@pytest.mark.parametrize("name", sorted(SEMI))
def test_semi_jigclu_trains_every_layer_at_the_rate_main_semi_set_every_epoch(name):
    lr = SEMI[name]
    cfg, model, optimizer, schedule = _semi_optimizer(name)
    groups = _group_of(optimizer, model)
    assert any(n.startswith("heads.") for n in groups) and any(n.startswith("trunk.") for n in groups)
    for epoch in SEMI_EPOCHS:
        for part in ("trunk.", "heads."):  # the fc (heads.) included: adjust_learning_rate overwrote it
            lrs = [_lr_at(g, schedule, e, 100) for n, g in groups.items() if n.startswith(part)
                   for e in (epoch, epoch + 0.5)]
            _assert_all_equal(lrs, jigclu_semi_lr(epoch, lr), LR_RTOL, (part, epoch))
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.0}
    assert (cfg.optimizer.momentum, cfg.optimizer.nesterov) == (0.9, False)
    assert (cfg.dataloader.train.total_batch_size, cfg.train.epochs) == (256, 100)
    assert not model.freeze_trunk
    # main_semi.py l. 300-305: RandomResizedCrop(224) (scale 0.08-1) then RandomHorizontalFlip.
    mapper = cfg.dataloader.train.mapper
    crop_scale = tuple(mapper.get("crop_scale", (0.08, 1.0)))
    assert (mapper.train, mapper.crop_size, crop_scale) == (True, 224, (0.08, 1.0))


@pytest.mark.parametrize("name", sorted(SEMI_LAST_LAYER_FLAG))
def test_semi_jigclu_lastlayer_lr_option_trains_the_fc_at_the_flags_rate(name):
    lr, last_layer_lr = SEMI_LAST_LAYER_FLAG[name]
    _, model, optimizer, schedule = _semi_optimizer(name)
    for n, g in _group_of(optimizer, model).items():
        base = last_layer_lr if n.startswith("heads.") else lr
        for epoch in (0, 30, 99):
            assert _lr_at(g, schedule, epoch, 100) == pytest.approx(jigclu_semi_lr(epoch, base), rel=LR_RTOL)


# ------------------------------------------------------------------ NPID / PIRL (item 2)

NCE_CONFIGS = sorted(p.name for pattern in ("npid*.py", "pirl*.py") for p in CONFIGS.glob(pattern))


@pytest.mark.parametrize("name", NCE_CONFIGS)
def test_nce_configs_draw_negatives_as_vissl_from_all_rows(name):
    # vissl/losses/nce_loss.py l. 300-311: AliasMethod over torch.ones(nLem), every row; l. 290-298:
    # batch x (K + 1) draws with replacement, column 0 overwritten by the positive: the positive can be
    # drawn among the K negatives.
    cfg = _config(name)
    cfg.model.loss.num_train_samples = 40000  # > PIRL / NPID++'s 32000 negatives; the bank is 20 MB
    loss = instantiate(cfg.model.loss)
    assert loss.exclude_positive is False
    # VISSL's draw lets a row's own index come back among its negatives.
    sampling = dict(cfg.model.loss.negative_sampling_params, num_negatives=4)
    small = type(loss)(num_train_samples=4, negative_sampling_params=sampling)
    negatives = small.sample_negatives(torch.zeros(64, dtype=torch.long), torch.Generator().manual_seed(0))
    assert (negatives == 0).any()
    # npid_8gpu_resnet.yaml l. 50-61, npid++_4nodes_resnet.yaml l. 51-59, pirl_jigsaw_4node_resnet50.yaml
    # l. 72-84, and for what they leave out vissl/config/defaults.yaml l. 1016-1025 (loss_type nce,
    # loss_weights [1.0]); the PIRL _mlp variants: models/resnet50_mlphead.yaml l. 24 and 27 (InfoNCE, T 0.1).
    num_negatives = 4096 if name.startswith("npid_R") else 32000
    assert loss.num_negatives == num_negatives and loss.momentum == 0.5 and loss.norm_embedding
    assert float(loss.norm_constant) == -1 and loss.memory.shape == (40000, 128)
    if name.startswith("pirl"):
        assert loss.loss_weights == [0.5, 0.5] and not loss.update_mem_on_forward
        assert loss.update_mem_with_emb_index == 1
    else:
        assert loss.loss_weights == [1.0] and loss.update_mem_on_forward
    mlp = "mlp" in name and name.startswith("pirl")
    assert (loss.loss_type, loss.temperature) == (("cross_entropy", 0.1) if mlp else ("nce", 0.07))


def _vissl_multistep(epoch: int, values, milestones) -> float:
    # classy_vision / fvcore MultiStepParamScheduler, as VISSL updates it per epoch.
    return values[bisect.bisect_right(milestones, epoch)]


def _vissl_cosine(epoch: int, num_epochs: int, start: float, end: float) -> float:
    # classy_vision / fvcore CosineParamScheduler at where = epoch / num_epochs (update_interval: epoch).
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * epoch / num_epochs))


def _trunk_and_head_optimizer(cfg, heads: dict[str, str]):
    modules = {"trunk": _meta(cfg.model.trunk)}
    modules.update({name: _meta(cfg.model[key]) for name, key in heads.items()})
    model, optimizer = _optimizer_on(cfg, modules)
    return model, optimizer, _group_of(optimizer, model)


def test_npid_R50_optimizer_and_schedule_are_vissls():
    cfg = _config("npid_R50.py")
    model, optimizer, groups = _trunk_and_head_optimizer(cfg, {"head": "head"})
    schedule = instantiate(cfg.lr_multiplier)
    # npid_8gpu_resnet.yaml l. 74-78: base_value 0.03 per 256, multistep [0.03, 0.003, 0.0003] at
    # [120, 160]; l. 66 num_epochs 200; l. 17 + 82-83: 32 x 8 GPUs x 1 node = 256.
    for epoch in (0, 119, 120, 159, 160, 199):
        expected = _vissl_multistep(epoch, [0.03, 0.003, 0.0003], [120, 160])
        _assert_all_equal([_lr_at(g, schedule, epoch, 200) for g in groups.values()], expected, 1e-9, epoch)
    # l. 64-69: weight_decay 1e-4, momentum 0.9, nesterov False, regularize_bn False, regularize_bias True.
    norms = _norm_param_names(model)
    assert norms and all(groups[n]["weight_decay"] == 0.0 for n in norms)
    assert all(g["weight_decay"] == 1e-4 for n, g in groups.items() if n not in norms)
    assert any(n.endswith("bias") and n not in norms for n in groups)  # a bias that is regularised
    assert (cfg.optimizer.momentum, cfg.optimizer.nesterov) == (0.9, False)
    train = cfg.train
    assert (cfg.dataloader.train.total_batch_size, train.epochs, train.reference_world_size) == (256, 200, 8)
    # l. 20-27: ColorJitter(0.4, 0.4, 0.4, 0.4) on the whole image, RandomResizedCrop(224), flip.
    ops = instantiate(cfg.dataloader.train.mapper).augment.transforms
    assert [type(t) for t in ops] == [T.ColorJitter, T.RandomResizedCrop, T.RandomHorizontalFlip]
    jitter = (ops[0].brightness, ops[0].contrast, ops[0].saturation, ops[0].hue)
    assert jitter == ((0.6, 1.4),) * 3 + ((-0.4, 0.4),)
    assert ops[1].size == (224, 224) and ops[1].scale == (0.08, 1.0)


@pytest.mark.parametrize("name, regularize_bias", [("pirl_R50.py", False), ("npid_pp_R50.py", True)])
def test_800_epoch_nce_recipes_run_vissls_per_epoch_cosine(name, regularize_bias):
    cfg = _config(name)
    pirl = name.startswith("pirl")
    heads = {"image_head": "image_head", "patch_head": "patch_head"} if pirl else {"head": "head"}
    model, optimizer, groups = _trunk_and_head_optimizer(cfg, heads)
    schedule = instantiate(cfg.lr_multiplier)
    # pirl_jigsaw_4node_resnet50.yaml l. 99-104 / npid++_4nodes_resnet.yaml l. 74-79: 0.03 per 256 x 1024
    # = 0.12, cosine to 0.00012 updated per epoch; l. 91 / 66: 800 epochs; 32 x 8 GPUs x 4 nodes.
    for epoch in (0, 1, 400, 799):
        expected = _vissl_cosine(epoch, 800, 0.12, 0.00012)
        lrs = [_lr_at(g, schedule, e, 800) for g in groups.values() for e in (epoch, epoch + 0.5)]
        _assert_all_equal(lrs, expected, 1e-9, epoch)
    # pirl l. 88-94 / npid++ l. 64-69: wd 1e-4, momentum 0.9, no nesterov, regularize_bn False,
    # regularize_bias False (PIRL) / True (NPID++).
    norms = _norm_param_names(model)
    biases = {n for n in groups if n.endswith("bias") and n not in norms}
    assert biases and all(groups[n]["weight_decay"] == (1e-4 if regularize_bias else 0.0) for n in biases)
    assert all(groups[n]["weight_decay"] == 0.0 for n in norms)
    assert all(g["weight_decay"] == 1e-4 for n, g in groups.items() if n not in norms | biases)
    assert (cfg.optimizer.momentum, cfg.optimizer.nesterov) == (0.9, False)
    batch, train = cfg.dataloader.train.total_batch_size, cfg.train
    assert (batch, train.epochs, train.reference_world_size) == (1024, 800, 32)


def test_pirl_R50_views_are_vissls():
    # pirl_jigsaw_4node_resnet50.yaml l. 17-31: image crop scale 0.08-1 at 224, patches from a 255 crop
    # of scale 0.6-1, 3x3 tiles of 64; ColorJitter(0.4, 0.4, 0.4, 0.2), ImgPilRandomPhotometric p 0.66,
    # RandomGrayscale p 0.2, RandomHorizontalFlip on every view.
    m = _config("pirl_R50.py").dataloader.train.mapper
    assert (m.image_size, tuple(m.image_scale), m.patch_crop_size, tuple(m.patch_crop_scale)) == (
        224, (0.08, 1.0), 255, (0.6, 1.0))
    assert (m.grid, m.tile_size) == (3, 64)
    a = m.augmentation
    assert tuple(a.color_jitter) == (0.4, 0.4, 0.4, 0.2) and a.color_jitter_prob == 1.0
    assert (a.photometric_prob, a.grayscale_prob, a.horizontal_flip) == (0.66, 0.2, True)


# ------------------------------------------------------------------ ClusterFit (items 3 and 4)

def test_vissl_linear_warmup_rule():
    # vissl/utils/hydra_config.py l. 242-256: start = base_value x batch per node / base_lr_batch_size;
    # dropped only on one node and when start <= end (end = the scaled lr, l. 330 / 381).
    assert vissl_linear_warmup_start(0.1, 256, 256, num_nodes=1, end_value=0.1) is None  # the published run
    assert vissl_linear_warmup_start(0.1, 256, 256, num_nodes=2, end_value=0.2) == pytest.approx(0.1)
    assert vissl_linear_warmup_start(0.1, 256, 256, num_nodes=4, end_value=0.4) == pytest.approx(0.1)
    assert vissl_linear_warmup_start(0.1, 256, 512, num_nodes=1, end_value=0.1) == pytest.approx(0.2)  # kept


CLUSTERFIT_STEPS = [0.1, 0.01, 0.001, 0.0001, 0.00001]  # clusterfit_resnet_8gpu_imagenet.yaml l. 74-75
CLUSTERFIT_MILESTONES = [30, 60, 90, 100]


def _clusterfit_reference_lr(epoch: int, num_nodes: int) -> float:
    """The lr VISSL set at the start of ``epoch`` (update_interval: epoch), 8 GPUs x 32 per node.

    scaled lr = 0.1 x 256 n / 256 (yaml l. 64-67 auto_lr_scaling; hydra_config.py l. 381); on one node
    the linear phase is deleted (hydra_config.py l. 253-261) and the multistep (milestones fixed, in
    epochs of 105, yaml l. 58) is the whole schedule; on n > 1 nodes the linear phase (yaml l. 76-78:
    lengths[0] = 0.047619, rescaled, per epoch) runs from 0.1 x 256 / 256 to the scaled lr
    (hydra_config.py l. 252 and 330), then the multistep x n.
    """
    scaled = 0.1 * num_nodes
    where = epoch / 105
    if num_nodes > 1 and where + 1e-6 <= 0.047619:  # fvcore / classy_vision composite WHERE_EPSILON
        return 0.1 + (scaled - 0.1) * where / 0.047619
    return num_nodes * _vissl_multistep(epoch, CLUSTERFIT_STEPS, CLUSTERFIT_MILESTONES)


@pytest.mark.parametrize("num_nodes", [1, 2, 4])
def test_clusterfit_lr_per_group_is_what_vissl_ran_on_that_many_nodes(num_nodes):
    cfg = _config("clusterfit/clusterfit_R50.py")
    scale_to_world_size(cfg, 8 * num_nodes)  # 8 GPUs per node, as the published run
    if num_nodes > 1:  # one node: the config as is (num_nodes None, read from this 1-process job)
        cfg.lr_multiplier.num_nodes = num_nodes
    model, optimizer, groups = _trunk_and_head_optimizer(cfg, {"head": "head"})
    schedule = instantiate(cfg.lr_multiplier)
    for epoch in (0, 1, 2, 4, 5, 29, 30, 59, 60, 90, 100, 104):
        expected = _clusterfit_reference_lr(epoch, num_nodes)
        lrs = [_lr_at(g, schedule, e, 105) for g in groups.values() for e in (epoch, epoch + 0.5)]
        _assert_all_equal(lrs, expected, 1e-9, (num_nodes, epoch))
    # One node (the published 8-GPU run): no warm-up at all, the first epoch at the full 0.1.
    if num_nodes == 1:
        assert _lr_at(next(iter(groups.values())), schedule, 0, 105) == pytest.approx(0.1, rel=LR_RTOL)


def test_clusterfit_optimizer_data_and_views_are_vissls():
    cfg = _config("clusterfit/clusterfit_R50.py")
    model, optimizer, groups = _trunk_and_head_optimizer(cfg, {"head": "head"})
    # clusterfit_resnet_8gpu_imagenet.yaml l. 55-61: sgd, wd 1e-4, momentum 0.9, 105 epochs, no nesterov,
    # regularize_bn False, regularize_bias True; l. 18 + 81-82: 32 x 8 GPUs x 1 node; l. 7: SEED_VALUE 1.
    norms = _norm_param_names(model)
    assert norms and all(groups[n]["weight_decay"] == 0.0 for n in norms)
    assert all(g["weight_decay"] == 1e-4 for n, g in groups.items() if n not in norms)
    assert any(n.endswith("bias") and n not in norms for n in groups)  # the head's bias, regularised
    assert (cfg.optimizer.momentum, cfg.optimizer.nesterov) == (0.9, False)
    assert (cfg.dataloader.train.total_batch_size, cfg.train.epochs, cfg.train.seed) == (256, 105, 1)
    # l. 49: head [2048, 16000].
    assert list(cfg.model.head.dims) == [2048, 16000]
    # l. 19-31: RandomResizedCrop(224), ColorJitter([0.6, 1.4] x 3, hue [-0.2, 0.2]), RandomHorizontalFlip,
    # in this order.
    mapper = instantiate(cfg.dataloader.train.mapper)
    ops = mapper.train_view.augment.transforms
    assert [type(t) for t in ops] == [T.RandomResizedCrop, T.ColorJitter, T.RandomHorizontalFlip]
    assert ops[0].size == (224, 224) and ops[0].scale == (0.08, 1.0)
    jitter = (ops[1].brightness, ops[1].contrast, ops[1].saturation, ops[1].hue)
    assert jitter == ((0.6, 1.4),) * 3 + ((-0.2, 0.2),)
    assert mapper.train_view.plan is not None  # the fast path, drawing crop, jitter, flip in this order


def test_clusterfit_view_draws_follow_vissls_transform_order():
    import skimage.data

    small = dict(crop_size=48, crop_scale=(0.2, 1.0))
    cfg = _config("clusterfit/clusterfit_R50.py")
    cfg.dataloader.train.mapper.update(small)
    mapper = instantiate(cfg.dataloader.train.mapper)
    crop = T.RandomResizedCrop(48, scale=(0.2, 1.0))
    jitter = T.ColorJitter(0.4, 0.4, 0.4, 0.2)
    vissl_order = ImageMapper([crop, jitter, T.RandomHorizontalFlip()])
    flip_first = ImageMapper([crop, T.RandomHorizontalFlip(), jitter])
    image = {"image": skimage.data.chelsea()[::4, ::4], "image_id": 0, "label": 3}
    same = differs = 0
    for seed in range(8):
        view = mapper(dict(image), torch.Generator().manual_seed(seed))["image"]
        same += torch.equal(view, vissl_order(dict(image), torch.Generator().manual_seed(seed))["image"])
        other = flip_first(dict(image), torch.Generator().manual_seed(seed))["image"]
        differs += not torch.equal(view, other)
    assert same == 8 and differs > 0


def test_cluster_features_settings_are_vissls():
    c = _config("clusterfit/cluster_features_R50.py").clustering
    # cluster_features_resnet_8gpu_imagenet.yaml l. 63-75; tools/cluster_features_and_label.py l. 102-104
    # passes no seed to faiss.Kmeans: faiss's ClusteringParameters default.
    got = (c.NUM_CLUSTERS, c.N_ITER, c.FEATURES.DIMENSIONALITY_REDUCTION, c.L2_NORMALIZE)
    assert got == (16000, 50, 0, True)
    assert c.SEED == faiss.ClusteringParameters().seed == 1234
    assert (c.FEATURES.LAYER_NAME, c.FEATURES.DATASET_NAME) == ("res5", "imagenet1k")


def test_kmeans_seed_defaults_to_faiss_default(monkeypatch, tmp_path):
    seeds = []
    real = clustering.faiss.Kmeans

    def recording(d, k, **kwargs):
        seeds.append(kwargs["seed"])
        return real(d, k, **kwargs)

    monkeypatch.setattr(clustering.faiss, "Kmeans", recording)
    x = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32)
    run_kmeans(x, 3, n_iter=2)
    cluster_and_label(x, str(tmp_path), num_clusters=3, n_iter=2)
    assert seeds == [1234, 1234]


def _correlated_features(n: int = 200, d: int = 6, seed: int = 0) -> np.ndarray:
    # Positive features (as ReLU outputs) with principal spreads 6:5:4:3:2:1 along a random rotation.
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return (rng.normal(size=(n, d)) * np.arange(d, 0, -1) @ rotation.T + 20).astype(np.float32)


def _float32_pca_error_bound(centred: np.ndarray, k: int) -> float:
    """Bound on the error of float32 whitened PCA columns (unit norm) against exact arithmetic: the scatter
    matrix sums N products, relative error gamma = N u (u: float32 unit roundoff); an eigenvector moves by
    gamma over the relative eigen-gap, and 1 / sqrt(eigenvalue) by gamma x max eigenvalue / eigenvalue."""
    eig = np.linalg.svd(centred, compute_uv=False) ** 2
    gamma = centred.shape[0] * np.finfo(np.float32).eps / 2
    rel_gap = min((eig[i] - eig[i + 1]) / eig[0] for i in range(min(k, len(eig) - 1)))
    return float(gamma * (1 / rel_gap + eig[0] / eig[k - 1]))


def test_pca_normalises_first_then_whitens_as_vissl_without_renormalising():
    x = _correlated_features()
    k = 4
    y = preprocess_features(x, fit_pca(x, k))
    # Independent float64 computation of VISSL's pca.py l. 23-46 on the L2-normalised features (tool
    # l. 82-88): with centred X = U S V^T, diag(1/sqrt(eig(X^T X))) V^T (x - mean) gives U's first k
    # columns, up to their signs.
    z = x.astype(np.float64) / (np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True) + 1e-5)
    centred = z - z.mean(axis=0)
    expected = np.linalg.svd(centred, full_matrices=False)[0][:, :k]
    bound = _float32_pca_error_bound(centred, k)
    assert bound < 0.05  # the data are conditioned well enough for the check to mean something
    signs = np.sign((y * expected).sum(axis=0))
    np.testing.assert_allclose(y * signs, expected, atol=bound)
    np.testing.assert_allclose(y.T.astype(np.float64) @ y, np.eye(k), atol=2 * bound + bound**2)  # whitened
    assert np.abs(np.linalg.norm(y, axis=1) - 1).max() > 0.5  # not normalised after the PCA
    # Without normalisation (d2ssl's L2_NORMALIZE False) the PCA is fitted on the raw features.
    raw = preprocess_features(x, fit_pca(x, k, normalize=False), normalize=False)
    centred_raw = x.astype(np.float64) - x.astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(np.abs(raw), np.abs(np.linalg.svd(centred_raw, full_matrices=False)[0][:, :k]),
                               atol=_float32_pca_error_bound(centred_raw, k))


def test_pca_floors_tiny_eigenvalues_as_vissl():
    x = _correlated_features(d=6)
    x = np.concatenate([x, x[:, :1]], axis=1)  # a 7th column equal to the 1st: one eigenvalue ~0
    z = l2_normalize(x)
    pca = fit_pca(x, 7)
    centred = (z - z.mean(0)).astype(np.float64)
    eigenvalues = np.linalg.eigvalsh(centred.T @ centred)
    # pca.py l. 33-37: eigenvalues below max x 1e-5 are raised to it; the projection's row norms are
    # 1 / sqrt(eigenvalue) (rows of V^T have norm 1): the last row is 1 / sqrt(floor), not ~1 / sqrt(0).
    floor = eigenvalues.max() * 1e-5
    norms = np.linalg.norm(pca.projection.astype(np.float64), axis=1)
    assert norms[-1] == pytest.approx(1 / math.sqrt(floor), rel=1e-3)  # float32 eigenvalues, 1e-3 of max
    np.testing.assert_allclose(norms[:-1], 1 / np.sqrt(eigenvalues[::-1][:-1]), rtol=1e-3)


def test_cluster_and_label_clusters_what_vissl_clusters_with_pca(tmp_path):
    x = _correlated_features(n=120)
    out = cluster_and_label(x, str(tmp_path), num_clusters=4, n_iter=5, dimensionality_reduction=3)
    clustered = preprocess_features(x, fit_pca(x, 3))
    direct = run_kmeans(clustered, 4, n_iter=5)
    np.testing.assert_array_equal(np.load(out.labels_file), direct.assignments)
    np.testing.assert_array_equal(np.load(out.centroids_file), direct.centroids)


def test_vissl_warmup_multistep_needs_an_even_split_over_nodes():
    with pytest.raises(ValueError, match="num_nodes=3"):
        vissl_warmup_multistep([30], 105, 0.047619, total_batch_size=512, num_nodes=3)

