"""Rotation prediction pretext task (RotNet, Gidaris et al. 2018; VISSL's ResNet-50 recipe)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn
from torch.nn import functional as F

from d2ssl.modeling.meta_arch.base import SSLMetaArch, accuracy


@META_ARCH_REGISTRY.register()
class RotNet(SSLMetaArch):
    """Classifies by how many quarter turns each image was rotated.

    Inputs: ``{"images": (R, 3, S, S), "rotation_labels": (R,)}`` from ``RotationMapper``; the trunk
    runs once on all ``N * R`` rotated images (with ``R = 4`` all four rotations of an image share the
    batch and its BatchNorm statistics), ``head`` maps pooled features ``(N * R, C)`` to 4 logits
    (VISSL: a single ``Linear(2048, 4)``).
    """

    def __init__(self, trunk: nn.Module, head: nn.Module, feature: str = "res5"):
        super().__init__(trunk, feature)
        self.head = head

    def losses(self, batched_inputs: Sequence[dict]) -> dict[str, torch.Tensor]:
        images = self.stack(batched_inputs, "images").flatten(0, 1)
        targets = self.stack(batched_inputs, "rotation_labels").flatten()
        logits = self.head(self.pooled_features(images))
        self.log_metrics(rotnet_accuracy=accuracy(logits.detach(), targets))
        return {"loss_rotnet": F.cross_entropy(logits, targets)}
