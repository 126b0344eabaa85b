import math

import numpy as np
import pytest
import torch
from tolerances import U32, assert_equal, assert_within_bound, gamma

from d2ssl.losses.nce import NCELossWithMemory

U64 = 2.0**-53  # float64 unit roundoff

N, D, B, K = 50, 16, 6, 20
# |norm(normalize(x)) - 1| in float32: normalize leaves each value within gamma_{D+4} of x / |x| (D squares
# summed, sqrt, divide), and the norm itself sums D squares then takes a root.
UNIT_NORM_BOUND = gamma(D + 4) + gamma(D // 2 + 1)


def make_loss(**overrides) -> NCELossWithMemory:
    kwargs = dict(
        num_train_samples=N,
        negative_sampling_params={"num_negatives": K},
        memory_params={"embedding_dim": D},
    )
    kwargs.update(overrides)
    return NCELossWithMemory(**kwargs)


def reference_losses(
    memory, steps, *, loss_type, temperature, weights, momentum, update_on_forward, update_index, u=U32
):
    """NCE / InfoNCE with a memory bank written out sample by sample in float64, after VISSL's
    NCELossWithMemory + NCEAverage + NCECriterion. ``steps``: list of (embeddings, indices, negatives).

    Returns the losses, the bank and Z, and, for a computation rounding at unit roundoff ``u`` (in any
    summation order), first-order bounds on how far it may be from them: per step's loss, per bank row
    (2-norm) and on log Z. Each rounding of a value ``x`` costs ``u |x|``, a sum of n terms ``gamma_n
    sum |t|`` (tests/tolerances.py), exp and log 1 ulp (2u); an error already in an input passes on at
    the operation's Lipschitz constant (1 for log-sum-exp and logaddexp, 1 / |w| for w / |w|):
      - v = normalize(e): D squares, sqrt, divide: ``gamma_{D+4}`` relative per component, so in 2-norm;
      - a score v.m / T (D products, T rounded, division): ``(gamma_D sum|v_i m_i| + err_v |m| +
        err_m |v|) / T + 2u |s|``, ``err_m`` the bank row's carried error;
      - NCE: log p = s - fl32(log Z), logaddexp with fl32(log(K Pn + eps)), one subtraction, then a sum
        of K + 1 terms; InfoNCE: log_softmax (shifts by the max, K + 1 exps summed, log);
      - the mean over B, the loss weight, the sum over embeddings;
      - the update normalize(mu m + (1 - mu) v): ``(mu err_m + (1 - mu) err_v + gamma_3 |mu |m| +
        (1 - mu) |v||) / |w| + gamma_{D+4}`` for the new row (scalars rounded, two products, a sum,
        then the normalisation), with |w| = |mu m + (1 - mu) v| from these float64 values.
    The float32 bounds come out near 1.5e-3 on losses of 5 to 25 and 4e-6 on bank values; the float64
    ones near 1e-11 and 1e-14, where a float32 step anywhere in the float64 path shows.
    """
    memory = memory.clone().double()
    n_rows, dim = memory.shape
    eps = float(np.finfo(np.float32).eps)
    z, err_log_z = -1.0, 0.0
    err_rows = torch.zeros(n_rows, dtype=torch.float64)  # 2-norm error bound of each bank row
    totals, total_bounds = [], []
    err_v = gamma(dim + 4, u)
    for embeddings, indices, negatives in steps:
        terms, term_bounds = [], []
        for l_idx, (embedding, neg) in enumerate(zip(embeddings, negatives)):
            v = embedding.double()
            v = v / v.norm(dim=1, keepdim=True)
            num_neg = neg.shape[1]
            rows = [[int(indices[b])] + neg[b].tolist() for b in range(len(indices))]
            scores = [[float(v[b] @ memory[r]) / temperature for r in row] for b, row in enumerate(rows)]
            score_bounds = [
                [(gamma(dim, u) * float((v[b] * memory[r]).abs().sum()) + err_v * float(memory[r].norm())
                  + float(err_rows[r]) * (1 + err_v)) / temperature + 2 * u * abs(s)
                 for r, s in zip(row, scores[b])]
                for b, row in enumerate(rows)
            ]
            if loss_type == "nce" and z < 0:
                z = n_rows * float(np.mean(np.exp(scores)))
                # Z from the float32 scores in float64: log-sum-exp is 1-Lipschitz; exp, log, a mean.
                err_log_z = max(map(max, score_bounds)) + gamma(len(scores) * len(scores[0]) + 8, U64) * (
                    abs(math.log(z)) + 1)
            per_sample, per_sample_bounds = [], []
            for row, bounds in zip(scores, score_bounds):
                if loss_type == "nce":
                    p = [math.exp(s) / z for s in row]
                    noise = num_neg / n_rows
                    loss = -math.log(p[0] / (p[0] + noise + eps))
                    loss -= sum(math.log(noise / (pk + noise + eps)) for pk in p[1:])
                    log_z, c = math.log(z), math.log(noise + eps)
                    bound, magnitude = 0.0, 0.0
                    for k, (s, e) in enumerate(zip(row, bounds)):
                        log_p = s - log_z
                        e_log_p = e + err_log_z + u * abs(log_z) + u * abs(log_p)
                        log_den = max(log_p, c) + math.log1p(math.exp(-abs(log_p - c)))
                        e_den = e_log_p + u * abs(c) + 4 * u * (abs(log_den) + 1)
                        term = (log_p if k == 0 else math.log(noise)) - log_den
                        bound += e_den + (e_log_p if k == 0 else u * abs(math.log(noise))) + u * abs(term)
                        magnitude += abs(term)
                    bound += gamma(num_neg + 1, u) * magnitude
                else:
                    loss = -(row[0] - math.log(sum(math.exp(s) for s in row)))
                    # log_softmax: shifts (u 2/T each), K + 1 exps <= 1 summed (>= 1), its log, the
                    # subtraction; 1-Lipschitz in the scores but column 0 enters twice.
                    bound = bounds[0] + max(bounds) + gamma(num_neg + 6, u) * (
                        4 / temperature + math.log(num_neg + 1) + 1 + abs(loss))
                per_sample.append(loss)
                per_sample_bounds.append(bound)
            mean = float(np.mean(per_sample))
            mean_bound = float(np.mean(per_sample_bounds)) + gamma(len(per_sample) + 1, u) * float(
                np.mean(np.abs(per_sample)))
            terms.append(weights[l_idx] * mean)
            term_bounds.append(weights[l_idx] * mean_bound + 2 * u * abs(weights[l_idx] * mean))
            if update_on_forward or l_idx == update_index:
                for b, y in enumerate(indices.tolist()):
                    m = momentum * memory[y] + (1 - momentum) * v[b]
                    magnitudes = momentum * memory[y].abs() + (1 - momentum) * v[b].abs()
                    err_m = (momentum * err_rows[y] + (1 - momentum) * err_v
                             + gamma(3, u) * magnitudes.norm()) / m.norm() + gamma(dim + 4, u)
                    memory[y], err_rows[y] = m / m.norm(), err_m
        totals.append(sum(terms))
        total_bounds.append(sum(term_bounds) + gamma(len(terms), u) * sum(abs(t) for t in terms))
    return totals, memory, z, total_bounds, err_rows, err_log_z


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
    reference = dict(loss_type=loss_type, temperature=temperature, weights=weights, momentum=momentum,
                     update_on_forward=update_on_forward, update_index=update_index)
    expected, expected_memory, expected_z, bounds32, row_bounds32, _ = reference_losses(
        loss_module.memory, steps, **reference, u=U32)
    *_, bounds64, row_bounds64, log_z_bound64 = reference_losses(
        loss_module.memory, steps, **reference, u=U64)
    # Twice the first-order bounds (reference_losses): room for the second-order terms and, for float64,
    # the reference's own rounding, which the same bound covers. float32: ~1e-3 on losses of 5 to 25.
    for step, ((embeddings, indices, negatives), want) in enumerate(zip(steps, expected)):
        got64 = loss64([e.double() for e in embeddings], indices, negatives)
        got32 = loss_module(embeddings, indices, negatives)
        what = "twice the derived rounding bound"
        assert_within_bound(got64, torch.tensor(want, dtype=torch.float64), 2 * bounds64[step],
                            name=f"float64 loss, step {step}", what=what)
        assert_within_bound(got32, torch.tensor(want, dtype=torch.float64), 2 * bounds32[step],
                            name=f"float32 loss, step {step}", what=what)
    what = "twice the bank row's derived rounding bound"
    assert_within_bound(loss64.memory, expected_memory, 2 * row_bounds64[:, None], name="float64 bank",
                        what=what)
    assert_within_bound(loss_module.memory, expected_memory, 2 * row_bounds32[:, None], name="float32 bank",
                        what=what)
    if loss_type == "nce":  # |Z - z| <= z (exp(err log Z) - 1), ~ z err log Z
        assert_within_bound(loss64.norm_constant, torch.tensor(expected_z, dtype=torch.float64),
                            2 * expected_z * log_z_bound64, name="Z", what="twice its derived bound")
    else:
        assert loss64.norm_constant.item() == -1  # InfoNCE has no Z


def test_only_rows_of_the_batch_change_and_stay_unit_norm():
    loss = make_loss()
    before = loss.memory.clone()
    indices = torch.tensor([3, 17, 42])
    loss(torch.randn(3, D), indices)
    changed = (loss.memory != before).any(dim=1).nonzero().flatten()
    assert changed.tolist() == [3, 17, 42]
    assert_within_bound(loss.memory.norm(dim=1), torch.ones(N), UNIT_NORM_BOUND, name="bank row norms",
                        what="the rounding of normalize then norm")


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
    assert_within_bound(a.memory.norm(dim=1), torch.ones(N), UNIT_NORM_BOUND, name="initial bank row norms",
                        what="the rounding of normalize then norm")
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
    # normalize(0 * m + 1 * v) of a unit v: v up to normalize's rounding, gamma_{D+4} of each value.
    for row, want in ((4, v[2]), (9, v[1])):
        assert_within_bound(loss.memory[row], want, gamma(D + 4) * want.abs(), name=f"bank row {row}",
                            what="normalize's rounding")
    assert not torch.equal(loss.memory[4], v[0])  # and not the first occurrence (v[0] is far from v[2])


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
    # The same float32 operations on the same (bfloat16-representable) values: bitwise equal.
    assert value.dtype == torch.float32
    assert_equal(value, expected, "loss under bfloat16 autocast")
