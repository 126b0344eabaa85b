"""VISSL's linear benchmark across processes: the heads' BatchNorm is synchronised, as VISSL converts
it (eval_resnet_8gpu_transfer_in1k_linear.yaml l.87-89, CONVERT_BN_TO_SYNC_BN: True, at vissl 09270ed).

Two CPU processes (gloo; this file run as a script) train eval_mlp-style heads on a frozen tiny trunk
for a few steps, each on its half of every global batch of real Fashion-MNIST photos, through
``create_ddp_model`` with ``broadcast_buffers=False`` (d2ssl's default). Before the fix each rank kept
its own per-process statistics (res4 running mean 3.4e-2 apart after 5 steps), so each rank scored
its test shard with other statistics and the checkpoint held rank 0's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from detectron2.utils import comm

REPO = Path(__file__).resolve().parents[2]
WORLD, PER_RANK, STEPS, SIZE = 2, 8, 5, 64
HEADS = {  # VISSL eval_mlp heads (BN + Linear) on a pooled res4 and the globally pooled res5
    "res4": dict(feature="res4", pool=(2, 2, 0), use_bn=True, init_std=None),
    "res5avg_bn": dict(feature="res5", pool=None, use_bn=True, init_std=None),
}
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def _batches() -> list[list[dict]]:
    from d2ssl.data.datasets import get_dataset_dicts
    from d2ssl.data.mappers.classification import ClassificationMapper

    mapper = ClassificationMapper(train=False, resize_size=SIZE, crop_size=SIZE)
    dicts = get_dataset_dicts("fashion_mnist_train", limit=STEPS * WORLD * PER_RANK)
    mapped = [mapper(d) for d in dicts]
    return [mapped[i * WORLD * PER_RANK:(i + 1) * WORLD * PER_RANK] for i in range(STEPS)]


def train_heads(record_inputs: bool = False) -> dict:
    """``STEPS`` SGD steps of the heads on this rank's share of each global batch (all of it on one
    process); returns the heads' BatchNorm buffers and, with ``record_inputs``, the largest |input|
    each BN saw."""
    from d2ssl.evaluation.models import TrunkClassifier
    from d2ssl.modeling.backbone import build_resnet_trunk
    from d2ssl.utils.distributed import create_ddp_model

    torch.manual_seed(0)
    trunk = build_resnet_trunk(depth=18, base_channels=8, norm="BN", out_features=("res5",))
    model = TrunkClassifier(trunk, HEADS, num_classes=10, input_size=SIZE, freeze_trunk=True).train()
    largest = {name: 0.0 for name in HEADS}
    if record_inputs:
        def record(name: str):
            def hook(_module, args):
                largest[name] = max(largest[name], args[0].abs().max().item())
            return hook

        for name, head in model.heads.items():
            head.bn.register_forward_pre_hook(record(name))
    ddp = create_ddp_model(model, "cpu", broadcast_buffers=False)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    n = PER_RANK * WORLD // comm.get_world_size()
    for batch in _batches():
        local = batch[comm.get_rank() * n:(comm.get_rank() + 1) * n]
        optimizer.zero_grad()
        sum(ddp(local).values()).backward()
        optimizer.step()
    buffers = {k: v.clone() for k, v in model.heads.state_dict().items() if "running_" in k}
    return {"buffers": buffers, "largest": largest, "bn_type": type(model.heads["res4"].bn).__name__}


def _run_ranks(out: Path) -> None:
    torch.set_num_threads(1)
    torch.save(train_heads(), out / f"rank{comm.get_rank()}.pth")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("vissl_sync_bn")
    proc = subprocess.run([sys.executable, __file__, str(out)], env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return torch.load(out / "rank0.pth"), torch.load(out / "rank1.pth")


def test_vissl_heads_batchnorm_statistics_identical_across_ranks(two_ranks):
    rank0, rank1 = two_ranks
    assert rank0["bn_type"] == "NaiveSyncBatchNorm"  # create_ddp_model's CPU swap of nn.SyncBatchNorm
    assert rank0["buffers"].keys() == rank1["buffers"].keys() and rank0["buffers"]
    for key, value in rank0["buffers"].items():
        assert torch.equal(value, rank1["buffers"][key]), f"{key} differs between ranks"


def test_vissl_heads_batchnorm_statistics_equal_one_process_with_the_double_batch(two_ranks):
    rank0, _ = two_ranks
    single = train_heads(record_inputs=True)
    assert single["bn_type"] == "SyncBatchNorm"  # plain BatchNorm arithmetic on one process
    u = 2.0 ** -24  # float32 unit roundoff
    for name in HEADS:
        cells = 4 if name == "res4" else 1  # 2x2 pooled res4 cells at 64 px, 1 after a global pool
        n = WORLD * PER_RANK * cells  # elements per channel of the global batch
        x_max = single["largest"][name]
        # Each step's batch mean is a float32 sum of n terms, off the exact mean by at most
        # n * u * max|x| (recursive summation bound; the two-rank way sums halves and averages, one
        # more rounding). The running mean is a convex combination of the step means (momentum 0.1),
        # so it inherits that bound, plus a few roundings of the update itself.
        mean_tol = 2 * n * u * x_max + STEPS * 4 * u * x_max
        prefix = f"{name}.bn."
        two, one = rank0["buffers"][prefix + "running_mean"], single["buffers"][prefix + "running_mean"]
        torch.testing.assert_close(two, one, rtol=0, atol=mean_tol)
        # NaiveSyncBatchNorm keeps the biased variance (E[x^2] - E[x]^2) where BatchNorm keeps the
        # unbiased one (x n / (n - 1)); both start at 1 and move by momentum 0.1, so
        # running_var - 0.9^STEPS is a combination of the step variances scaled by n / (n - 1).
        # E[x^2] - E[x]^2 loses up to ~3 n u max|x|^2 to rounding and cancellation.
        decay = 0.9 ** STEPS
        two_var = (rank0["buffers"][prefix + "running_var"] - decay) * n / (n - 1)
        one_var = single["buffers"][prefix + "running_var"] - decay
        torch.testing.assert_close(two_var, one_var, rtol=0, atol=4 * n * u * x_max**2 + STEPS * 4 * u)


if __name__ == "__main__":
    from d2ssl.engine.launch import launch_processes

    launch_processes(_run_ranks, WORLD, dist_url="auto", args=(Path(sys.argv[1]),), device="cpu")
