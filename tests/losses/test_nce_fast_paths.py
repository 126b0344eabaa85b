"""The chunked-gather and whole-bank scoring paths of NCELossWithMemory give the loss, gradients and
bank of the straightforward gather (``memory[rows]`` then ``bmm``, as VISSL and the previous d2ssl did)."""

import math

import pytest
import torch
from tolerances import assert_close_sum_order, assert_equal, assert_within_bound, gamma
from torch.nn import functional as F

import d2ssl.losses.nce as nce_module
from d2ssl.losses.nce import NCELossWithMemory

N, D, B, K = 300, 16, 8, 40


def straightforward_step(loss: NCELossWithMemory, memory, embeddings, indices, negatives, weights,
                         seen: list | None = None):
    """One step of the previous implementation: advanced-indexing gather, autograd through bmm, update.
    ``seen`` receives ``(embedding, v, gathered rows, logits)`` of each embedding, logits' grad retained."""
    memory = memory.clone()
    total = 0.0
    for l_idx, (embedding, neg) in enumerate(zip(embeddings, negatives)):
        v = F.normalize(embedding, dim=1)
        rows = torch.cat([indices.view(-1, 1), neg], dim=1)
        gathered = memory[rows]
        logits = torch.bmm(gathered, v.unsqueeze(2)).squeeze(2) / loss.temperature
        if seen is not None:
            logits.retain_grad()
            seen.append((embedding, v, gathered, logits))
        if loss.loss_type == "nce":
            log_p = logits - math.log(float(loss.norm_constant))
            noise = neg.shape[1] / memory.shape[0]
            log_den = torch.logaddexp(log_p, log_p.new_tensor(math.log(noise + nce_module.NCE_EPS)))
            term = -(log_p[:, 0] - log_den[:, 0] + (math.log(noise) - log_den[:, 1:]).sum(dim=1)).mean()
        else:
            term = F.cross_entropy(logits, torch.zeros_like(indices))
        total = total + weights[l_idx] * term
        with torch.no_grad():
            memory[indices] = F.normalize(memory[indices] * loss.momentum + v * (1 - loss.momentum), dim=1)
    return total, memory


