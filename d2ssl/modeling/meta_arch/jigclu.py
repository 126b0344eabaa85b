"""Jigsaw Clustering (JigClu; Chen, Liu & Jia, CVPR 2021), as ``dvlab-research/JigsawClustering``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils import comm
from torch import nn
from torch.nn import functional as F

from d2ssl.data.mappers.montage import NUM_PATCHES, assemble_montages
from d2ssl.losses.supcon import SupConLoss
from d2ssl.modeling.meta_arch.base import SSLMetaArch, accuracy
from d2ssl.utils.distributed import all_gather_rows


@META_ARCH_REGISTRY.register()
class JigsawClustering(SSLMetaArch):
    """Clusters the patches of shuffled montages by source image and classifies their positions.

    Per step (``JigClu/jigclu.py``): the ``(n, 4, 3, P, P)`` patches of every rank are gathered into
    the global batch of ``N`` images, shuffled by one permutation of all ``4N`` patches drawn on rank
    0 and broadcast, and tiled into ``N`` montages of ``2P x 2P``; each rank runs the trunk on its
    ``n`` montages only. The trunk's ``feature`` map is bilinearly resized to
    ``upsample_size x upsample_size`` (JigClu: 7x7 -> 8x8) and average-pooled to 2x2, one
    ``C``-dim feature per montage slot. Those are gathered from every rank with gradients, so the
    losses are computed on all ``4N`` patch features and equal the single-process full-batch losses:

    - ``loss_clu``: supervised contrastive loss of ``normalize(cluster_head(f))`` (JigClu: Linear(C, C),
      ReLU, Linear(C, 128)), positives = the 3 other patches of the same image, scaled by
      ``temperature / base_temperature``;
    - ``loss_loc``: cross-entropy of ``location_head(f)`` (JigClu: Linear(C, 4)) against the patch's
      position in its source image (row-major, see ``d2ssl.data.mappers.montage``).

    Each is multiplied by its weight (JigClu's ``--loss_clu`` / ``--loss_loc``, both 1).
    """

    def __init__(
        self,
        trunk: nn.Module,
        cluster_head: nn.Module,
        location_head: nn.Module,
        temperature: float = 0.3,
        base_temperature: float = 0.07,
        cluster_loss_weight: float = 1.0,
        location_loss_weight: float = 1.0,
        upsample_size: int | None = 8,
        feature: str = "res5",
    ):
        super().__init__(trunk, feature)
        self.cluster_head = cluster_head
        self.location_head = location_head
        self.cluster_loss = SupConLoss(temperature, base_temperature)
        self.cluster_loss_weight = cluster_loss_weight
        self.location_loss_weight = location_loss_weight
        self.upsample_size = upsample_size

    def shuffle(self, num_patches: int) -> torch.Tensor:
        """One random permutation of ``num_patches`` indices, identical on every rank (rank 0's)."""
        # Drawn from the CPU generator, whose state the checkpoints keep, so a resumed run continues
        # with the same permutations.
        permutation = torch.randperm(num_patches).to(self.device)
        if comm.get_world_size() > 1:
            dist.broadcast(permutation, src=0)
        return permutation

    def slot_features(self, montages: torch.Tensor) -> torch.Tensor:
        """``(n, 3, 2P, 2P) -> (n, C, 2, 2)``: one trunk feature per montage slot."""
        fmap = self.trunk(montages)[self.feature]
        if self.upsample_size:
            size = (self.upsample_size, self.upsample_size)
            fmap = F.interpolate(fmap, size=size, mode="bilinear", align_corners=False)
        return F.adaptive_avg_pool2d(fmap, 2)

    def montage_batch(self, local_patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(n, 4, 3, P, P)`` local patches -> this rank's ``(n, 3, 2P, 2P)`` montages and the
        ``(4N,)`` cluster and location labels of all slots of the global batch (row ``s * N + m``
        = slot ``s`` of montage ``m``)."""
        with torch.no_grad():
            patches = all_gather_rows(local_patches)
            permutation = self.shuffle(NUM_PATCHES * len(patches))
            montages, cluster_labels, location_labels = assemble_montages(patches, permutation)
        start = comm.get_rank() * len(local_patches)
        return montages[start : start + len(local_patches)], cluster_labels, location_labels

    def patch_features(self, local_montages: torch.Tensor) -> torch.Tensor:
        """This rank's montages -> ``(4N, C)`` features of every slot of the global batch, row
        ``s * N + m`` = slot ``s`` of montage ``m``, gathered with gradients."""
        quadrants = all_gather_rows(self.slot_features(local_montages), differentiable=True)
        return quadrants.permute(2, 3, 0, 1).flatten(0, 2)  # (N, C, 2, 2) -> (2, 2, N, C) -> (4N, C)

    def losses(self, batched_inputs: Sequence[dict]) -> dict[str, torch.Tensor]:
        montages, cluster_labels, location_labels = self.montage_batch(self.stack(batched_inputs, "patches"))
        features = self.patch_features(montages)
        # Heads and losses in float32 under mixed precision: the contrastive loss exponentiates
        # similarities / 0.3, which a bfloat16 (or float16) matmul leaves off by ~1%.
        with torch.autocast(device_type=features.device.type, enabled=False):
            features = features.float()
            embeddings = F.normalize(self.cluster_head(features), dim=1)
            loss_clu = self.cluster_loss(embeddings, cluster_labels)
            location_logits = self.location_head(features)
            loss_loc = F.cross_entropy(location_logits, location_labels)
        self.log_metrics(
            jigclu_location_accuracy=accuracy(location_logits.detach(), location_labels),
            jigclu_cluster_accuracy=nearest_neighbour_accuracy(embeddings.detach(), cluster_labels),
        )
        return {
            "loss_clu": self.cluster_loss_weight * loss_clu,
            "loss_loc": self.location_loss_weight * loss_loc,
        }


def nearest_neighbour_accuracy(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of ``(M, D)`` embeddings whose most similar other embedding has the same label."""
    similarity = embeddings @ embeddings.T
    similarity.fill_diagonal_(float("-inf"))
    return (labels[similarity.argmax(dim=1)] == labels).float().mean()
