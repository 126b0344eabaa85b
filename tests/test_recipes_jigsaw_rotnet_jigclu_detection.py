"""Jigsaw, RotNet, JigClu (pretraining and linear) and the detection configs run, by default, what the
reference CODE ran for the number each cites.

Expected values are written down from the reference code, with file and line: VISSL =
github.com/facebookresearch/vissl at commit 09270ed, JigClu = github.com/dvlab-research/JigsawClustering
at commit 1490f3b, MoCo = github.com/facebookresearch/moco at commit 7397dfe (detection/ was removed later).
The detection configs are compared with the model, optimizer, schedule and augmentations that detectron2's
own yacs builders make from the reference yaml (its text below), so detectron2's defaults that the yaml
leaves alone are compared too.
"""

from __future__ import annotations

import math

import pytest
import torch
from detectron2.config import CfgNode, get_cfg, instantiate
from detectron2.data.detection_utils import build_augmentation
from detectron2.layers import get_norm
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads
from detectron2.solver import build_lr_scheduler, build_optimizer
from omegaconf import ListConfig
from test_recipes_jigclu_nce_clusterfit import (
    LR_RTOL,
    _assert_all_equal,
    _clusterfit_reference_lr,
    _config,
    _group_of,
    _lr_at,
    _meta,
    _norm_param_names,
    _optimizer_on,
    _trunk_and_head_optimizer,
    _vissl_multistep,
)

from d2ssl.engine.train_loop import scale_to_world_size

# ------------------------------------------------------------------ RotNet


def test_rotnet_R50_runs_vissls_rotnet_8gpu_resnet():
    cfg = _config("rotnet_R50.py")
    model, optimizer, groups = _trunk_and_head_optimizer(cfg, {"head": "head"})
    schedule = instantiate(cfg.lr_multiplier)
    # rotnet_8gpu_resnet.yaml l. 71-80: 0.1 per 256, multistep x0.1 at 30/60/90/100, per epoch, no
    # linear phase at all; l. 67: 105 epochs.
    for epoch in (0, 1, 29, 30, 59, 60, 89, 90, 99, 100, 104):
        expected = _vissl_multistep(epoch, [0.1, 0.01, 0.001, 0.0001, 0.00001], [30, 60, 90, 100])
        lrs = [_lr_at(g, schedule, e, 105) for g in groups.values() for e in (epoch, epoch + 0.5)]
        _assert_all_equal(lrs, expected, 1e-9, epoch)
    # l. 63-70: wd 1e-4, momentum 0.9, nesterov False, regularize_bn False, regularize_bias True.
    norms = _norm_param_names(model)
    assert norms and all(groups[n]["weight_decay"] == 0.0 for n in norms)
    assert all(g["weight_decay"] == 1e-4 for n, g in groups.items() if n not in norms)
    assert any(n.endswith("bias") and n not in norms for n in groups)
    assert (cfg.optimizer.momentum, cfg.optimizer.nesterov) == (0.9, False)
    # l. 18 + 83-84: 32 images x 8 GPUs x 1 node; l. 8: SEED_VALUE 1.
    train = cfg.train
    assert (cfg.dataloader.train.total_batch_size, train.epochs, train.reference_world_size) == (256, 105, 8)
    assert train.seed == 1
    # l. 59: head [2048, 4], one Linear.
    head = _meta(cfg.model.head)
    assert [(m.in_features, m.out_features) for m in head.modules() if isinstance(m, torch.nn.Linear)] == [
        (2048, 4)]
    # l. 20-23: ImgRotatePil (vissl/data/ssl_transforms/img_rotate_pil.py l. 40-42 + 57-58: ONE angle of
    # four drawn per image), RandomResizedCrop(224) (scale 0.08-1), RandomHorizontalFlip, no colour.
    assert cfg.model.trunk.norm == "BN"  # defaults.yaml l. 908-909: CONVERT_BN_TO_SYNC_BN False
    mapper = cfg.dataloader.train.mapper
    assert (mapper.rotations_per_image, mapper.crop_size, tuple(mapper.crop_scale)) == (1, 224, (0.08, 1.0))
    a = mapper.augmentation
    flags = (a.color_jitter, a.grayscale_prob, a.gaussian_blur_prob, a.horizontal_flip)
    assert flags == (None, 0.0, 0.0, True)


