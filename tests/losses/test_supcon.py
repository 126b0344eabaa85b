import math

import pytest
import torch
from tolerances import U32, assert_close_sum_order
from torch.nn import functional as F

from d2ssl.losses.supcon import SupConLoss, supcon_loss


def reference_supcon(features: torch.Tensor, labels: list[int], temperature: float, base_temperature: float):
    """The SupCon definition written out anchor by anchor, in float64."""
    z = features.double().tolist()
    m = len(z)

    def sim(i, j):
        return sum(a * b for a, b in zip(z[i], z[j])) / temperature

    per_anchor = []
    for i in range(m):
        denominator = sum(math.exp(sim(i, k)) for k in range(m) if k != i)
        positives = [j for j in range(m) if j != i and labels[j] == labels[i]]
        if positives:
            log_probs = [math.log(math.exp(sim(i, j)) / denominator) for j in positives]
            per_anchor.append(-sum(log_probs) / len(positives))
    return temperature / base_temperature * sum(per_anchor) / len(per_anchor)


def jigclu_like_batch(num_images: int, dim: int, seed: int):
    # Four patches per image, in a shuffled order, as JigClu's clustering branch sees them.
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_images).repeat(4)[torch.randperm(4 * num_images, generator=g)]
    features = F.normalize(torch.randn(4 * num_images, dim, generator=g, dtype=torch.float64), dim=1)
    return features, labels


U64 = 2.0**-53  # float64 unit roundoff


def supcon_rounding_terms(features: torch.Tensor, labels: torch.Tensor, temperature: float,
                          base_temperature: float) -> tuple[int, float]:
    """``(terms, scale)`` with ``|computed - exact| <= gamma_terms * scale`` for supcon_loss in any
    evaluation order (first order; tests/tolerances.py), ``features`` ``(M, D)`` unit rows.

    Each ``log p_ij = s_ij - LSE_k s_ik`` comes from: the logit ``s_ij = z_i.z_j / T``, D products of
    rounded inputs (2 roundings each) summed, then divided: ``|err| <= gamma_{D+3} / T`` (``sum_k
    |z_ik z_jk| <= |z_i| |z_j| = 1``); the row-max shift, ``u 2/T``; the log-sum-exp of M - 1 shifted
    logits, 1-Lipschitz in them, plus exp (Sleef, 1 ulp = 2u), the M - 1 term sum (``gamma_{M-1}``
    on a sum >= 1, so as much on its log), the log (2u of it) and torch's own shift and add-back
    (``2u |LSE|``); the subtraction (``u |log p|``). With ``A = 2/T + log M`` bounding ``|LSE|`` and
    ``|log p|``: ``|err log p| <= gamma_{D+M+13} (2A + 1)``. The means over P positives and over the
    anchors add ``gamma_{P+M+3} A``, the scale ``T / base_T`` one rounding:
    ``terms = D + 2M + P + 16``, ``scale = (T / base_T) (3A + 1)``."""
    m, d = features.shape
    p = max(int((labels == label).sum()) - 1 for label in labels)
    a = 2 / temperature + math.log(m)
    return d + 2 * m + p + 16, temperature / base_temperature * (3 * a + 1)


@pytest.mark.parametrize("temperature,base_temperature", [(0.3, 0.07), (0.07, 0.07), (0.5, 1.0)])
def test_matches_float64_reference(temperature, base_temperature):
    features, labels = jigclu_like_batch(num_images=12, dim=16, seed=1)
    expected = torch.tensor(reference_supcon(features, labels.tolist(), temperature, base_temperature),
                            dtype=torch.float64)
    got64 = supcon_loss(features, labels, temperature, base_temperature)
    got32 = SupConLoss(temperature, base_temperature)(features.float(), labels)
    terms, scale = supcon_rounding_terms(features, labels, temperature, base_temperature)
    # Each side within gamma_terms * scale of the exact loss: the helper's 2 gamma covers both (the
    # float64 reference rounds like the float64 loss). float32: ~1.5e-3 at T = 0.07, 64 elements.
    assert_close_sum_order(got64, expected, terms=terms, scale=scale, u=U64, name="supcon float64")
    assert_close_sum_order(got32, expected, terms=terms, scale=scale, u=U32, name="supcon float32")


def test_anchors_without_positives_are_left_out():
    features, _ = jigclu_like_batch(num_images=3, dim=8, seed=2)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 4, 5, 6, 7, 8])  # the last six anchors have no positive
    expected = torch.tensor(reference_supcon(features, labels.tolist(), 0.3, 0.07), dtype=torch.float64)
    terms, scale = supcon_rounding_terms(features, labels, 0.3, 0.07)
    assert_close_sum_order(supcon_loss(features, labels, 0.3, 0.07), expected, terms=terms, scale=scale,
                           u=U64, name="supcon without positives")
    assert supcon_loss(features, torch.arange(12), 0.3, 0.07).item() == 0.0


def test_gradient_matches_finite_differences():
    features, labels = jigclu_like_batch(num_images=4, dim=6, seed=3)
    features.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f: supcon_loss(f, labels, 0.3, 0.07), (features,))


def test_scale_is_temperature_over_base_temperature():
    features, labels = jigclu_like_batch(num_images=8, dim=8, seed=4)
    ratio = supcon_loss(features, labels, 0.3, 0.07) / supcon_loss(features, labels, 0.3, 0.3)
    # The same float64 mean times fl(0.3 / 0.07) against times 1.0 (exact): the ratio is off from the
    # float 0.3 / 0.07 by the product's and the division's roundings, the reference's own one more.
    assert ratio.item() == pytest.approx(0.3 / 0.07, rel=4 * U64)


def test_clustered_features_have_lower_loss_than_random():
    g = torch.Generator().manual_seed(5)
    labels = torch.arange(16).repeat(4)
    centres = F.normalize(torch.randn(16, 32, generator=g), dim=1)
    clustered = F.normalize(centres[labels] + 0.05 * torch.randn(64, 32, generator=g), dim=1)
    scattered = F.normalize(torch.randn(64, 32, generator=g), dim=1)
    assert supcon_loss(clustered, labels, 0.3) < supcon_loss(scattered, labels, 0.3) - 1.0


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"features \(M, D\) and labels \(M,\)"):
        supcon_loss(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long))
