from pathlib import Path

import pytest
import torch
from detectron2.config import instantiate
from fixed_batch import fit_fixed_batch, mapped_batch

from d2ssl.engine.train_loop import setup_config
from d2ssl.modeling.meta_arch import Jigsaw

REPO = Path(__file__).resolve().parents[2]


def test_loss_decreases_on_real_images(tiny_config, fashion_mnist_small):
    cfg = tiny_config("jigsaw")
    model: Jigsaw = instantiate(cfg.model)
    batch = mapped_batch(cfg, fashion_mnist_small[:64])
    losses = fit_fixed_batch(model, batch, "loss_jigsaw", steps=12, lr=0.05)
    # Starts near chance (ln 24 = 3.18) and fits a fixed batch within a dozen steps.
    assert abs(losses[0] - torch.log(torch.tensor(24.0)).item()) < 0.5
    assert losses[-1] < 0.6 * losses[0]


def test_eval_mode_returns_pooled_trunk_features(tiny_config):
    cfg = tiny_config("jigsaw")
    model = instantiate(cfg.model).eval()
    feats = model([{"image": torch.randn(3, 32, 32)} for _ in range(5)])
    assert feats.shape == (5, model.feature_dim) == (5, 128)


def test_trunk_runs_once_over_all_tiles(tiny_config, fashion_mnist_small):
    cfg = tiny_config("jigsaw")
    model = instantiate(cfg.model).train()
    mapper = instantiate(cfg.dataloader.train.mapper)
    batch = [mapper(dict(d), torch.Generator().manual_seed(i)) for i, d in enumerate(fashion_mnist_small[:3])]
    seen = []
    model.trunk.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape))
    model(batch)
    assert seen == [torch.Size([3 * 4, 3, 28, 28])]


@pytest.mark.parametrize(
    "name, feature_dim, num_permutations",
    [("jigsaw_R50", 2048, 2000), ("jigsaw_R101", 2048, 2000), ("jigsaw_R50w2", 4096, 2000),
     ("jigsaw_R50w4", 8192, 2000), ("jigsaw_R50_perm100", 2048, 100), ("jigsaw_R50_perm10000", 2048, 10000)],
)
def test_full_scale_variants_build_with_matching_head_sizes(name, feature_dim, num_permutations):
    cfg = setup_config(str(REPO / "configs" / f"{name}.py"))
    with torch.device("meta"):
        model = instantiate(cfg.model)
    assert model.feature_dim == feature_dim
    assert model.head.per_tile[0].in_features == feature_dim
    assert model.head.on_concat[-1].out_features == num_permutations
    assert cfg.dataloader.train.mapper.permutations.num_permutations == num_permutations
    # VISSL's recipe: 8 x 32 images, lr 0.1, 105 epochs.
    assert (cfg.dataloader.train.total_batch_size, cfg.optimizer.lr, cfg.train.epochs) == (256, 0.1, 105)