def test_rotnet_R50_draws_one_uniform_rotation_per_image():
    import skimage.data

    cfg = _config("rotnet_R50.py")
    cfg.dataloader.train.mapper.crop_size = 32
    mapper = instantiate(cfg.dataloader.train.mapper)
    image = {"image": skimage.data.chelsea()[::8, ::8], "image_id": 0}
    labels = [mapper(dict(image), torch.Generator().manual_seed(s))["rotation_labels"] for s in range(40)]
    assert all(lab.shape == (1,) for lab in labels)
    assert {int(lab) for lab in labels} == {0, 1, 2, 3}  # P(a label missing in 40 draws) < 4 x 0.75^40


def test_rotnet_R50_rotates_the_whole_image_before_the_crop_as_imgrotatepil():
    import numpy as np

    # rotnet_8gpu_resnet.yaml l. 20-23: ImgRotatePil first (TF.rotate of the PIL image, same canvas), then
    # RandomResizedCrop, then the flip. A white 64 x 128 image at 90/270 degrees is a 64 x 64 white square
    # between black bands 32 px wide; scale 1 can't fit ratio <= 4/3 in 2:1, so torchvision's fallback crop
    # is the central 85 x 64, 10-11 px of black on each side: black edges exactly when the label is 1 or 3.
    cfg = _config("rotnet_R50.py")
    assert cfg.dataloader.train.mapper.rotate_before_crop is True
    cfg.dataloader.train.mapper.update(crop_size=32, crop_scale=(1.0, 1.0))
    mapper = instantiate(cfg.dataloader.train.mapper)
    image = {"image": np.full((64, 128, 3), 255, dtype=np.uint8), "image_id": 0}
    seen = set()
    for seed in range(16):
        out = mapper(dict(image), torch.Generator().manual_seed(seed))
        label = int(out["rotation_labels"])
        edges = out["images"][0, :, :, [0, -1]]  # first and last columns, normalised
        black_edges = bool((edges < -1.5).all())  # black: (0 - mean) / std < -1.7; white > 2
        assert black_edges == (label in (1, 3)), (seed, label)
        seen.add(label)
    assert seen == {0, 1, 2, 3}


def test_rotnet_4rot_option_puts_all_four_rotations_of_each_image_in_the_batch():
    cfg = _config("rotnet_R50_4rot.py")
    mapper = cfg.dataloader.train.mapper
    assert (mapper.rotations_per_image, mapper.rotate_before_crop, cfg.dataloader.train.total_batch_size) == (
        4, False, 64)
    cfg.dataloader.train.mapper.rotate_before_crop = True
    with pytest.raises(ValueError, match="rotate_before_crop=True .* set rotations_per_image=1, got 4"):
        instantiate(cfg.dataloader.train.mapper)


# ------------------------------------------------------------------ Jigsaw


@pytest.mark.parametrize("num_nodes", [1, 2])
def test_jigsaw_R50_lr_per_group_is_what_vissl_ran_on_that_many_nodes(num_nodes):
    cfg = _config("jigsaw_R50.py")
    scale_to_world_size(cfg, 8 * num_nodes)
    if num_nodes > 1:
        cfg.lr_multiplier.num_nodes = num_nodes
    model, optimizer, groups = _trunk_and_head_optimizer(cfg, {"head": "head"})
    schedule = instantiate(cfg.lr_multiplier)
    # jigsaw_8gpu_resnet.yaml l. 68-84 is the same composite (linear, lengths 0.047619, then multistep
    # 0.1 ... 1e-5 at 30/60/90/100 of 105, per epoch, 0.1 per 256) as clusterfit_resnet_8gpu_imagenet.yaml;
    # VISSL replaces the linear phase's start_value 0.025 the same way (hydra_config.py l. 242-261).
    for epoch in (0, 1, 2, 4, 5, 29, 30, 59, 60, 90, 100, 104):
        expected = _clusterfit_reference_lr(epoch, num_nodes)
        lrs = [_lr_at(g, schedule, e, 105) for g in groups.values() for e in (epoch, epoch + 0.5)]
        _assert_all_equal(lrs, expected, 1e-9, (num_nodes, epoch))
    # l. 60-67: wd 1e-4, momentum 0.9, nesterov False, regularize_bn False, regularize_bias True.
    norms = _norm_param_names(model)
    assert norms and all(groups[n]["weight_decay"] == 0.0 for n in norms)
    assert all(g["weight_decay"] == 1e-4 for n, g in groups.items() if n not in norms)
    assert (cfg.optimizer.momentum, cfg.optimizer.nesterov) == (0.9, False)


