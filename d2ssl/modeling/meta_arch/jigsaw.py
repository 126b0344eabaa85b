"""Jigsaw puzzle pretext task (Noroozi & Favaro 2016; Goyal et al. 2019 scaling, VISSL)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn
from torch.nn import functional as F

from d2ssl.modeling.heads import TileConcatHead
from d2ssl.modeling.meta_arch.base import SSLMetaArch, accuracy


@META_ARCH_REGISTRY.register()
class Jigsaw(SSLMetaArch):
    """Classifies which permutation shuffled an image's tiles.

    The trunk runs once on all ``N * T`` tiles (so BatchNorm statistics are over tiles, as in
    VISSL); ``head`` maps the ``(N * T, C)`` pooled tile features to ``(N, num_permutations)``
    logits. Inputs: ``{"tiles": (T, 3, t, t), "perm_index": int}`` from ``JigsawMapper``.
    """

    def __init__(self, trunk: nn.Module, head: TileConcatHead, feature: str = "res5"):
        super().__init__(trunk, feature)
        self.head = head

    def losses(self, batched_inputs: Sequence[dict]) -> dict[str, torch.Tensor]:
        tiles = self.stack(batched_inputs, "tiles")
        targets = self.stack(batched_inputs, "perm_index")
        logits = self.head(self.pooled_features(tiles.flatten(0, 1)))
        self.log_metrics(jigsaw_accuracy=accuracy(logits.detach(), targets))
        return {"loss_jigsaw": F.cross_entropy(logits, targets)}
