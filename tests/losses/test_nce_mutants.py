"""NCE loss details that benchmarks/mutation.py found untested (mutants of d2ssl/losses/nce.py that
survived the other tests). Expected values come from hand arithmetic or a float64 rewrite of the
documented formula, never from the functions under test."""

from __future__ import annotations

import math

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