def test_jigsaw_R50_data_head_and_seed_are_vissls():
    cfg = _config("jigsaw_R50.py")
    # l. 17 + 87-88: 32 x 8 GPUs x 1 node; l. 64: 105 epochs; l. 7: SEED_VALUE 0.
    train = cfg.train
    assert (cfg.dataloader.train.total_batch_size, train.epochs, train.reference_world_size) == (256, 105, 8)
    assert train.seed == 0
    # l. 19-34: Resize 256, flip, RandomCrop 255, RandomGrayscale 0.66, Normalize the whole image,
    # ImgPatchesFromTensor(9, jitter 21): cells of 255 // 3 = 85, tiles of 85 - 21 = 64
    # (img_patches_tensor.py l. 41-42), ShuffleImgPatches over the 2000-row max_avg file.
    m = cfg.dataloader.train.mapper
    assert (m.grid, m.resize_size, m.crop_size, m.tile_size) == (3, 256, 255, 255 // 3 - 21)
    assert (m.grayscale_prob, m.per_tile_normalization) == (0.66, False)
    p = m.permutations
    assert (p.num_tiles, p.num_permutations, p.method) == (9, 2000, "max_avg")
    # l. 51-55: mlp [2048, 1000] with BN + ReLU after it, 9 towers concatenated, mlp [9000, 2000].
    head = _meta(cfg.model.head)
    linears = [(x.in_features, x.out_features) for x in head.modules() if isinstance(x, torch.nn.Linear)]
    assert linears == [(2048, 1000), (9000, 2000)]
    per_tile = [type(x) for x in head.per_tile.modules() if not isinstance(x, torch.nn.Sequential)]
    assert per_tile == [torch.nn.Linear, torch.nn.BatchNorm1d, torch.nn.ReLU]
    # vissl/models/heads/mlp.py l. 93-98: BatchNorm1d(eps HEAD.BATCHNORM_EPS 1e-5, momentum 0.1: defaults.yaml
    # l. 896-898); the trunk keeps per-GPU BatchNorm (defaults.yaml l. 908-909: CONVERT_BN_TO_SYNC_BN False).
    bn = next(x for x in head.modules() if isinstance(x, torch.nn.BatchNorm1d))
    assert (bn.eps, bn.momentum) == (1e-5, 0.1)
    assert cfg.model.trunk.norm == "BN"


# ------------------------------------------------------------------ JigClu pretraining


def test_jigclu_R50_optimizer_and_schedule_are_main_pys():
    cfg = _config("jigclu_R50.py", "model.trunk.norm=BN")  # SyncBN needs a process group; same params
    model, optimizer, groups = _trunk_and_head_optimizer(
        cfg, {"cluster_head": "cluster_head", "location_head": "location_head"})
    schedule = instantiate(cfg.lr_multiplier)
    # README l. 77: --lr 0.03 --batch-size 256 --epoch 200; main.py l. 380-385 (min_lr 0, l. 54): every
    # group at lr x 0.5 (1 + cos(pi epoch / epochs)), set at the start of each epoch (l. 243).
    for epoch in (0, 1, 50, 100, 199):
        expected = 0.03 * 0.5 * (1 + math.cos(math.pi * epoch / 200))
        lrs = [_lr_at(g, schedule, e, 200) for g in groups.values() for e in (epoch, epoch + 0.5)]
        _assert_all_equal(lrs, expected, LR_RTOL, epoch)
    # l. 186-188: torch SGD over model.parameters(), momentum 0.9 (l. 56), wd 1e-4 (l. 58) on all of them.
    assert {g["weight_decay"] for g in optimizer.param_groups} == {1e-4}
    assert (cfg.optimizer.momentum, cfg.optimizer.nesterov) == (0.9, False)
    assert (cfg.dataloader.train.total_batch_size, cfg.train.epochs) == (256, 200)


def test_jigclu_R50_views_head_and_loss_are_main_pys():
    cfg = _config("jigclu_R50.py")
    # l. 163: apex.convert_syncbn_model.
    assert cfg.model.trunk.norm == "SyncBN"
    # l. 214-222: RandomResizedCrop(--crop-size 112, scale 0.2-1), ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8,
    # RandomGrayscale 0.2, PIL GaussianBlur sigma 0.1-2 p 0.5, flip; README l. 81 --cross-ratio 0.3.
    m = cfg.dataloader.train.mapper
    assert (m.patch_size, tuple(m.crop_scale), m.cross_ratio) == (112, (0.2, 1.0), 0.3)
    a = m.augmentation
    assert (tuple(a.color_jitter), a.color_jitter_prob, a.grayscale_prob) == ((0.4, 0.4, 0.4, 0.1), 0.8, 0.2)
    assert (a.gaussian_blur_prob, tuple(a.blur_sigma), a.blur_impl, a.horizontal_flip) == (
        0.5, (0.1, 2.0), "pil", True)
    assert m.augment_on_device is False
    # JigClu/jigclu.py l. 23-26: fc_clu = Linear(2048, 2048), ReLU, Linear(2048, --proj-dim 128).
    assert list(cfg.model.cluster_head.dims) == [2048, 2048, 128]
    assert list(cfg.model.location_head.dims) == [2048, 4]
    # README l. 80 --loss-t 0.3; SupCluLoss base_temperature 0.07; main.py l. 96-99 loss weights 1.0.
    mm = cfg.model
    assert (mm.temperature, mm.base_temperature, mm.cluster_loss_weight, mm.location_loss_weight) == (
        0.3, 0.07, 1.0, 1.0)


# ------------------------------------------------------------------ JigClu linear benchmark


def test_linear_jigclu_R50_runs_main_lincls_with_the_readme_command():
    cfg = _config("eval/linear_jigclu_R50.py")
    torch.manual_seed(0)  # the init draws from torch's global generator
    model = instantiate(cfg.model)  # a real R50 (its fc init is checked), 224 px dry pass on the CPU
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    schedule = instantiate(cfg.lr_multiplier)
    # main_lincls.py l. 163-166 + 239-240: only fc.weight and fc.bias are optimized.
    trained = [p for g in optimizer.param_groups for p in g["params"]]
    assert len(trained) == 2 and all(p.requires_grad for p in trained)
    assert not any(p.requires_grad for p in model.trunk.parameters())
    # l. 168-169: fc weight normal(0, 0.01), bias 0: 2048 x 1000 draws, std within 1 % (stderr 0.07 %).
    w, b = sorted(trained, key=lambda p: p.dim(), reverse=True)
    assert w.shape == (1000, 2048) and torch.equal(b, torch.zeros(1000))
    assert abs(w.mean().item()) < 1e-4 and w.std().item() == pytest.approx(0.01, rel=0.01)
    # README l. 89: --lr 10.0, --batch-size 256; l. 42 epochs 100; l. 53 schedule [60, 80]; l. 535-542
    # (the second adjust_learning_rate, which wins; no --cos): x0.1 per milestone passed, set at each
    # epoch start; l. 55-58: momentum 0.9, wd 0; torch SGD.
    for epoch in (0, 59, 60, 79, 80, 99):
        expected = 10.0 * 0.1 ** sum(epoch >= m for m in (60, 80))
        for g in optimizer.param_groups:
            for e in (epoch, epoch + 0.5):
                assert _lr_at(g, schedule, e, 100) == pytest.approx(expected, rel=LR_RTOL), epoch
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.0}
    assert (cfg.optimizer.momentum, cfg.optimizer.nesterov) == (0.9, False)
    assert (cfg.dataloader.train.total_batch_size, cfg.train.epochs) == (256, 100)
    # l. 361: model.eval() in train(): BatchNorm statistics frozen while the fc trains.
    model.train()
    assert not any(x.training for x in model.trunk.modules() if isinstance(x, torch.nn.BatchNorm2d))
    # l. 277-280: RandomResizedCrop(224) + flip; l. 294-297: Resize(256), CenterCrop(224).
    train_view, test_view = cfg.dataloader.train.mapper, cfg.dataloader.test.mapper
    assert (train_view.train, train_view.crop_size, tuple(train_view.get("crop_scale", (0.08, 1.0)))) == (
        True, 224, (0.08, 1.0))
    assert (test_view.train, test_view.resize_size, test_view.crop_size) == (False, 256, 224)
    # The selection node another recipe added: kept, and off by default (the reference's setting).
    assert dict(cfg.dataloader.val) == {"dataset": None, "fraction": 0.0, "seed": 0}


