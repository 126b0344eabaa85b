import math
from pathlib import Path

import pytest
import torch
from detectron2.config import instantiate
from test_npid import build_on_images, mean_of_first_and_last, train_steps
from tolerances import assert_within_bound, gamma

from d2ssl.data.color import photo_gblur_augmentation
from d2ssl.engine.train_loop import setup_config
from d2ssl.modeling.backbone import trunk_output_channels
from d2ssl.modeling.meta_arch import PIRL

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_loss_decreases_on_real_images(tiny_config, fashion_mnist_small):
    cfg = tiny_config("pirl")
    model, history = train_steps(cfg, fashion_mnist_small[:32], num_steps=32, batch_size=16)
    assert isinstance(model, PIRL) and model.loss.loss_type == "cross_entropy"
    first, last = mean_of_first_and_last(history["total"])
    assert last < first - 0.5, history
    # The image branch gets below InfoNCE's chance level ln(K + 1) within these steps; the tile branch
    # starts learning later (after ~60 steps in this setting) and is only checked not to diverge.
    # The terms are logged with their weights (0.5).
    chance = math.log(31 + 1)
    assert mean_of_first_and_last(history["loss_nce_image"], 8)[1] < 0.5 * (chance - 0.15), history
    assert mean_of_first_and_last(history["loss_nce_patches"], 8)[1] < 0.5 * (chance + 0.2), history


def test_only_the_image_embedding_updates_the_bank(tiny_config, fashion_mnist_small):
    cfg = tiny_config("pirl")
    model, _, dataset = build_on_images(cfg, fashion_mnist_small[:32])
    outputs = {}
    model.image_head.register_forward_hook(lambda m, i, out: outputs.__setitem__("image", out.detach()))
    model.patch_head.register_forward_hook(lambda m, i, out: outputs.__setitem__("patches", out.detach()))
    batch = [dataset[(i, i)] for i in (3, 8, 20)]
    before = model.loss.memory.clone()
    model(batch)

    rows = torch.tensor([3, 8, 20])
    normalize = torch.nn.functional.normalize
    momentum = model.loss.momentum
    dim = model.loss.embedding_dim
    for branch, should_match in (("image", True), ("patches", False)):
        v = normalize(outputs[branch], dim=1)
        expected = normalize(momentum * before[rows] + (1 - momentum) * v, dim=1)
        # Two float32 evaluations of normalize(mu m + (1 - mu) v), each within (2-norm, per row)
        # (gamma_3 |mu |m| + (1 - mu) |v|| + (1 - mu) gamma_{D+4}) / |w| + gamma_{D+4} of the exact
        # row: the weighted sum (scalar rounded, product, sum), v's own normalisation passed on at
        # (1 - mu) / |w|, and the final normalisation.
        w = (momentum * before[rows] + (1 - momentum) * v).double().norm(dim=1, keepdim=True)
        spread = (momentum * before[rows].abs() + (1 - momentum) * v.abs()).double().norm(dim=1, keepdim=True)
        bound = 2 * ((gamma(3) * spread + (1 - momentum) * gamma(dim + 4)) / w + gamma(dim + 4))
        if should_match:
            assert_within_bound(model.loss.memory[rows], expected, bound, name="bank rows of the batch",
                                what="two float32 evaluations' rounding bound")
        else:
            assert ((model.loss.memory[rows] - expected).abs().double() > bound).any(), branch
    untouched = torch.ones(32, dtype=torch.bool)
    untouched[rows] = False
    assert torch.equal(model.loss.memory[untouched], before[untouched])


def test_trunk_runs_separately_on_tiles_and_images(tiny_config, fashion_mnist_small):
    cfg = tiny_config("pirl")
    model, _, dataset = build_on_images(cfg, fashion_mnist_small[:32])
    seen = []
    model.trunk.register_forward_hook(lambda m, inp, out: seen.append(tuple(inp[0].shape)))
    model([dataset[(i, i)] for i in range(4)])
    assert seen == [(4 * 9, 3, 14, 14), (4, 3, 32, 32)]  # BatchNorm statistics per view, as VISSL


def test_tile_count_must_match_the_head(tiny_config, fashion_mnist_small):
    cfg = tiny_config("pirl")
    model, _, dataset = build_on_images(cfg, fashion_mnist_small[:32])
    batch = [dataset[(i, i)] for i in range(2)]
    for sample in batch:
        sample["tiles"] = sample["tiles"][:4]
    with pytest.raises(ValueError, match="4 tiles per image but patch_head.num_tiles=9"):
        model(batch)


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIGS.glob("pirl_*.py")))
def test_variant_heads_read_the_trunk_width(name):
    cfg = setup_config(str(CONFIGS / f"{name}.py"))
    with torch.device("meta"):
        trunk = instantiate(cfg.model.trunk)
        heads = [instantiate(cfg.model.image_head), instantiate(cfg.model.patch_head)]
    for head in heads:
        linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
        assert linears[0].in_features == trunk_output_channels(trunk)
        assert linears[-1].out_features == cfg.model.loss.memory_params.embedding_dim == 128
    mlp = "_mlp" in name
    assert cfg.model.loss.loss_type == ("cross_entropy" if mlp else "nce")
    assert cfg.model.loss.temperature == (0.1 if mlp else 0.07)
    assert len(cfg.model.image_head.dims) == (3 if mlp else 2)
    gblur = cfg.dataloader.train.mapper.augmentation._target_ is photo_gblur_augmentation
    assert gblur == ("gblur" in name)


def test_published_hyper_parameters():
    cfg = setup_config(str(CONFIGS / "pirl_R50.py"))
    assert (cfg.dataloader.train.total_batch_size, cfg.train.reference_world_size) == (1024, 32)
    assert (cfg.optimizer.lr, cfg.train.epochs, cfg.optimizer.params.weight_decay_bias) == (0.12, 800, 0.0)
    loss = cfg.model.loss
    assert loss.negative_sampling_params.num_negatives == 32000 and list(loss.loss_weights) == [0.5, 0.5]
    assert (loss.memory_params.update_mem_on_forward, loss.update_mem_with_emb_index) == (False, 1)
    lr = instantiate(cfg.lr_multiplier)
    # Cosine from 0.12 to 0.00012, one value per epoch (pirl_jigsaw_4node_resnet50.yaml l. 99-104,
    # update_interval epoch): epoch e runs at end + (1 - end) 0.5 (1 + cos(pi e / 800)) of the lr, here
    # written out; a continuous cosine would give 0.001 + 2.5e-8 at 0.9999 instead of 0.001 + 3.9e-6.
    def vissl(epoch: int) -> float:
        return 0.001 + 0.999 * 0.5 * (1 + math.cos(math.pi * epoch / 800))

    # A few float64 operations (cos within an ulp) on values <= 1: 1e-12 is ~1e4 ulps of room.
    assert lr(0.0) == 1.0 and lr(0.9999) == pytest.approx(vissl(799), rel=1e-12)
    assert lr(0.5) == pytest.approx(vissl(400), rel=1e-12) and lr(0.5 + 0.5 / 800) == lr(0.5)
    augmentation = cfg.dataloader.train.mapper.augmentation
    assert (augmentation.color_jitter_prob, augmentation.photometric_prob, augmentation.grayscale_prob) == (
        1.0, 0.66, 0.2,
    )
    wide = setup_config(str(CONFIGS / "pirl_R50w2_mlp.py"))
    assert (wide.train.amp.enabled, wide.train.epochs, wide.model.trunk.width_multiplier) == (True, 400, 2)
    assert list(wide.model.patch_head.per_tile.dims) == [4096, 4096, 128]
