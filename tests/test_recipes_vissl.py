"""VISSL's benchmark recipes as d2ssl configs: every value compared with the reference yaml / code
(facebookresearch/vissl at 09270ed25a6c2cf71263d955b64cbe076d34ac45, file and line in each comment),
the learning rate of every parameter group at iterations on both sides of each milestone."""

from __future__ import annotations

import bisect
from pathlib import Path

import pytest
import torch
from detectron2.config import instantiate

from d2ssl.engine.train_loop import setup_config

REPO = Path(__file__).resolve().parents[1]
IMAGENET_TRAIN = 1281167
# Line numbers: the linear benchmark's configs/config/benchmark/linear_image_classification/imagenet1k/
# eval_resnet_8gpu_transfer_in1k_linear.yaml, the semi-supervised benchmark's configs/config/benchmark/
# semi_supervised/imagenet1k/eval_resnet_8gpu_transfer_in1k_semi_sup_fulltune.yaml, unless a file is named.


def _config(name: str):
    return setup_config(str(REPO / "configs/eval" / f"{name}.py"), [])


def vissl_epoch_iters(num_images: int, gpus: int = 8, per_gpu: int = 32, drop_last: bool = False) -> int:
    """Iterations of one VISSL epoch: a DistributedSampler gives each of ``gpus`` replicas
    ceil(N / gpus) images, batched by ``per_gpu`` (the last partial batch dropped with DROP_LAST)."""
    per_replica = -(-num_images // gpus)
    return per_replica // per_gpu if drop_last else -(-per_replica // per_gpu)


def vissl_multistep_lr(epoch: int, values: list[float], milestones: list[int]) -> float:
    """fvcore's MultiStepParamScheduler with update_interval epoch: values[#milestones <= epoch]."""
    return values[bisect.bisect_right(milestones, epoch)]


def group_lrs(cfg, model: torch.nn.Module, iteration: int) -> dict[str, float]:
    """{"heads" | "trunk": lr} at ``iteration`` as detectron2's LRMultiplier sets it: each group's lr
    times the multiplier at iteration / max_iter."""
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    multiplier = instantiate(cfg.lr_multiplier)(iteration / cfg.train.max_iter)
    names = {id(p): n for n, p in model.named_parameters()}
    lrs: dict[str, set] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            lrs.setdefault(names[id(p)].split(".")[0], set()).add(group["lr"] * multiplier)
    assert all(len(v) == 1 for v in lrs.values()), lrs  # one rate per part
    return {part: v.pop() for part, v in lrs.items()}


# ---------------------------------------------------------------- linear benchmark


def test_linear_vissl_r50_is_the_yaml():
    cfg = _config("linear_vissl_R50")
    cfg.model.num_classes = 1000
    model = instantiate(cfg.model)
    heads = {name: (head.bn.num_features if not isinstance(head.bn, torch.nn.Identity) else None,
                    head.linear.in_features, head.linear.out_features) for name, head in model.heads.items()}
    assert heads == {  # yaml l.74-82: eval_mlp in_channels / dims, then mlp dims
        "conv1": (64, 9216, 1000), "res2": (256, 9216, 1000), "res3": (512, 8192, 1000),
        "res4": (1024, 9216, 1000), "res5": (2048, 8192, 1000), "res5avg_bn": (2048, 2048, 1000),
        "res5avg": (None, 2048, 1000),
    }
    pools = {name: spec.get("pool") for name, spec in cfg.model.heads.items()}
    assert {k: (tuple(v[0]), v[1], v[2]) if v else None for k, v in pools.items()} == {  # yaml l.60-68
        "conv1": ((10, 10), 10, 4), "res2": ((16, 16), 8, 0), "res3": ((13, 13), 5, 0),
        "res4": ((8, 8), 3, 0), "res5": ((6, 6), 1, 0), "res5avg_bn": None, "res5avg": None,
    }
    # CONVERT_BN_TO_SYNC_BN True l.88
    assert all(isinstance(h.bn, torch.nn.SyncBatchNorm) for n, h in model.heads.items() if n != "res5avg")
    assert model.freeze_trunk  # FREEZE_TRUNK_ONLY l.58
    assert cfg.optimizer.momentum == 0.9 and cfg.optimizer.nesterov  # l.98, l.100
    assert cfg.optimizer.weight_decay == 5e-4  # l.97
    assert cfg.optimizer.params.weight_decay_norm == 0.0  # regularize_bn False l.101
    assert cfg.optimizer.params.get("weight_decay_bias") in (None, 5e-4)  # regularize_bias True l.102
    # 32 per GPU (l.19) x 8 GPUs (l.116)
    assert cfg.dataloader.train.total_batch_size == 8 * 32 and cfg.train.reference_world_size == 8
    epoch = vissl_epoch_iters(IMAGENET_TRAIN)  # DROP_LAST False (defaults.yaml l.249)
    assert cfg.train.max_iter == 28 * epoch  # num_epochs l.99
    assert cfg.train.eval_period == epoch  # TEST_EVERY_NUM_EPOCH l.6
    assert cfg.train.seed == 1  # SEED_VALUE l.8
    values, milestones = [0.01, 0.001, 0.0001, 0.00001], [8, 16, 24]  # l.105-111 (256 images: x1)
    for e in (0, 7, 8, 15, 16, 23, 24, 27):
        for iteration in (e * epoch, (e + 1) * epoch - 1):  # first and last iteration of VISSL's epoch e
            lrs = group_lrs(cfg, model, iteration)
            want = vissl_multistep_lr(e, values, milestones)
            assert lrs == {"heads": pytest.approx(want, rel=1e-12)}, (e, lrs)


# ---------------------------------------------------------------- semi-supervised full fine-tune


@pytest.mark.parametrize("name, subset_images, list_file, base_lr", [
    # dataset/simclr_in1k_per01.yaml l.5 / per10 l.5: SimCLR's lists, the fulltune yaml's lr (l.85, l.88)
    ("semi_vissl_R50_1percent", 12811, "datasets/imagenet_subsets/1percent.txt", 0.05),
    ("semi_vissl_R50_10percent", 128116, "datasets/imagenet_subsets/10percent.txt", 0.05),
    # dataset/pirl_in1k_per01.yaml / per10: PIRL's lists, base_value 0.01, values [0.01, 0.001] (l.9-13)
    ("semi_vissl_pirl_R50_1percent", 12811, "datasets/imagenet_subsets/pirl_1percent.txt", 0.01),
    ("semi_vissl_pirl_R50_10percent", 128116, "datasets/imagenet_subsets/pirl_10percent.txt", 0.01),
])
def test_semi_vissl_configs_are_the_fulltune_yaml(name, subset_images, list_file, base_lr):
    cfg = _config(name)
    cfg.model.num_classes = 1000
    model = instantiate(cfg.model)
    (fc,) = model.heads.values()  # HEAD.PARAMS ["mlp", {"dims": [2048, 1000]}] l.62-64
    assert (fc.linear.in_features, fc.linear.out_features) == (2048, 1000)
    assert isinstance(fc.bn, torch.nn.Identity) and isinstance(fc.pool, torch.nn.AdaptiveAvgPool2d)
    # PyTorch's default Linear init (vissl/models/heads/mlp.py l.72-73): U(-1/sqrt(2048), 1/sqrt(2048)).
    assert fc.linear.weight.abs().max().item() <= 2048 ** -0.5 and fc.linear.bias.abs().max().item() > 0
    # The whole network trains (no FEATURE_EVAL_SETTINGS: EVAL_MODE_ON False), trunk BN per GPU
    # (CONVERT_BN_TO_SYNC_BN False, defaults.yaml l.909), buffers not broadcast (BROADCAST_BUFFERS
    # False l.97).
    assert not model.freeze_trunk and all(p.requires_grad for p in model.trunk.parameters())
    assert cfg.model.trunk.norm == "BN" and cfg.train.ddp.broadcast_buffers is False
    assert cfg.dataloader.train.dataset.list_file == list_file
    train_view, test_view = cfg.dataloader.train.mapper, cfg.dataloader.test.mapper  # l.20-27, l.36-45
    assert (train_view.train, train_view.crop_size) == (True, 224)
    assert (test_view.train, test_view.resize_size, test_view.crop_size) == (False, 256, 224)
    # weight decay 0, momentum 0.9, nesterov (l.75-78)
    assert cfg.optimizer.momentum == 0.9 and cfg.optimizer.nesterov and cfg.optimizer.weight_decay == 0.0
    # 32 per GPU (l.19) x 8 GPUs (l.94)
    assert cfg.dataloader.train.total_batch_size == 8 * 32 and cfg.train.reference_world_size == 8
    epoch = vissl_epoch_iters(subset_images, drop_last=True)  # DROP_LAST True l.31
    assert cfg.train.max_iter == 70 * epoch  # num_epochs l.77
    assert cfg.train.eval_period == epoch and cfg.train.checkpointer.period == epoch  # l.6, l.103
    assert cfg.train.seed == 1  # l.8
    # One rate for head and trunk (head_optimizer_params.use_different_lr False, defaults.yaml l.1266;
    # vissl/utils/hydra_config.py l.386-389 sets lr_head = lr), x0.1 from epoch 30 (milestones l.89).
    values = [base_lr, base_lr * 0.1]
    for e in (0, 29, 30, 69):
        for iteration in (e * epoch, (e + 1) * epoch - 1):
            want = vissl_multistep_lr(e, values, [30])
            lrs = group_lrs(cfg, model, iteration)
            assert lrs == {"trunk": pytest.approx(want, rel=1e-12),
                           "heads": pytest.approx(want, rel=1e-12)}, (e, lrs)