# ------------------------------------------------------------------ detection

# The yamls as written by the references, merged in _BASE_ order, in flow style (their tuples written as
# lists, which yacs casts back). detection/configs/Base-RCNN-FPN.yaml + R50-JigClu.yaml of JigClu.
JIGCLU_FPN_COCO = """
MODEL:
  META_ARCHITECTURE: "GeneralizedRCNN"
  BACKBONE: {NAME: "build_resnet_fpn_backbone", FREEZE_AT: 0}
  RESNETS: {STRIDE_IN_1X1: False, OUT_FEATURES: ["res2", "res3", "res4", "res5"], DEPTH: 50, NORM: "SyncBN"}
  FPN: {IN_FEATURES: ["res2", "res3", "res4", "res5"], NORM: "SyncBN"}
  ANCHOR_GENERATOR: {SIZES: [[32], [64], [128], [256], [512]], ASPECT_RATIOS: [[0.5, 1.0, 2.0]]}
  RPN:
    IN_FEATURES: ["p2", "p3", "p4", "p5", "p6"]
    PRE_NMS_TOPK_TRAIN: 2000
    PRE_NMS_TOPK_TEST: 6000
    POST_NMS_TOPK_TRAIN: 1000
    POST_NMS_TOPK_TEST: 1000
  ROI_HEADS: {NAME: "StandardROIHeads", IN_FEATURES: ["p2", "p3", "p4", "p5"]}
  ROI_BOX_HEAD: {NAME: "FastRCNNConvFCHead", NUM_CONV: 4, NUM_FC: 1, NORM: "SyncBN", POOLER_RESOLUTION: 7}
  PIXEL_MEAN: [123.675, 116.280, 103.530]
  PIXEL_STD: [58.395, 57.120, 57.375]
DATASETS: {TRAIN: ["coco_2017_train"], TEST: ["coco_2017_val"]}
SOLVER: {IMS_PER_BATCH: 8, BASE_LR: 0.01, MAX_ITER: 180000, STEPS: [120000, 160000]}
INPUT: {FORMAT: "RGB", MIN_SIZE_TRAIN: [640, 672, 704, 736, 768, 800]}
TEST: {PRECISE_BN: {ENABLED: True}}
"""
# detection/configs/voc-R50-JigClu.yaml (its _BASE_ is the above).
JIGCLU_FPN_VOC = """
MODEL: {ROI_HEADS: {NUM_CLASSES: 20}}
INPUT: {MIN_SIZE_TRAIN: [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800], MIN_SIZE_TEST: 800}
DATASETS: {TRAIN: ['voc_2007_trainval', 'voc_2012_trainval'], TEST: ['voc_2007_test']}
SOLVER: {STEPS: [18000, 22000], MAX_ITER: 24000, WARMUP_ITERS: 100}
"""
# VISSL configs/config/benchmark/object_detection/voc07/rn50_transfer_voc07_detectron2_e2e.yaml.
VISSL_C4_VOC07 = """
MODEL:
  META_ARCHITECTURE: "GeneralizedRCNN"
  PIXEL_MEAN: [123.675, 116.280, 103.530]
  PIXEL_STD: [58.395, 57.120, 57.375]
  MASK_ON: False
  RPN: {PRE_NMS_TOPK_TEST: 6000, POST_NMS_TOPK_TEST: 1000}
  ROI_HEADS: {NAME: "Res5ROIHeadsExtraNorm", NUM_CLASSES: 20}
  BACKBONE: {FREEZE_AT: 0}
  RESNETS: {DEPTH: 50, NORM: "SyncBN", STRIDE_IN_1X1: False}
INPUT: {MIN_SIZE_TRAIN: [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800], MIN_SIZE_TEST: 800,
        FORMAT: "RGB"}
DATASETS: {TRAIN: ['voc_2007_trainval'], TEST: ['voc_2007_test']}
TEST: {PRECISE_BN: {ENABLED: True}}
SOLVER: {STEPS: [9500], MAX_ITER: 12500, WARMUP_ITERS: 100, IMS_PER_BATCH: 16, BASE_LR: 0.02}
"""
# MoCo detection/configs/Base-RCNN-C4-BN.yaml + pascal_voc_R_50_C4_24k.yaml + _moco.yaml (merged).
MOCO_C4_VOC0712 = """
MODEL:
  META_ARCHITECTURE: "GeneralizedRCNN"
  RPN: {PRE_NMS_TOPK_TEST: 6000, POST_NMS_TOPK_TEST: 1000}
  ROI_HEADS: {NAME: "Res5ROIHeadsExtraNorm", NUM_CLASSES: 20}
  BACKBONE: {FREEZE_AT: 0}
  RESNETS: {NORM: "naiveSyncBN", STRIDE_IN_1X1: False}
  MASK_ON: False
  PIXEL_MEAN: [123.675, 116.280, 103.530]
  PIXEL_STD: [58.395, 57.120, 57.375]
TEST: {PRECISE_BN: {ENABLED: True}}
SOLVER: {IMS_PER_BATCH: 16, BASE_LR: 0.02, STEPS: [18000, 22000], MAX_ITER: 24000, WARMUP_ITERS: 100}
INPUT: {MIN_SIZE_TRAIN: [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800], MIN_SIZE_TEST: 800,
        FORMAT: "RGB"}
DATASETS: {TRAIN: ['voc_2007_trainval', 'voc_2012_trainval'], TEST: ['voc_2007_test']}
"""
DETECTION = {
    "faster_rcnn_R50_FPN_coco.py": (JIGCLU_FPN_COCO,),
    "faster_rcnn_R50_FPN_voc0712.py": (JIGCLU_FPN_COCO, JIGCLU_FPN_VOC),
    "faster_rcnn_R50_C4_voc07.py": (VISSL_C4_VOC07,),
    "faster_rcnn_R50_C4_voc0712.py": (MOCO_C4_VOC0712,),
}

