import math
from pathlib import Path

import pytest
import torch
from detectron2.config import instantiate

from d2ssl.data.build import SeededMapDataset
from d2ssl.engine.checkpointer import AtomicCheckpointer
from d2ssl.engine.train_loop import do_train, setup_config
from d2ssl.modeling.backbone import trunk_output_channels
from d2ssl.modeling.meta_arch import NPID

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def build_on_images(cfg, images: list[dict]):
    """The model, optimizer and mapped data set of a config, with a bank sized to ``images``."""
    cfg.model.loss.num_train_samples = len(images)
    sampling = cfg.model.loss.negative_sampling_params
    sampling.num_negatives = min(sampling.num_negatives, len(images) - 1)
    model = instantiate(cfg.model).train()
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    dataset = SeededMapDataset(images, instantiate(cfg.dataloader.train.mapper), seed=0)
    return model, optimizer, dataset


def train_steps(cfg, images: list[dict], num_steps: int, batch_size: int):
    """Trains ``cfg``'s model on ``images`` (fresh augmentations each step, as the loader would);
    returns the model and, per loss name, its values step by step."""
    model, optimizer, dataset = build_on_images(cfg, images)
    history: dict[str, list[float]] = {}
    for step in range(num_steps):
        positions = range(step * batch_size, (step + 1) * batch_size)
        losses = model([dataset[(p % len(images), p)] for p in positions])
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        for name, value in {"total": total, **losses}.items():
            history.setdefault(name, []).append(value.item())
    return model, history


def mean_of_first_and_last(values: list[float], n: int = 4) -> tuple[float, float]:
    return sum(values[:n]) / n, sum(values[-n:]) / n


def test_loss_decreases_on_real_images(tiny_config, fashion_mnist_small):
    cfg = tiny_config("npid")
    model, history = train_steps(cfg, fashion_mnist_small[:64], num_steps=24, batch_size=32)
    assert isinstance(model, NPID) and model.loss.loss_type == "cross_entropy"
    # InfoNCE of embeddings that cannot tell the images apart is ln(K + 1); an untrained bank starts
    # about there (and overshoots while it fills); learning brings the loss well below it.
    chance = math.log(63 + 1)
    first, last = mean_of_first_and_last(history["loss_nce"])
    assert last < first and last < chance - 0.3, (chance, history)


def test_checkpoint_restores_memory_bank_and_norm_constant(tiny_config, fashion_mnist_small, tmp_path):
    cfg = tiny_config("npid", "model.loss.loss_type=nce")
    model, _ = train_steps(cfg, fashion_mnist_small[:64], num_steps=2, batch_size=32)
    AtomicCheckpointer(model, str(tmp_path)).save("model_0000001")

    fresh = instantiate(cfg.model)
    assert fresh.loss.norm_constant.item() == -1
    assert not torch.equal(fresh.loss.memory, model.loss.memory)  # training moved the bank
    AtomicCheckpointer(fresh).load(str(tmp_path / "model_0000001.pth"))
    assert torch.equal(fresh.loss.memory, model.loss.memory)
    assert fresh.loss.norm_constant.item() == model.loss.norm_constant.item() > 0


def test_vissl_nce_trains_through_do_train_and_banks_the_seen_images(tiny_config):
    cfg = tiny_config("npid", "model.loss.loss_type=nce", "train.max_iter=3", "train.checkpointer.period=100")
    scalars = do_train(cfg)
    assert math.isfinite(scalars["total_loss"]) and scalars["nce_norm_constant"] > 0
    state = torch.load(Path(cfg.train.output_dir) / "model_final.pth", weights_only=False)["model"]
    initial = instantiate(cfg.model.loss).memory  # num_train_samples was filled in by do_train
    assert state["loss.memory"].shape == (60000, 128) == initial.shape
    # 3 steps x 32 images of one epoch's permutation: exactly 96 rows, those of the images seen, moved.
    moved = (state["loss.memory"] != initial).any(dim=1).nonzero().flatten()
    order = torch.as_tensor(instantiate(cfg.dataloader.train).batch_sampler.sampler.epoch_order(0)[:96])
    assert torch.equal(moved, order.sort().values)


def test_bad_bank_config_fails_before_training(tiny_config):
    cfg = tiny_config("npid", "model.loss.negative_sampling_params.num_negatives=60000", "train.max_iter=3")
    with pytest.raises(ValueError, match="num_negatives=60000 must be between 1 and .*59999"):
        do_train(cfg)
    assert not (Path(cfg.train.output_dir) / "metrics.json").exists()


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIGS.glob("npid_*.py")))
def test_variant_heads_read_the_trunk_width(name):
    cfg = setup_config(str(CONFIGS / f"{name}.py"))
    with torch.device("meta"):
        trunk, head = instantiate(cfg.model.trunk), instantiate(cfg.model.head)
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert linears[0].in_features == trunk_output_channels(trunk)
    assert linears[-1].out_features == cfg.model.loss.memory_params.embedding_dim == 128
    assert cfg.model.loss.num_train_samples == -1  # filled in from the data set


def test_published_hyper_parameters():
    npid = setup_config(str(CONFIGS / "npid_R50.py"))
    assert (npid.dataloader.train.total_batch_size, npid.train.reference_world_size) == (256, 8)
    assert npid.model.loss.negative_sampling_params.num_negatives == 4096
    assert (npid.optimizer.lr, npid.train.epochs) == (0.03, 200)
    assert list(npid.lr_multiplier.milestones) == [120, 160] and npid.lr_multiplier.num_updates == 200
    assert (npid.model.loss.temperature, npid.model.loss.memory_params.momentum) == (0.07, 0.5)
    plus = setup_config(str(CONFIGS / "npid_pp_R50.py"))
    assert (plus.dataloader.train.total_batch_size, plus.train.reference_world_size) == (1024, 32)
    assert (plus.model.loss.negative_sampling_params.num_negatives, plus.optimizer.lr, plus.train.epochs) == (
        32000, 0.12, 800,
    )
    wide = setup_config(str(CONFIGS / "npid_R50w4.py"))
    assert wide.model.trunk.width_multiplier == 4 and list(wide.model.head.dims) == [8192, 128]
    mlp = setup_config(str(CONFIGS / "npid_R50_mlp.py"))
    assert list(mlp.model.head.dims) == [2048, 2048, 128] and mlp.model.head.use_relu
