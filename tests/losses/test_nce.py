import math

import numpy as np
import pytest
import torch

from d2ssl.losses.nce import NCELossWithMemory

N, D, B, K = 50, 16, 6, 20


def make_loss(**overrides) -> NCELossWithMemory:
    kwargs = dict(
        num_train_samples=N,
        negative_sampling_params={"num_negatives": K},
        memory_params={"embedding_dim": D},
    )
    kwargs.update(overrides)
    return NCELossWithMemory(**kwargs)


def reference_losses(
    memory, steps, *, loss_type, temperature, weights, momentum, update_on_forward, update_index
):
    """NCE / InfoNCE with a memory bank written out sample by sample in float64, after VISSL's
    NCELossWithMemory + NCEAverage + NCECriterion. ``steps``: list of (embeddings, indices, negatives)."""
    memory = memory.clone().double()
    n_rows = memory.shape[0]
    eps = float(np.finfo(np.float32).eps)
    z = -1.0
    totals = []
    for embeddings, indices, negatives in steps:
        total = 0.0
        for l_idx, (embedding, neg) in enumerate(zip(embeddings, negatives)):
            v = embedding.double()
            v = v / v.norm(dim=1, keepdim=True)
            num_neg = neg.shape[1]
            scores = [
                [float(v[b] @ memory[indices[b]]) / temperature]
                + [float(v[b] @ memory[n]) / temperature for n in neg[b]]
                for b in range(len(indices))
            ]
            if loss_type == "nce" and z < 0:
                z = n_rows * float(np.mean(np.exp(scores)))
            per_sample = []
            for row in scores:
                if loss_type == "nce":
                    p = [math.exp(s) / z for s in row]
                    noise = num_neg / n_rows
                    loss = -math.log(p[0] / (p[0] + noise + eps))
                    loss -= sum(math.log(noise / (pk + noise + eps)) for pk in p[1:])
                else:
                    loss = -(row[0] - math.log(sum(math.exp(s) for s in row)))
                per_sample.append(loss)
            total += weights[l_idx] * float(np.mean(per_sample))
            if update_on_forward or l_idx == update_index:
                for b, y in enumerate(indices.tolist()):
                    m = momentum * memory[y] + (1 - momentum) * v[b]
                    memory[y] = m / m.norm()
        totals.append(total)
    return totals, memory, z