if "Res5ROIHeadsExtraNorm" not in ROI_HEADS_REGISTRY:

    @ROI_HEADS_REGISTRY.register()
    class Res5ROIHeadsExtraNorm(Res5ROIHeads):
        """MoCo detection/train_net.py l. 23-34 (VISSL's tools use the same): res5, then one norm of
        cfg.MODEL.RESNETS.NORM named ``norm``."""

        def __init__(self, cfg, input_shape):
            super().__init__(cfg, input_shape)
            self.res5.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, self.res5[-1].out_channels))


def _reference_cfg(*yamls: str) -> CfgNode:
    cfg = get_cfg()  # the installed detectron2's defaults for everything the yaml leaves out
    for text in yamls:
        cfg.merge_from_other_cfg(CfgNode.load_cfg(text))
    return cfg


def _plain(v):
    if isinstance(v, (list, tuple, ListConfig)):  # yacs gives lists, LazyConfig tuples or ListConfigs
        return [_plain(x) for x in v]
    if isinstance(v, dict):  # e.g. the RPN's {training: topk}
        return {k: _plain(x) for k, x in v.items()}
    return v


def _is_plain(v) -> bool:
    if isinstance(v, (list, tuple, ListConfig)):
        return all(_is_plain(x) for x in v)
    if isinstance(v, dict):
        return all(_is_plain(k) and _is_plain(x) for k, x in v.items())
    return isinstance(v, (int, float, str, bool, type(None)))


