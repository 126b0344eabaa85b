import json
import math
from pathlib import Path

import pytest
import torch
from detectron2.config import instantiate
from fixed_batch import fit_fixed_batch, mapped_batch

from d2ssl.engine.train_loop import do_train, setup_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_tiny_config_loss_goes_down_on_fashion_mnist(tiny_config, tmp_path):
    cfg = tiny_config("rotnet", "train.max_iter=40", "train.log_period=1")
    do_train(cfg)
    records = [json.loads(line) for line in (tmp_path / "output" / "metrics.json").read_text().splitlines()]
    first, last = records[0], records[-1]  # the last one holds medians over the last 20 iterations
    # total_loss is loss_rotnet (detectron2 logs the parts only when there are several).
    assert first["total_loss"] == pytest.approx(math.log(4), rel=0.15)
    assert last["total_loss"] < 0.9 * first["total_loss"]
    assert last["rotnet_accuracy"] > 0.35  # chance is 0.25


@pytest.mark.parametrize("rotations_per_image", [4, 1])
def test_trunk_runs_once_over_all_rotated_images(tiny_config, fashion_mnist_small, rotations_per_image):
    cfg = tiny_config("rotnet", f"dataloader.train.mapper.rotations_per_image={rotations_per_image}")
    model = instantiate(cfg.model).train()
    seen = []
    model.trunk.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape))
    losses = model(mapped_batch(cfg, fashion_mnist_small[:6]))
    assert seen == [torch.Size([6 * rotations_per_image, 3, 64, 64])]
    assert losses["loss_rotnet"].item() == pytest.approx(math.log(4), rel=0.3)


def test_all_rotations_are_learned_on_a_fixed_batch(tiny_config, fashion_mnist_small):
    cfg = tiny_config("rotnet")
    model = instantiate(cfg.model)
    batch = mapped_batch(cfg, fashion_mnist_small[:16])
    fit_fixed_batch(model, batch, "loss_rotnet", steps=15, lr=0.05)
    with torch.no_grad():  # still in training mode: BatchNorm's running averages lag behind
        images = torch.cat([d["images"] for d in batch])
        predictions = model.head(model.pooled_features(images)).argmax(dim=1)
    labels = torch.cat([d["rotation_labels"] for d in batch])
    # Each of the four angles (not just one favoured class) is recognised.
    for angle in range(4):
        assert (predictions[labels == angle] == angle).float().mean() > 0.5


@pytest.mark.parametrize(
    "name,depth,width",
    [("rotnet_R50", 50, 1), ("rotnet_R101", 101, 1), ("rotnet_R50w2", 50, 2), ("rotnet_R50w4", 50, 4),
     ("rotnet_R50_mlphead", 50, 1), ("rotnet_R50_blur", 50, 1), ("rotnet_R50_vissl", 50, 1)],
)
def test_variant_configs_build_a_consistent_model(name, depth, width):
    cfg = setup_config(str(CONFIGS / f"{name}.py"))
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = instantiate(cfg.model)
        logits = model.head(model.pooled_features(torch.empty(2, 3, 224, 224)))
    assert model.feature_dim == 2048 * width
    assert logits.shape == (2, 4)
    assert cfg.model.trunk.depth == depth
    mapper = cfg.dataloader.train.mapper
    # 256 trunk inputs per step on 8 GPUs at lr 0.1, as VISSL's 8 x 32.
    assert mapper.rotations_per_image * cfg.dataloader.train.total_batch_size == 256
    assert (cfg.optimizer.lr, cfg.train.reference_world_size, cfg.train.epochs) == (0.1, 8, 105)
    assert mapper.augmentation.gaussian_blur_prob == (0.5 if name.endswith("blur") else 0.0)