def random_steps(num_steps: int, num_embeddings: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    steps = []
    for _ in range(num_steps):
        indices = torch.randperm(N, generator=g)[:B]
        embeddings = [torch.randn(B, D, generator=g) for _ in range(num_embeddings)]
        negatives = [torch.randint(0, N, (B, K), generator=g) for _ in range(num_embeddings)]
        steps.append((embeddings, indices, negatives))
    return steps


@pytest.mark.parametrize(
    "loss_type, weights, update_on_forward, update_index",
    [
        ("nce", [1.0], True, -100),  # NPID
        ("nce", [0.5, 0.5], False, 1),  # PIRL: only the second (image) embedding updates the bank
        ("cross_entropy", [0.3, 0.7], False, 0),  # PIRL MLP recipe (InfoNCE), other weights and index
        ("cross_entropy", [1.0, 2.0], True, -100),  # every embedding updates, one after the other
    ],
)
def test_loss_matches_float64_reference(loss_type, weights, update_on_forward, update_index):
    temperature, momentum = 0.07, 0.3  # not 0.5: swapping momentum and 1 - momentum must show
    settings = dict(
        loss_type=loss_type,
        temperature=temperature,
        loss_weights=weights,
        update_mem_with_emb_index=update_index,
        memory_params={"embedding_dim": D, "momentum": momentum, "update_mem_on_forward": update_on_forward},
    )
    loss_module, loss64 = make_loss(**settings), make_loss(**settings).double()
    steps = random_steps(3, len(weights))
    expected, expected_memory, expected_z = reference_losses(
        loss_module.memory, steps, loss_type=loss_type, temperature=temperature, weights=weights,
        momentum=momentum, update_on_forward=update_on_forward, update_index=update_index,
    )
    for (embeddings, indices, negatives), want in zip(steps, expected):
        got64 = loss64([e.double() for e in embeddings], indices, negatives)
        got32 = loss_module(embeddings, indices, negatives)
        assert got64.item() == pytest.approx(want, abs=1e-6)
        assert got32.item() == pytest.approx(want, rel=1e-5)
    assert torch.allclose(loss64.memory, expected_memory, atol=1e-6, rtol=0)
    assert torch.allclose(loss_module.memory.double(), expected_memory, atol=1e-5, rtol=0)
    if loss_type == "nce":
        assert loss64.norm_constant.item() == pytest.approx(expected_z, rel=1e-6)
    else:
        assert loss64.norm_constant.item() == -1  # InfoNCE has no Z


def test_only_rows_of_the_batch_change_and_stay_unit_norm():
    loss = make_loss()
    before = loss.memory.clone()
    indices = torch.tensor([3, 17, 42])
    loss(torch.randn(3, D), indices)
    changed = (loss.memory != before).any(dim=1).nonzero().flatten()
    assert changed.tolist() == [3, 17, 42]
    assert torch.allclose(loss.memory.norm(dim=1), torch.ones(N), atol=1e-6)


def test_gradient_reaches_the_embedding_not_the_bank():
    loss = make_loss(loss_type="nce")
    embedding = torch.randn(B, D, requires_grad=True)
    loss(embedding, torch.arange(B)).backward()
    assert embedding.grad is not None and embedding.grad.abs().sum() > 0
    assert not loss.memory.requires_grad and loss.memory.grad is None


def test_negatives_exclude_the_positive_and_cover_every_other_row():
    loss = make_loss(num_train_samples=6, negative_sampling_params={"num_negatives": 5})
    indices = torch.tensor([0, 2, 5] * 200)
    negatives = loss.sample_negatives(indices, torch.Generator().manual_seed(0))
    assert negatives.shape == (600, 5)
    assert not (negatives == indices[:, None]).any()
    for y in (0, 2, 5):
        drawn = torch.bincount(negatives[indices == y].flatten(), minlength=6)
        assert drawn[y] == 0 and (drawn[torch.arange(6) != y] > 150).all()  # ~200 each: uniform


def test_vissl_sampling_can_draw_the_positive():
    vissl_draw = {"num_negatives": 6, "exclude_positive": False}
    loss = make_loss(num_train_samples=6, negative_sampling_params=vissl_draw)
    indices = torch.zeros(500, dtype=torch.long)
    negatives = loss.sample_negatives(indices, torch.Generator().manual_seed(0))
    assert (negatives == 0).any() and negatives.max() == 5


def test_bank_starts_unit_norm_and_identical_for_one_seed():
    a, b = make_loss(), make_loss()
    torch.manual_seed(123)  # the global RNG state must not matter
    c = make_loss()
    assert torch.equal(a.memory, b.memory) and torch.equal(a.memory, c.memory)
    assert torch.allclose(a.memory.norm(dim=1), torch.ones(N), atol=1e-6)
    other = make_loss(memory_params={"embedding_dim": D, "init_seed": 1})
    assert not torch.equal(a.memory, other.memory)
    raw = make_loss(memory_params={"embedding_dim": D, "norm_init": False})
    assert raw.memory.abs().max() <= 1 / math.sqrt(D / 3)


def test_z_is_estimated_once_then_kept():
    loss = make_loss(loss_type="nce")
    loss(torch.randn(B, D), torch.arange(B))
    z = loss.norm_constant.item()
    assert z > 0
    loss(torch.randn(B, D) * 5, torch.arange(B, 2 * B))
    assert loss.norm_constant.item() == z
    fixed = make_loss(loss_type="nce", norm_constant=123.0)
    fixed(torch.randn(B, D), torch.arange(B))
    assert fixed.norm_constant.item() == 123.0


def test_repeated_index_in_a_batch_keeps_the_last_embedding():
    loss = make_loss(memory_params={"embedding_dim": D, "momentum": 0.0})
    v = torch.nn.functional.normalize(torch.randn(3, D), dim=1)
    loss.update_memory(v, torch.tensor([4, 9, 4]))
    assert torch.allclose(loss.memory[4], v[2]) and torch.allclose(loss.memory[9], v[1])


def test_low_temperature_nce_stays_finite():
    # exp(1 / 0.005) overflows float32; the loss works in log space and keeps Z in float64.
    loss = make_loss(loss_type="nce", temperature=0.005)
    loss(torch.randn(B, D), torch.arange(B))  # estimates Z
    value = loss(loss.memory[:B].clone(), torch.arange(B))
    assert torch.isfinite(value) and math.isfinite(loss.norm_constant.item())


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(num_train_samples=-1), "num_train_samples=-1"),
        (dict(memory_params={"embedding_dim": D, "memory_size": N - 1}), "smaller than the number of"),
        (dict(negative_sampling_params={"num_negatives": N}), r"num_negatives=50 must be .*\(49"),
        (dict(negative_sampling_params={"num_negatives": N + 1, "exclude_positive": False}), r"\(50"),
        (dict(negative_sampling_params={"num_negatives": K, "type": "hard"}), "must be 'random'"),
        (dict(negative_sampling_params={"num_negative": K}), r"unknown negative_sampling_params"),
        (dict(loss_type="infonce"), "loss_type must be one of"),
        (dict(memory_params={"embedding_dim": D, "update_mem_on_forward": False}), "would never be updated"),
        (dict(memory_params={"embedding_dim": D, "momentum": 1.5}), "momentum must be in"),
        (dict(temperature=0.0), "temperature must be positive"),
        (dict(norm_constant=0.0), "norm_constant must be -1"),
    ],
)
def test_bad_configs_fail_at_construction(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_loss(**overrides)


def test_bad_inputs_fail_with_clear_messages():
    loss = make_loss()
    with pytest.raises(ValueError, match="embedding_dim=16"):
        loss(torch.randn(B, D + 1), torch.arange(B))
    with pytest.raises(ValueError, match=r"image indices must be in \[0, 50\)"):
        loss(torch.randn(2, D), torch.tensor([0, N]))
    with pytest.raises(ValueError, match="one weight per embedding"):
        loss([torch.randn(B, D)] * 2, torch.arange(B))


def test_bfloat16_autocast_embeddings_are_scored_in_float32():
    loss = make_loss(loss_type="nce")
    reference = make_loss(loss_type="nce")
    embedding = torch.randn(B, D)
    negatives = [torch.randint(0, N, (B, K), generator=torch.Generator().manual_seed(1))]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(embedding.bfloat16(), torch.arange(B), negatives)
    expected = reference(embedding.bfloat16().float(), torch.arange(B), negatives)
    assert value.dtype == torch.float32 and value.item() == pytest.approx(expected.item(), rel=1e-6)