def _description(model: torch.nn.Module) -> dict[str, dict]:
    """Every module: its type, its plain attributes (thresholds, sizes, strides, flags...), its
    parameters' shapes and trainability and its buffers' shapes."""
    out = {}
    for name, module in model.named_modules():
        d = {k: _plain(v) for k, v in vars(module).items()
             if not k.startswith("_") and k != "training" and _is_plain(v)}
        # MoCo's Res5ROIHeadsExtraNorm is Res5ROIHeads with the norm inside res5 (d2ssl:
        # res5_with_extra_norm); the norm itself is compared as a module of res5.
        d["type"] = type(module).__name__.replace("Res5ROIHeadsExtraNorm", "Res5ROIHeads")
        if isinstance(d.get("loss_weight"), dict):  # fast_rcnn.py losses(): a missing key weighs 1.0
            d["loss_weight"] = {"loss_cls": 1.0, "loss_box_reg": 1.0, **d["loss_weight"]}
        params = module.named_parameters(recurse=False)
        d["params"] = [(n, tuple(p.shape), p.requires_grad) for n, p in params]
        d["buffers"] = [(n, tuple(b.shape)) for n, b in module.named_buffers(recurse=False)]
        out[name] = d
    return out


def _augmentation(a) -> tuple[str, dict]:
    d = {k: _plain(v) for k, v in vars(a).items() if _is_plain(v)}
    if len(set(d.get("short_edge_length", []))) == 1:  # one size (test: 800): "range" or "choice" draw it
        d.pop("is_range"), d.pop("sample_style")
    return type(a).__name__, d


