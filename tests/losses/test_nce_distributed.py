"""Two CPU processes (gloo) share one NCE memory bank: it must stay identical on both ranks."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tolerances import assert_close_sum_order, assert_equal

from d2ssl.losses.nce import NCELossWithMemory

WORLD_SIZE, N, D, B, K, STEPS = 2, 40, 8, 5, 12, 4


def make_loss(init_seed: int = 0) -> NCELossWithMemory:
    # PIRL's setting: two embeddings, NCE with Z estimated on the first batch, the second one updates.
    return NCELossWithMemory(
        num_train_samples=N,
        loss_type="nce",
        loss_weights=[0.5, 0.5],
        update_mem_with_emb_index=1,
        negative_sampling_params={"num_negatives": K},
        memory_params={"embedding_dim": D, "momentum": 0.3, "update_mem_on_forward": False,
                       "init_seed": init_seed},
    )


def rank_batch(step: int, rank: int):
    """The batch of ``rank`` at ``step``: ranks hold different images, except one image shared by both
    ranks at step 2 (an epoch boundary in a small data set)."""
    g = torch.Generator().manual_seed(1000 * step + rank)
    order = torch.randperm(N, generator=torch.Generator().manual_seed(step))
    indices = order[rank * B : (rank + 1) * B].clone()
    if step == 2 and rank == 1:
        indices[-1] = order[0]
    embeddings = [torch.randn(B, D, generator=g) for _ in range(2)]
    negatives = [torch.randint(0, N, (B, K), generator=g) for _ in range(2)]
    return embeddings, indices, negatives


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)  # tiny tensors; and no OpenMP pool in a forked child
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        torch.manual_seed(rank)  # ranks have different random states, as in training
        loss = make_loss()
        for step in range(STEPS):
            loss(*rank_batch(step, rank))
        result = {"memory": loss.memory.clone(), "z": loss.norm_constant.clone()}
        try:
            make_loss(init_seed=rank)(*rank_batch(0, rank))
            result["mismatch_error"] = ""
        except RuntimeError as e:
            result["mismatch_error"] = str(e)
        torch.save(result, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_memory_bank_identical_across_ranks(tmp_path):
    # fork: the children start at once instead of importing torch and detectron2 again (seconds each).
    args = (str(tmp_path / "init"), str(tmp_path))
    mp.start_processes(_worker, args=args, nprocs=WORLD_SIZE, join=True, start_method="fork")
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE)]

    assert torch.equal(results[0]["memory"], results[1]["memory"])
    assert torch.equal(results[0]["z"], results[1]["z"])

    # One process seeing the global batch (rank 0's samples, then rank 1's) updates the bank the same way,
    # and estimates the same Z (the mean over both ranks' first-batch scores).
    single = make_loss()
    for step in range(STEPS):
        batches = [rank_batch(step, r) for r in range(WORLD_SIZE)]
        embeddings = [torch.cat([b[0][i] for b in batches]) for i in range(2)]
        indices = torch.cat([b[1] for b in batches])
        negatives = [torch.cat([b[2][i] for b in batches]) for i in range(2)]
        single(embeddings, indices, negatives)
    assert not torch.equal(single.memory, make_loss().memory)  # the steps did update the bank
    # The bank update is elementwise on the gathered rows: the same operations, bit for bit.
    assert_equal(results[0]["memory"], single.memory, "memory bank")
    # Z: a float64 mean of exp(score) over the batch; the float32 scores (unit vectors of D dims) may come
    # from a kernel for another batch size, off by 2 gamma_D / T each, so Z by that factor of Z.
    assert_close_sum_order(results[0]["z"], single.norm_constant, terms=D,
                           scale=single.norm_constant / single.temperature, name="Z")

    # Banks that differ between ranks (here: different init seeds) are refused on the first call.
    for r in range(WORLD_SIZE):
        assert "memory bank differs between ranks" in results[r]["mismatch_error"]
