"""What every pretraining meta-architecture shares: a trunk, batching of mapper outputs, metric logging."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from d2ssl.data.device_augmentation import stack_views
from d2ssl.modeling.backbone import trunk_output_channels
from d2ssl.utils.events import log_metrics


class SSLMetaArch(nn.Module):
    """Base of the d2ssl meta-architectures.

    Subclasses implement ``losses(batched_inputs) -> dict[str, Tensor]``. ``forward`` returns those
    losses in training (detectron2's trainer sums and logs them) and pooled trunk features
    ``(N, C)`` of ``batched_inputs[i]["image"]`` in eval, which is what feature extraction, kNN and
    the linear benchmark consume.
    """

    def __init__(self, trunk: nn.Module, feature: str = "res5"):
        super().__init__()
        self.trunk = trunk
        self.feature = feature

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def feature_dim(self) -> int:
        return trunk_output_channels(self.trunk, self.feature)

    def pooled_features(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W) -> (N, C)``: global average pool of the trunk's ``feature`` output."""
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.trunk(images)[self.feature], 1), 1)

    def stack(self, batched_inputs: Sequence[dict], key: str) -> torch.Tensor:
        """Stacks ``batched_inputs[i][key]`` (tensors or ints) into one tensor on the model's device.

        Views a mapper left un-augmented (its ``augment_on_device=True``) are augmented and normalised
        there, on the model's device (:func:`d2ssl.data.device_augmentation.augment_on_device`)."""
        if isinstance(batched_inputs[0][key], torch.Tensor):
            return stack_views(batched_inputs, key, self.device)
        return torch.as_tensor([x[key] for x in batched_inputs], device=self.device)

    def forward(self, batched_inputs: Sequence[dict]):
        if self.training:
            return self.losses(batched_inputs)
        return self.pooled_features(self.stack(batched_inputs, "image"))

    def losses(self, batched_inputs: Sequence[dict]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    log_metrics = staticmethod(log_metrics)


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy of ``(N, K)`` logits against ``(N,)`` targets, as a 0-dim tensor in [0, 1]."""
    return (logits.argmax(dim=1) == targets).float().mean()
