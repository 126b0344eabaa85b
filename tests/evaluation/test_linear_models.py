"""Linear benchmark models: VISSL's seven heads on a frozen trunk, the JigClu/MoCo and semi recipes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from detectron2.config import instantiate

from d2ssl.engine.train_loop import setup_config
from d2ssl.evaluation.models import TrunkClassifier, trunk_features
from d2ssl.modeling.backbone import build_resnet_trunk

REPO = Path(__file__).resolve().parents[2]


def _config(name: str, *overrides: str):
    return setup_config(str(REPO / "configs/eval" / f"{name}.py"), list(overrides))


def _mapped_batch(cfg, images: list[dict]) -> list[dict]:
    mapper = instantiate(cfg.dataloader.train.mapper)
    return [mapper(d, torch.Generator().manual_seed(i)) for i, d in enumerate(images)]


def test_vissl_heads_train_on_frozen_trunk_features_only(fashion_mnist_small):
    cfg = _config("tiny/linear_vissl")
    model = instantiate(cfg.model)
    assert set(model.heads) == {"conv1", "res2", "res3", "res4", "res5", "res5avg_bn", "res5avg"}
    trunk_before = {k: v.clone() for k, v in model.trunk.state_dict().items()}
    assert any("running_mean" in k for k in trunk_before)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    optimized = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert optimized == {id(p) for p in model.heads.parameters()}
    # VISSL: no weight decay on BatchNorm, 5e-4 on the Linear weights and biases.
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decay[id(model.heads.res2.bn.weight)] == 0.0 and decay[id(model.heads.res2.linear.bias)] == 5e-4

    batch = _mapped_batch(cfg, fashion_mnist_small[:64])
    model.train()
    assert not model.trunk.training and model.heads.res2.training
    history = []
    for _ in range(20):
        losses = model(batch)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        history.append({k: v.item() for k, v in losses.items()})
    for head in model.heads:
        first, last = history[0][f"loss_{head}"], history[-1][f"loss_{head}"]
        assert last < 0.8 * first, (head, first, last)
    # Trunk weights AND BatchNorm statistics are bit-identical after training steps in train mode.
    for k, v in model.trunk.state_dict().items():
        assert torch.equal(v, trunk_before[k]), k
    assert all(p.grad is None for p in model.trunk.parameters())


def test_vissl_r50_pools_give_the_reference_head_dims():
    cfg = _config("linear_vissl_R50")
    model = instantiate(cfg.model)
    dims = {name: head.linear.in_features for name, head in model.heads.items()}
    # eval_resnet_8gpu_transfer_in1k_linear.yaml: eval_mlp dims, res5avg 2048.
    assert dims == {"conv1": 9216, "res2": 9216, "res3": 8192, "res4": 9216, "res5": 8192,
                    "res5avg_bn": 2048, "res5avg": 2048}
    assert isinstance(model.heads.res5avg.bn, torch.nn.Identity)
    assert isinstance(model.heads.res5avg_bn.bn, torch.nn.SyncBatchNorm)  # VISSL: CONVERT_BN_TO_SYNC_BN
    assert cfg.optimizer.nesterov and cfg.optimizer.momentum == 0.9 and cfg.optimizer.weight_decay == 5e-4
    assert cfg.optimizer.lr == 0.01 and cfg.dataloader.train.total_batch_size == 256
    assert list(cfg.lr_multiplier.milestones) == [8, 16, 24] and cfg.lr_multiplier.num_updates == 28
    assert list(cfg.lr_multiplier["values"]) == pytest.approx([1, 0.1, 0.01, 0.001])
    assert cfg.train.epochs is None and cfg.train.max_iter == 28 * 5005  # VISSL's iterations, see the config


def test_jigclu_linear_config_has_the_reference_recipe():
    cfg = _config("linear_jigclu_R50")
    model = instantiate(cfg.model)
    (fc,) = model.heads.values()
    assert fc.linear.in_features == 2048 and fc.linear.out_features == 1000
    assert isinstance(fc.bn, torch.nn.Identity) and isinstance(fc.pool, torch.nn.AdaptiveAvgPool2d)
    # main_lincls.py l. 168-169: normal(0, 0.01); the sample std of n draws has relative standard error
    # 1 / sqrt(2 (n - 1)), 0.05 % here: six of them (the law itself: test_initialisation_is_the_references).
    n = fc.linear.weight.numel()
    assert abs(fc.linear.weight.std().item() - 0.01) <= 6 * 0.01 / math.sqrt(2 * (n - 1))
    assert not fc.linear.bias.any()
    assert model.freeze_trunk and not any(p.requires_grad for p in model.trunk.parameters())
    assert cfg.optimizer.lr == 10.0 and cfg.optimizer.momentum == 0.9 and cfg.optimizer.weight_decay == 0.0
    assert not cfg.optimizer.nesterov and cfg.dataloader.train.total_batch_size == 256
    assert list(cfg.lr_multiplier.milestones) == [60, 80] and cfg.lr_multiplier.num_updates == 100
    assert cfg.train.epochs == 100 and cfg.train.eval_period == 5005
    train_view, test_view = cfg.dataloader.train.mapper, cfg.dataloader.test.mapper
    assert train_view.train and train_view.crop_size == 224
    assert (test_view.train, test_view.resize_size, test_view.crop_size) == (False, 256, 224)


# The _lastlayer_lr options; the default configs train the fc at the trunk's rate, as main_semi.py did
# (tests/test_recipes_jigclu_nce_clusterfit.py).
@pytest.mark.parametrize("name, lr, last_layer_lr", [("semi_jigclu_R50_10percent_lastlayer_lr", 0.01, 0.2),
                                                     ("semi_jigclu_R50_1percent_lastlayer_lr", 0.02, 5.0)])
def test_semi_lastlayer_lr_configs_give_the_last_layer_its_own_learning_rate(name, lr, last_layer_lr):
    cfg = _config(name, "model.trunk.norm=BN")
    model = instantiate(cfg.model)
    assert not model.freeze_trunk and all(p.requires_grad for p in model.trunk.parameters())
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    lrs = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert [lrs[id(p)] for p in model.heads.parameters()] == pytest.approx([last_layer_lr] * 2)
    trunk_lrs = [lrs[id(p)] for p in model.trunk.parameters()]
    assert trunk_lrs == pytest.approx([lr] * len(trunk_lrs))
    assert cfg.optimizer.weight_decay == 0.0 and cfg.dataloader.train.total_batch_size == 256
    assert list(cfg.lr_multiplier.milestones) == [30, 60, 90] and cfg.lr_multiplier.num_updates == 100
    assert cfg.dataloader.train.dataset.list_file.endswith(name.split("_")[3] + ".txt")


def test_vissl_conv1_is_the_stem_before_max_pooling():
    trunk = build_resnet_trunk(depth=18, base_channels=16, out_features=("stem", "res3")).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = trunk_features(trunk, x, ["conv1", "stem", "res3"])
        reference = trunk(x)
    assert features["conv1"].shape == (2, 16, 32, 32)
    assert all(torch.equal(features[k], reference[k]) for k in ("stem", "res3"))
    assert torch.equal(torch.nn.functional.max_pool2d(features["conv1"], 3, 2, 1), features["stem"])


def test_a_pool_larger_than_the_map_is_an_error_naming_the_head():
    with pytest.raises(ValueError, match="head 'res5'.*does not fit"):
        TrunkClassifier(build_resnet_trunk(depth=18, base_channels=16),
                        {"res5": {"feature": "res5", "pool": [6, 1, 0]}}, num_classes=10, input_size=64)


def test_labels_beyond_num_classes_are_an_error_naming_the_key(fashion_mnist_small):
    model = TrunkClassifier(build_resnet_trunk(depth=18, base_channels=16), {"fc": {"feature": "res5"}},
                            num_classes=5, input_size=32)
    batch = [{"image": torch.zeros(3, 32, 32), "label": d["label"]} for d in fashion_mnist_small[:20]]
    with pytest.raises(ValueError, match="model.num_classes"):
        model.train()(batch)
