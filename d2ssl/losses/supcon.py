"""Supervised contrastive loss (Khosla et al. 2020), the clustering loss of Jigsaw Clustering.

With one view per sample ("all" anchor mode) and ``M`` embeddings ``z`` with labels ``y``::

    s_ij   = z_i . z_j / temperature
    log p_ij = s_ij - log sum_{k != i} exp(s_ik)
    l_i    = - mean_{j != i, y_j = y_i} log p_ij
    loss   = (temperature / base_temperature) * mean_i l_i

Every other sample is in the denominator; the positives of an anchor are the other samples with its
label (in JigClu: the three other patches of the same image). ``temperature / base_temperature``
is the scale of the SupCon reference code, which JigClu keeps with ``base_temperature=0.07`` while
training at ``temperature=0.3`` (``JigClu/losses.py``), so its loss is multiplied by 4.2857.

Example::

    loss = SupConLoss(temperature=0.3)(F.normalize(embeddings, dim=1), image_index)
"""

from __future__ import annotations

import torch
from torch import nn


def supcon_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.07,
    base_temperature: float = 0.07,
) -> torch.Tensor:
    """Supervised contrastive loss of ``features`` ``(M, D)`` (L2-normalised) with ``labels`` ``(M,)``.

    Returns a 0-dim tensor. Anchors without any positive are left out of the mean (the reference
    code divides by zero there and returns NaN; in JigClu every anchor has three positives).
    """
    if features.dim() != 2 or labels.shape != features.shape[:1]:
        raise ValueError(
            f"supcon_loss expects features (M, D) and labels (M,), got {tuple(features.shape)} and "
            f"{tuple(labels.shape)}"
        )
    logits = features @ features.T / temperature
    # Subtracting the row maximum changes nothing mathematically and keeps exp() finite.
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    not_self = ~torch.eye(len(features), dtype=torch.bool, device=features.device)
    positives = (labels[:, None] == labels[None, :]) & not_self
    log_denominator = torch.logsumexp(logits.masked_fill(~not_self, float("-inf")), dim=1, keepdim=True)
    log_prob = logits - log_denominator
    num_positives = positives.sum(dim=1)
    has_positive = num_positives > 0
    mean_log_prob_pos = (log_prob * positives).sum(dim=1)[has_positive] / num_positives[has_positive]
    if mean_log_prob_pos.numel() == 0:
        return features.sum() * 0.0
    return -(temperature / base_temperature) * mean_log_prob_pos.mean()


class SupConLoss(nn.Module):
    """Module form of :func:`supcon_loss`: ``(features (M, D), labels (M,)) -> scalar``."""

    def __init__(self, temperature: float = 0.07, base_temperature: float = 0.07):
        super().__init__()
        self.temperature = temperature
        self.base_temperature = base_temperature

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return supcon_loss(features, labels, self.temperature, self.base_temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, base_temperature={self.base_temperature}"
