"""Non-parametric instance discrimination (NPID, Wu et al. 2018; NPID++ in PIRL's paper, VISSL)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from d2ssl.losses.nce import NCELossWithMemory
from d2ssl.modeling.meta_arch.base import SSLMetaArch


@META_ARCH_REGISTRY.register()
class NPID(SSLMetaArch):
    """Each image is its own class: its embedding must score high against its own memory-bank row
    and low against random other rows (NCE, or InfoNCE with ``loss_type="cross_entropy"``).

    ``head`` maps pooled trunk features ``(N, C)`` to embeddings ``(N, D)`` (VISSL: a
    ``Linear(2048, 128)``); ``loss`` holds the bank of one ``D``-d entry per training image and updates
    it from every batch. Inputs: ``{"image": (3, H, W), "image_id": int}`` from ``ImageMapper``.
    """

    def __init__(self, trunk: nn.Module, head: nn.Module, loss: NCELossWithMemory, feature: str = "res5"):
        super().__init__(trunk, feature)
        loss.check_head(head, "head")
        if len(loss.loss_weights) != 1:
            raise ValueError(
                f"NPID has one embedding per image: loss_weights needs 1 value, got {loss.loss_weights}"
            )
        self.head = head
        self.loss = loss

    def losses(self, batched_inputs: Sequence[dict]) -> dict[str, torch.Tensor]:
        images = self.stack(batched_inputs, "image")
        indices = self.stack(batched_inputs, "image_id")
        loss = self.loss(self.head(self.pooled_features(images)), indices)
        log_norm_constant(self.loss)
        return {"loss_nce": loss}


def log_norm_constant(loss: NCELossWithMemory) -> None:
    """Logs NCE's ``Z`` (fixed after the first batch; a sanity check of the scale of the scores)."""
    if loss.loss_type == "nce":
        SSLMetaArch.log_metrics(nce_norm_constant=loss.norm_constant)