def _detection_pair(name: str):
    ref_cfg = _reference_cfg(*DETECTION[name])
    cfg = _config(f"detection/{name}")
    with torch.device("meta"):
        ref = GeneralizedRCNN(**GeneralizedRCNN.from_config(ref_cfg))
        ours = instantiate(cfg.model)
    return ref_cfg, ref, cfg, ours


@pytest.mark.parametrize("name", sorted(DETECTION))
def test_detection_config_builds_the_reference_yamls_model(name):
    ref_cfg, ref, cfg, ours = _detection_pair(name)
    a, b = _description(ref), _description(ours)
    assert sorted(a) == sorted(b)
    diffs = {k: {f: (a[k].get(f), b[k].get(f)) for f in set(a[k]) | set(b[k]) if a[k].get(f) != b[k].get(f)}
             for k in a if a[k] != b[k]}
    assert not diffs
    assert list(cfg.model.pixel_mean) == list(ref_cfg.MODEL.PIXEL_MEAN)
    assert list(cfg.model.pixel_std) == list(ref_cfg.MODEL.PIXEL_STD)
    assert cfg.model.input_format == ref_cfg.INPUT.FORMAT


@pytest.mark.parametrize("name", sorted(DETECTION))
def test_detection_config_optimizer_and_schedule_are_the_reference_yamls(name):
    ref_cfg, ref, cfg, ours = _detection_pair(name)
    ref_opt = build_optimizer(ref_cfg, ref)
    _, opt = _optimizer_on(cfg, ours)
    ref_groups, groups = _group_of(ref_opt, ref), _group_of(opt, ours)
    assert sorted(ref_groups) == sorted(groups)
    for key in ("lr", "weight_decay", "momentum", "nesterov", "dampening"):
        got = {n: g[key] for n, g in groups.items()}
        assert got == {n: g[key] for n, g in ref_groups.items()}, key
    max_iter = ref_cfg.SOLVER.MAX_ITER
    assert cfg.train.max_iter == max_iter
    ref_schedule = build_lr_scheduler(ref_cfg, ref_opt)._multiplier
    schedule = instantiate(cfg.lr_multiplier)
    steps = sorted({0, 1, 50, 99, 100, 101, 999, 1000, 1001, max_iter - 1}
                   | {s + d for s in ref_cfg.SOLVER.STEPS for d in (-1, 0, 1)})
    for it in steps:
        assert schedule(it / max_iter) == pytest.approx(ref_schedule(it / max_iter), rel=1e-12), it
    assert cfg.dataloader.train.total_batch_size == ref_cfg.SOLVER.IMS_PER_BATCH
    assert cfg.train.reference_world_size == 0  # IMS_PER_BATCH is already the total over all GPUs
    precise = cfg.train.precise_bn
    reference = ref_cfg.TEST.PRECISE_BN
    assert (precise.enabled, precise.num_iter) == (reference.ENABLED, reference.NUM_ITER)


@pytest.mark.parametrize("name", sorted(DETECTION))
def test_detection_config_data_are_the_reference_yamls(name):
    ref_cfg = _reference_cfg(*DETECTION[name])
    cfg = _config(f"detection/{name}")
    train, test = cfg.dataloader.train, cfg.dataloader.test
    names = _plain(train.dataset.names)
    assert (names if isinstance(names, list) else [names]) == list(ref_cfg.DATASETS.TRAIN)
    assert [test.dataset.names] == list(ref_cfg.DATASETS.TEST)
    for lazy, is_train in ((train, True), (test, False)):
        ours = [_augmentation(instantiate(a)) for a in lazy.mapper.augmentations]
        assert ours == [_augmentation(a) for a in build_augmentation(ref_cfg, is_train)], is_train
        assert lazy.mapper.image_format == ref_cfg.INPUT.FORMAT
    assert train.mapper.use_instance_mask is False  # MASK_ON False
    # DATALOADER defaults: aspect-ratio grouping, empty images filtered out of training.
    assert train.get("aspect_ratio_grouping", True) == ref_cfg.DATALOADER.ASPECT_RATIO_GROUPING
    assert train.dataset.get("filter_empty", True) == ref_cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
