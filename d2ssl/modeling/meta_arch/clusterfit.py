"""ClusterFit step 2 (Yan et al., CVPR 2020; VISSL's ``clusterfit_resnet_8gpu_imagenet.yaml``): a fresh
trunk learns to predict the cluster each image was put in by k-means of another trunk's features."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn
from torch.nn import functional as F

from d2ssl.modeling.meta_arch.base import SSLMetaArch, accuracy

# VISSL's cross_entropy_multiple_output_single_target ignore_index: images without a pseudo-label.
IGNORE_LABEL = -1


@META_ARCH_REGISTRY.register()
class ClusterFit(SSLMetaArch):
    """Classifies each image into its pseudo-label (cluster id), with cross-entropy.

    Inputs: ``{"image": (3, S, S), "label": int}`` from ``ClassificationMapper(train=True)`` over a
    data set whose labels come from ``d2ssl.data.datasets.attach_labels`` (VISSL's ``LABEL_PATHS``,
    the ``.npy`` file ``tools/cluster_features.py`` writes). ``head`` maps pooled trunk features
    ``(N, C)`` to ``(N, NUM_CLUSTERS)`` logits (VISSL: ``Linear(2048, 16000)``). Labels equal to -1 are
    ignored. Logs ``clusterfit_accuracy``, the top-1 against the cluster labels.
    """

    def __init__(self, trunk: nn.Module, head: nn.Module, feature: str = "res5"):
        super().__init__(trunk, feature)
        self.head = head

    def losses(self, batched_inputs: Sequence[dict]) -> dict[str, torch.Tensor]:
        images = self.stack(batched_inputs, "image")
        targets = self.stack(batched_inputs, "label")
        logits = self.head(self.pooled_features(images))
        if targets.max() >= logits.shape[1]:
            raise ValueError(
                f"pseudo-label {int(targets.max())} but the head has {logits.shape[1]} outputs: the head's "
                f"NUM_CLUSTERS must equal the clustering's"
            )
        labelled = targets != IGNORE_LABEL
        self.log_metrics(clusterfit_accuracy=accuracy(logits.detach()[labelled], targets[labelled]))
        return {"loss_clusterfit": F.cross_entropy(logits, targets, ignore_index=IGNORE_LABEL)}