def make_inputs(num_embeddings: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    indices = torch.randperm(N, generator=g)[:B]
    embeddings = [torch.randn(B, D, generator=g, requires_grad=True) for _ in range(num_embeddings)]
    negatives = [torch.randint(0, N, (B, K), generator=g) for _ in range(num_embeddings)]
    return embeddings, indices, negatives


@pytest.mark.parametrize("scoring", ["gather", "bank", "auto"])
@pytest.mark.parametrize(
    "loss_type, weights", [("nce", [1.0]), ("cross_entropy", [0.5, 0.5]), ("nce", [0.3, 0.7])]
)
@pytest.mark.parametrize("small_chunks", [False, True])
def test_fast_scoring_equals_straightforward_gather(monkeypatch, scoring, loss_type, weights, small_chunks):
    if small_chunks:  # several chunks per batch in both paths
        monkeypatch.setattr(nce_module, "GATHER_CHUNK_ROWS", 2 * (K + 1))
        monkeypatch.setattr(nce_module, "BANK_CHUNK_ENTRIES", 3 * N)
    loss = NCELossWithMemory(
        N, loss_type=loss_type, loss_weights=weights, norm_constant=50.0, scoring=scoring,
        negative_sampling_params={"num_negatives": K}, memory_params={"embedding_dim": D},
    )
    embeddings, indices, negatives = make_inputs(len(weights))
    ref_embeddings = [e.detach().clone().requires_grad_() for e in embeddings]
    ref_total, ref_memory = straightforward_step(
        loss, loss.memory, ref_embeddings, indices, negatives, weights
    )
    ref_total.backward()

    memory_before = loss.memory.clone()
    total = loss(embeddings, indices, negatives)
    total.backward()
    # The bank update is the same elementwise ops and normalisation in both paths: bitwise.
    assert_equal(loss.memory, ref_memory, "memory bank")
    # Scores are D-term dot products of unit vectors (sum |m_d v_d| <= 1), through another kernel (bmm,
    # chunked bmm or one matmul against the whole bank): two paths' logits differ by at most
    # 2 gamma_D / T in absolute terms. A per-sample loss is 1-Lipschitz in each of its K + 1 logits
    # (-log softmax, or NCE's K + 1 log-posteriors), so it moves by at most K + 1 times that; then the
    # positive per-sample losses are summed (K + 1 terms each, B samples): gamma_{K+1+B} of |loss|.
    logit_error = 2 * gamma(D) / loss.temperature
    assert_close_sum_order(total.detach(), ref_total.detach(), terms=K + 1 + B, scale=abs(ref_total.item()),
                           upstream=(K + 1) * logit_error, name="loss")
    # d loss / d e_b = J_b^T sum_k w_bk m_k / T (w = d loss / d logits, J = normalize's Jacobian
    # (I - v v^T) / |e|): K + 1 products, then D in J, D in each logit behind w. A logit's absolute
    # rounding (above) changes w by that much relative (softmax-like), counted as 2 D / T more terms.
    terms = (K + 1) + 2 * D + math.ceil(2 * D / loss.temperature)
    for e, scale, l_idx in zip(embeddings, gradient_term_sums(loss, memory_before, ref_embeddings, indices,
                                                                negatives, weights), range(len(weights))):
        assert_close_sum_order(e.grad, ref_embeddings[l_idx].grad, terms=terms, scale=scale,
                               name=f"gradient of embedding {l_idx}")


def gradient_term_sums(loss, memory, embeddings, indices, negatives, weights) -> list[torch.Tensor]:
    """Per element of each embedding's gradient, ``sum |t_i|`` over its products, in float64:
    ``|J|^T (|w| |m|) / T`` with ``|J| <= (I + |v| |v|^T) / |e|``."""
    seen = []
    doubled = [e.detach().double().requires_grad_() for e in embeddings]
    total, _ = straightforward_step(loss, memory.double(), doubled, indices, negatives, weights, seen)
    total.backward()
    scales = []
    for embedding, v, gathered, logits in seen:
        a = torch.einsum("bk,bkd->bd", logits.grad.abs(), gathered.abs()) / loss.temperature
        v = v.detach().abs()
        norm = embedding.detach().norm(dim=1, keepdim=True)
        scales.append((a + v * (v * a).sum(dim=1, keepdim=True)) / norm)
    return scales


def test_auto_scores_small_banks_whole_and_large_banks_by_gathering(monkeypatch):
    used = []

    def recorder(name):
        return lambda v, memory, rows: used.append(name) or torch.zeros(rows.shape)

    monkeypatch.setattr(nce_module, "_whole_bank_scores", recorder("bank"))
    monkeypatch.setattr(nce_module, "_gathered_scores", recorder("gather"))
    memory, v = torch.randn(1000, D), torch.randn(2, D)
    nce_module.bank_scores(v, memory, torch.zeros(2, 100, dtype=torch.long))  # 1000 < 16 * 100 rows
    nce_module.bank_scores(v, memory, torch.zeros(2, 10, dtype=torch.long))  # 1000 > 16 * 10
    assert used == ["bank", "gather"]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_bank_scores_in_float32_close_to_float32_bank(dtype):
    kwargs = dict(negative_sampling_params={"num_negatives": K}, memory_params={"embedding_dim": D})
    full = NCELossWithMemory(N, norm_constant=50.0, **kwargs)
    kwargs["memory_params"] = {"embedding_dim": D, "dtype": dtype}
    half = NCELossWithMemory(N, norm_constant=50.0, **kwargs)
    assert half.memory.dtype == getattr(torch, dtype) and half.memory.element_size() == 2
    half.memory.copy_(full.memory)
    full.memory.copy_(half.memory.float())  # same rounded start: only the scoring precision differs
    embeddings, indices, negatives = make_inputs(1)
    e_half = [embeddings[0].detach().clone().requires_grad_()]
    loss_full, loss_half = full(embeddings, indices, negatives), half(e_half, indices, negatives)
    assert loss_half.dtype == torch.float32
    loss_full.backward()
    loss_half.backward()
    # The same float32 values scored by two kernels (gathered bmm, whole-bank matmul): each score
    # v.m / T within 2 gamma_D / T of the other (unit rows); each NCE term is 1-Lipschitz in its
    # score, K + 1 terms a row; then each side rounds the rest (log-space terms, all >= 0, so
    # sum |t| = the loss) within gamma_{K+12} of it.
    scores_apart = 2 * gamma(D + 2) / full.temperature
    loss_tol = (K + 1) * scores_apart + 2 * gamma(K + 12) * float(loss_full.detach())
    assert_within_bound(loss_half, loss_full.detach(), loss_tol, name="loss", what="the two kernels' bound")
    torch.testing.assert_close(e_half[0].grad, embeddings[0].grad, rtol=1e-4, atol=1e-6)
    # The updated rows: the same float32 update (each side within gamma_{D+7} of the exact unit row,
    # see test_nce.reference_losses), then one rounding to the half bank: u_half |x| <= u_half.
    u_half = {"bfloat16": 2.0**-8, "float16": 2.0**-11}[dtype]
    tol = u_half + 2 * gamma(D + 7)
    assert_within_bound(half.memory.float(), full.memory, tol, name="bank", what="one half rounding")


def test_unknown_scoring_and_bank_dtype_are_rejected():
    with pytest.raises(ValueError, match="scoring"):
        NCELossWithMemory(N, scoring="dense", negative_sampling_params={"num_negatives": K})
    with pytest.raises(ValueError, match="memory_params.dtype"):
        NCELossWithMemory(N, memory_params={"dtype": "int8"}, negative_sampling_params={"num_negatives": K})
