import math

import pytest
import torch
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


@pytest.mark.parametrize("temperature,base_temperature", [(0.3, 0.07), (0.07, 0.07), (0.5, 1.0)])
def test_matches_float64_reference(temperature, base_temperature):
    features, labels = jigclu_like_batch(num_images=12, dim=16, seed=1)
    expected = reference_supcon(features, labels.tolist(), temperature, base_temperature)
    got64 = supcon_loss(features, labels, temperature, base_temperature)
    got32 = SupConLoss(temperature, base_temperature)(features.float(), labels)
    assert abs(got64.item() - expected) < 1e-9
    assert abs(got32.item() - expected) < 1e-6 * max(1.0, abs(expected))


def test_anchors_without_positives_are_left_out():
    features, _ = jigclu_like_batch(num_images=3, dim=8, seed=2)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 4, 5, 6, 7, 8])  # the last six anchors have no positive
    expected = reference_supcon(features, labels.tolist(), 0.3, 0.07)
    assert abs(supcon_loss(features, labels, 0.3, 0.07).item() - expected) < 1e-9
    assert supcon_loss(features, torch.arange(12), 0.3, 0.07).item() == 0.0


def test_gradient_matches_finite_differences():
    features, labels = jigclu_like_batch(num_images=4, dim=6, seed=3)
    features.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f: supcon_loss(f, labels, 0.3, 0.07), (features,))


def test_scale_is_temperature_over_base_temperature():
    features, labels = jigclu_like_batch(num_images=8, dim=8, seed=4)
    ratio = supcon_loss(features, labels, 0.3, 0.07) / supcon_loss(features, labels, 0.3, 0.3)
    assert ratio.item() == pytest.approx(0.3 / 0.07, rel=1e-12)


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
