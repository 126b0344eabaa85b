import json
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.config import instantiate
from fixed_batch import fit_fixed_batch, mapped_batch
from tolerances import assert_close_sum_order, gradient_term_sums
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
    want = patches[cluster_labels, location_labels]
    # avg_pool2d and mean: the same 16 values per channel summed in possibly other orders.
    assert_close_sum_order(features, want.mean(dim=(2, 3)), terms=size * size,
                           scale=want.abs().mean(dim=(2, 3)), name="slot features")
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
    quadrant = upsampled[:, :, 4:, :4]
    # The same bilinear interpolation averaged over the 4 x 4 cells, in possibly another order.
    assert_close_sum_order(quadrants[:, :, 1, 0], quadrant.mean(dim=(2, 3)), terms=16,
                           scale=quadrant.abs().mean(dim=(2, 3)), name="lower-left quadrant")


def test_tiny_config_loss_goes_down_on_fashion_mnist(tiny_config, tmp_path):
    cfg = tiny_config("jigclu", "train.max_iter=40", "train.log_period=1")
    do_train(cfg)
    records = [json.loads(line) for line in (tmp_path / "output" / "metrics.json").read_text().splitlines()]
    first, last = records[0], records[-1]  # the last one holds medians over the last 20 iterations
    # Starts near the loss of uninformative features: 0.3 / 0.07 * ln(4N - 1) and ln 4.
    assert first["loss_clu"] == pytest.approx(0.3 / 0.07 * math.log(63), rel=0.05)
    assert first["loss_loc"] == pytest.approx(math.log(4), rel=0.2)
    assert last["total_loss"] < first["total_loss"] - 0.15
    # A smoke check of the configured pipeline only: a fresh head starts above ln 4 and falls to it even
    # with wrong labels (measured: 1.49-1.61 -> 1.41-1.44 in 40 steps over seeds 0-2). That locations
    # are learned is test_location_head_learns_positions_that_hold_in_new_montages_and_unseen_photos.
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


def test_location_head_learns_positions_that_hold_in_new_montages_and_unseen_photos(
    tiny_config, fashion_mnist_small
):
    # Location labels that do not belong to the patch in the slot (a wrong slot order, another patch's
    # label) change with every montage permutation: nothing can fit them, the loss stays at ln 4 and
    # accuracy at chance (0.25). Res4 slot features, as in the test above; 25 steps on 16 photos.
    # Measured over seeds 0-4 (-> with the labels of other patches, a random permutation of them):
    #   mean loss of the last 5 steps   1.050-1.123          (-> 1.384-1.420)
    #   accuracy, the 16 photos in new montages (64 patches)    0.516-0.688 (-> 0.172-0.313)
    #   accuracy, 128 unseen photos (512 patches; sd 0.019 at chance)   0.307-0.328 (-> 0.217-0.268)
    cfg = tiny_config("jigclu")
    torch.manual_seed(0)
    model = JigsawClustering(
        build_resnet_trunk(depth=18, base_channels=16, out_features=("res4",)),
        cluster_head=mlp_head([64, 64, 32]), location_head=mlp_head([64, 4]), feature="res4",
    )
    batch = mapped_batch(cfg, fashion_mnist_small[:16])
    losses = fit_fixed_batch(model, batch, "loss_loc", steps=25, lr=0.03)
    accuracies = []
    for photos in (batch, mapped_batch(cfg, fashion_mnist_small[128:256])):
        with torch.no_grad():  # new montages: every patch in another slot, beside other patches
            montages, _, location_labels = model.montage_batch(model.stack(photos, "patches"))
            logits = model.location_head(model.patch_features(montages))
        accuracies.append((logits.argmax(dim=1) == location_labels).float().mean().item())
    assert sum(losses[-5:]) / 5 < 1.25
    assert accuracies[0] > 0.42 and accuracies[1] > 0.28, accuracies


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
    def loss() -> torch.Tensor:
        torch.manual_seed(100)
        return sum(model([{"patches": p} for p in patches]).values())

    # Only the order of float32 sums differs (the gathered features, the all-reduced gradients): bounded
    # by gamma over every sum on the path, each layer's fan-in and batch reduction forward and backward
    # plus the loss's 32 x 32 similarities of 32-d embeddings, relative to sum |t_i| (tests/tolerances.py).
    term_sums, path_terms = gradient_term_sums(model, loss)
    terms = path_terms + 2 * (32 + 32 + 4)
    names = [name for name, _ in model.named_parameters()]
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["losses"].keys() == expected_losses.keys()
        for key, value in expected_losses.items():  # means of positive per-patch losses: sum |t_i| = |loss|
            assert_close_sum_order(torch.tensor(got["losses"][key]), torch.tensor(value), terms=terms // 2,
                                   scale=abs(value), name=f"rank {rank} {key}")
        for name, g, e in zip(names, got["grads"], expected_grads):
            assert_close_sum_order(g, e, terms=terms, scale=term_sums[name][0], name=f"rank {rank} {name}")


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
        # JigsawClustering main.py l. 380-385 (commit 1490f3b), called at each epoch start:
        # lr *= (0.5 - min_lr) (1 + cos(pi epoch / epochs)) + min_lr, min_lr 0 by default (l. 54).
        expected = 0.5 * (1 + math.cos(math.pi * epoch / epochs))
        assert schedule(epoch / epochs) == pytest.approx(expected)
        assert schedule((epoch + 0.99) / epochs) == pytest.approx(expected)  # constant within an epoch
    assert schedule(1.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 199 / 200)))
