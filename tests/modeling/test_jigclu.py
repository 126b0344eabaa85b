import json
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.config import instantiate
from fixed_batch import fit_fixed_batch, mapped_batch
from torch import nn
from torch.nn import functional as F

from d2ssl.engine.train_loop import do_train, setup_config
from d2ssl.modeling import build_resnet_trunk, mlp_head
from d2ssl.modeling.meta_arch import JigsawClustering

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


class MeanPerPatchTrunk(nn.Module):
    """A stand-in trunk whose "res5" has one cell per montage slot holding the slot's mean colour."""

    def __init__(self, patch_size: int):
        super().__init__()
        self.patch_size = patch_size

    def forward(self, images):
        return {"res5": F.avg_pool2d(images, self.patch_size)}


def test_features_and_labels_of_each_slot_belong_to_the_same_patch():
    n, size = 6, 4
    patches = torch.randn(n, 4, 3, size, size, generator=torch.Generator().manual_seed(0))
    model = JigsawClustering(
        MeanPerPatchTrunk(size), cluster_head=nn.Identity(), location_head=nn.Linear(3, 4), upsample_size=None
    )
    montages, cluster_labels, location_labels = model.montage_batch(patches)
    features = model.patch_features(montages)
    assert montages.shape == (n, 3, 2 * size, 2 * size) and features.shape == (4 * n, 3)
    # Row r is the feature of patch (image cluster_labels[r], position location_labels[r]).
    torch.testing.assert_close(features, patches[cluster_labels, location_labels].mean(dim=(2, 3)))
    assert torch.bincount(cluster_labels).tolist() == [4] * n
    every_patch = [(i, k) for i in range(n) for k in range(4)]
    assert sorted(zip(cluster_labels.tolist(), location_labels.tolist())) == every_patch


def test_slot_features_average_the_upsampled_quadrants():
    model = JigsawClustering(
        MeanPerPatchTrunk(1), cluster_head=nn.Identity(), location_head=nn.Identity(), upsample_size=8
    )
    fmap = torch.randn(2, 5, 7, 7)
    quadrants = model.slot_features(fmap)
    upsampled = F.interpolate(fmap, size=(8, 8), mode="bilinear", align_corners=False)
    assert quadrants.shape == (2, 5, 2, 2)
    torch.testing.assert_close(quadrants[:, :, 1, 0], upsampled[:, :, 4:, :4].mean(dim=(2, 3)))


def test_tiny_config_loss_goes_down_on_fashion_mnist(tiny_config, tmp_path):
    cfg = tiny_config("jigclu", "train.max_iter=40", "train.log_period=1")
    do_train(cfg)
    records = [json.loads(line) for line in (tmp_path / "output" / "metrics.json").read_text().splitlines()]
    first, last = records[0], records[-1]  # the last one holds medians over the last 20 iterations
    # Starts near the loss of uninformative features: 0.3 / 0.07 * ln(4N - 1) and ln 4.
    assert first["loss_clu"] == pytest.approx(0.3 / 0.07 * math.log(63), rel=0.05)
    assert first["loss_loc"] == pytest.approx(math.log(4), rel=0.2)
    assert last["total_loss"] < first["total_loss"] - 0.15
    assert last["loss_loc"] < first["loss_loc"] - 0.1


def test_patches_of_one_image_cluster_when_slot_features_are_local(tiny_config, fashion_mnist_small):
    # The tiny trunk's 2x2 res5 on 64 px montages mixes the four slots, which takes the clustering loss
    # ~60 iterations to get past; its 4x4 res4 gives each slot its own cells, so clustering shows at once.
    cfg = tiny_config("jigclu")
    torch.manual_seed(0)
    model = JigsawClustering(
        build_resnet_trunk(depth=18, base_channels=16, out_features=("res4",)),
        cluster_head=mlp_head([64, 64, 32]), location_head=mlp_head([64, 4]), feature="res4",
    )
    batch = mapped_batch(cfg, fashion_mnist_small[:16])
    losses = fit_fixed_batch(model, batch, "loss_clu", steps=25, lr=0.03)
    collapsed = 0.3 / 0.07 * math.log(63)  # all embeddings equal
    assert sum(losses[-5:]) / 5 < collapsed - 1.0


