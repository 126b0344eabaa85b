"""NCE loss details that benchmarks/mutation.py found untested (mutants of d2ssl/losses/nce.py that
survived the other tests). Expected values come from hand arithmetic or a float64 rewrite of the
documented formula, never from the functions under test."""

from __future__ import annotations

import math

import pytest
import torch
from detectron2.utils.events import EventStorage

from d2ssl.losses import nce as nce_module
from d2ssl.losses.nce import NCELossWithMemory, _chunks

N, D = 40, 12


def _loss(**overrides) -> NCELossWithMemory:
    kwargs = dict(num_train_samples=N, negative_sampling_params={"num_negatives": 5},
                  memory_params={"embedding_dim": D})
    kwargs.update(overrides)
    return NCELossWithMemory(**kwargs)


def test_chunks_cover_the_batch_in_steps_of_budget_over_row_cost():
    assert _chunks(10, 3, 7) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]  # 7 // 3 = 2 rows a step
    assert _chunks(5, 0, 3) == [(0, 3), (3, 5)]  # a row costing nothing still counts as 1
    assert _chunks(3, 10, 5) == [(0, 1), (1, 2), (2, 3)]  # a row over budget: one at a time
    assert _chunks(4, 1, 100) == [(0, 4)]


def test_raw_initial_bank_is_uniform_over_plus_minus_one_over_sqrt_d_over_3():
    bank = _loss(num_train_samples=2000, memory_params={"embedding_dim": D, "norm_init": False}).memory
    stdv = 1 / math.sqrt(D / 3)  # lemniscate's init: 0.5 for D = 12
    assert bank.max() <= stdv and bank.min() >= -stdv
    # 24,000 uniform draws (fixed seed): the extremes come within 1 % of the bounds; mean 0 and variance
    # stdv^2 / 3 hold to about 5 standard errors (0.0019 and 0.6 % of the variance)
    assert bank.max() > 0.99 * stdv and bank.min() < -0.99 * stdv
    assert abs(float(bank.mean())) < 0.01 and abs(float(bank.var()) / (stdv**2 / 3) - 1) < 0.03


def test_an_explicit_scoring_is_the_path_used(monkeypatch):
    used = []

    def recorder(name):
        return lambda v, memory, rows: used.append(name) or torch.zeros(rows.shape)

    monkeypatch.setattr(nce_module, "_whole_bank_scores", recorder("bank"))
    monkeypatch.setattr(nce_module, "_gathered_scores", recorder("gather"))
    memory, v, rows = torch.randn(10, D), torch.randn(2, D), torch.zeros(2, 3, dtype=torch.long)
    nce_module.bank_scores(v, memory, rows, scoring="gather")
    nce_module.bank_scores(v, memory, rows, scoring="bank")
    assert used == ["gather", "bank"]


def test_weighted_bank_rows_of_a_half_precision_bank_in_small_chunks(monkeypatch):
    monkeypatch.setattr(nce_module, "GATHER_CHUNK_ROWS", 7)  # 3 rows a sample: chunks of 2 samples
    g = torch.Generator().manual_seed(0)
    memory = torch.randn(20, D, generator=g).half()
    rows = torch.randint(0, 20, (5, 3), generator=g)
    weights = torch.randn(5, 3, generator=g)
    got = nce_module.bank_rows_weighted_sum(weights, memory, rows)
    m = memory.double()
    want = torch.stack([sum(weights[b, k].double() * m[rows[b, k]] for k in range(3)) for b in range(5)])
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)  # float32 sums of 3 products


def test_logged_top1_is_the_share_of_samples_whose_positive_scores_highest():
    loss = _loss(loss_type="cross_entropy")
    bank = loss.memory.double()
    g = torch.Generator().manual_seed(3)
    indices = torch.arange(8)
    negatives = torch.randint(8, N, (8, 5), generator=g)
    embedding = bank[:8].float().clone()
    embedding[:3] = -embedding[:3]  # 3 of 8 samples point away from their own bank row
    v = torch.nn.functional.normalize(embedding.double(), dim=1)
    scores = torch.cat([(v * bank[indices]).sum(1, keepdim=True),
                        torch.einsum("bd,bkd->bk", v, bank[negatives])], dim=1)
    expected = float((scores.argmax(dim=1) == 0).double().mean())
    assert expected == 5 / 8  # the other 5 score 1 against their own row, less against any other
    with EventStorage() as storage:
        loss(embedding, indices, [negatives])
        assert storage.latest()["nce_top1"][0] == pytest.approx(expected, abs=1e-12)


def test_a_repeated_index_keeps_its_last_row_and_a_single_first_index_its_own():
    loss = _loss(memory_params={"embedding_dim": D, "momentum": 0.0})
    v = torch.nn.functional.normalize(torch.randn(3, D, generator=torch.Generator().manual_seed(1)), dim=1)
    before = loss.memory.clone()
    loss.update_memory(v, torch.tensor([5, 9, 9]))  # row 5 only at position 0
    torch.testing.assert_close(loss.memory[5], v[0])
    torch.testing.assert_close(loss.memory[9], v[2])
    untouched = torch.ones(N, dtype=torch.bool)
    untouched[[5, 9]] = False
    assert torch.equal(loss.memory[untouched], before[untouched])


def test_ranks_are_compared_once_per_loss_not_every_step(monkeypatch):
    loss = _loss(loss_type="cross_entropy")
    calls = []
    real = loss._check_ranks_agree
    monkeypatch.setattr(loss, "_check_ranks_agree", lambda: calls.append(1) or real())
    for _ in range(3):
        loss(torch.randn(4, D), torch.arange(4))
    assert calls == [1]


@pytest.mark.parametrize("scoring", ["bank", "gather"])
def test_every_sample_is_scored_when_the_batch_outnumbers_the_rows_per_sample(scoring, monkeypatch):
    monkeypatch.setattr(nce_module, "BANK_CHUNK_ENTRIES", 3 * N)  # 3 samples a block: several blocks
    g = torch.Generator().manual_seed(2)
    memory = torch.nn.functional.normalize(torch.randn(N, D, generator=g), dim=1)
    v = torch.randn(8, D, generator=g)
    rows = torch.randint(0, N, (8, 3), generator=g)  # B = 8 > 3 rows each
    got = nce_module.bank_scores(v, memory, rows, scoring=scoring)
    want = torch.einsum("bd,bkd->bk", v.double(), memory.double()[rows])
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)  # float32 dot products of 12 terms


def test_logits_are_bank_scores_over_the_temperature():
    loss = _loss(temperature=0.2)
    g = torch.Generator().manual_seed(4)
    v = torch.nn.functional.normalize(torch.randn(3, D, generator=g), dim=1)
    indices, negatives = torch.tensor([0, 1, 2]), torch.randint(3, N, (3, 5), generator=g)
    rows = torch.cat([indices[:, None], negatives], dim=1)
    want = torch.einsum("bd,bkd->bk", v.double(), loss.memory.double()[rows]) / 0.2
    torch.testing.assert_close(loss.logits(v, indices, negatives).double(), want, rtol=1e-5, atol=1e-5)


def test_a_given_norm_constant_below_one_is_kept_not_estimated():
    loss = _loss(loss_type="nce", norm_constant=0.5)
    loss(torch.randn(4, D), torch.arange(4))
    assert loss.norm_constant.item() == 0.5
