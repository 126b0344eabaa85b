"""Pretext-invariant representation learning (PIRL, Misra & van der Maaten 2019), jigsaw pretext."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from d2ssl.losses.nce import NCELossWithMemory
from d2ssl.modeling.heads import TileConcatHead
from d2ssl.modeling.meta_arch.base import SSLMetaArch
from d2ssl.modeling.meta_arch.npid import log_norm_constant


@META_ARCH_REGISTRY.register()
class PIRL(SSLMetaArch):
    """An image and its shuffled jigsaw tiles must both match the image's memory-bank row.

    The trunk runs separately on the ``N * T`` tiles and on the ``N`` images (so BatchNorm statistics
    are per view, as in VISSL). ``patch_head`` embeds each tile, concatenates the ``T`` embeddings and
    projects them (VISSL: ``Linear(2048, 128)`` per tile, ``Linear(9 * 128, 128)``); ``image_head``
    embeds the image (``Linear(2048, 128)``). ``loss`` gets ``[patch embedding, image embedding]``, in
    VISSL's order: with ``loss_weights=[0.5, 0.5]``, ``update_mem_on_forward=False`` and
    ``update_mem_with_emb_index=1``, the loss is ``0.5 * NCE(patches, bank) + 0.5 * NCE(image, bank)``
    and only the image embedding updates the bank. Inputs: ``{"image", "tiles", "image_id"}`` from
    ``PIRLMapper``.
    """

    def __init__(
        self,
        trunk: nn.Module,
        image_head: nn.Module,
        patch_head: TileConcatHead,
        loss: NCELossWithMemory,
        feature: str = "res5",
    ):
        super().__init__(trunk, feature)
        loss.check_head(image_head, "image_head")
        loss.check_head(patch_head, "patch_head")
        if len(loss.loss_weights) != 2:
            raise ValueError(
                "PIRL scores two embeddings against the bank ([patches, image]): loss_weights needs 2 "
                f"values, got {loss.loss_weights}"
            )
        self.image_head = image_head
        self.patch_head = patch_head
        self.loss = loss

    def losses(self, batched_inputs: Sequence[dict]) -> dict[str, torch.Tensor]:
        images = self.stack(batched_inputs, "image")
        tiles = self.stack(batched_inputs, "tiles")
        indices = self.stack(batched_inputs, "image_id")
        if tiles.shape[1] != self.patch_head.num_tiles:
            raise ValueError(
                f"the mapper gives {tiles.shape[1]} tiles per image but patch_head.num_tiles="
                f"{self.patch_head.num_tiles}: make the grid and the head agree"
            )
        patch_embedding = self.patch_head(self.pooled_features(tiles.flatten(0, 1)))
        image_embedding = self.image_head(self.pooled_features(images))
        patch_term, image_term = self.loss.weighted_terms(
            [patch_embedding, image_embedding], indices, names=["patches", "image"]
        )
        log_norm_constant(self.loss)
        return {"loss_nce_patches": patch_term, "loss_nce_image": image_term}