def tiny_model() -> JigsawClustering:
    # No BatchNorm: its per-rank statistics would differ from the full batch's by design.
    return JigsawClustering(
        build_resnet_trunk(depth=18, base_channels=16, norm=""),
        cluster_head=mlp_head([128, 128, 32]), location_head=mlp_head([128, 4]),
    )


def losses_and_gradients(model: JigsawClustering, patches: torch.Tensor, seed: int):
    torch.manual_seed(seed)  # the permutation: drawn on rank 0 only in a distributed run
    losses = model([{"patches": p} for p in patches])
    model.zero_grad()
    sum(losses.values()).backward()
    return {k: v.item() for k, v in losses.items()}, [p.grad.clone() for p in model.parameters()]


def distributed_worker(rank, world_size, init_file, state, patches, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    model = tiny_model()
    model.load_state_dict(state)
    n = len(patches) // world_size
    losses, grads = losses_and_gradients(model, patches[rank * n : (rank + 1) * n], seed=100 + rank)
    for g in grads:  # what DistributedDataParallel does
        dist.all_reduce(g)
        g /= world_size
    torch.save({"losses": losses, "grads": grads}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_processes_compute_the_full_batch_loss_and_gradient(tmp_path):
    torch.manual_seed(0)
    model = tiny_model()
    patches = torch.randn(8, 4, 3, 32, 32)
    expected_losses, expected_grads = losses_and_gradients(model, patches, seed=100)
    mp.spawn(
        distributed_worker, nprocs=2,
        args=(2, str(tmp_path / "init"), model.state_dict(), patches, str(tmp_path)),
    )
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["losses"] == pytest.approx(expected_losses, rel=1e-5)
        for g, e in zip(got["grads"], expected_grads):
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "name,depth,width,projection",
    [("jigclu_R50", 50, 1, [2048, 2048, 128]), ("jigclu_R101", 101, 1, [2048, 2048, 128]),
     ("jigclu_R50w2", 50, 2, [4096, 4096, 128]), ("jigclu_R50w4", 50, 4, [8192, 8192, 128]),
     ("jigclu_R50_linearhead", 50, 1, [2048, 128])],
)
def test_variant_configs_build_a_consistent_model(name, depth, width, projection):
    cfg = setup_config(str(CONFIGS / f"{name}.py"))
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = instantiate(cfg.model)
        features = model.patch_features(torch.empty(2, 3, 224, 224))
        embeddings, logits = model.cluster_head(features), model.location_head(features)
    assert features.shape == (8, 2048 * width) and embeddings.shape == (8, 128) and logits.shape == (8, 4)
    assert [m.in_features for m in model.cluster_head if isinstance(m, nn.Linear)] == projection[:-1]
    assert cfg.model.trunk.depth == depth and cfg.model.trunk.norm == "SyncBN"
    assert (model.cluster_loss.temperature, model.cluster_loss.base_temperature) == (0.3, 0.07)
    assert (cfg.dataloader.train.total_batch_size, cfg.optimizer.lr, cfg.train.epochs) == (256, 0.03, 200)
    # JigClu decays BatchNorm weights too (torch.optim.SGD over model.parameters()).
    assert cfg.optimizer.weight_decay == cfg.optimizer.params.weight_decay_norm == 1e-4


def test_learning_rate_follows_a_cosine_stepped_once_per_epoch():
    schedule = instantiate(setup_config(str(CONFIGS / "jigclu_R50.py")).lr_multiplier)
    epochs = 200
    for epoch in (0, 1, 50, 100, 199):
        expected = 0.5 * (1 + math.cos(math.pi * epoch / epochs))
        assert schedule(epoch / epochs) == pytest.approx(expected)
        assert schedule((epoch + 0.99) / epochs) == pytest.approx(expected)  # constant within an epoch
    assert schedule(1.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 199 / 200)))
