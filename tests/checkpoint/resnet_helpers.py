"""torchvision ResNets with non-trivial BatchNorm statistics, for the checkpoint tests."""

from __future__ import annotations

import torch
import torchvision
from torch import nn


def randomize_batchnorm(model: nn.Module, seed: int) -> nn.Module:
    """Gives every BatchNorm random affine parameters and running statistics, so that a comparison
    of outputs in eval mode fails when any of them is lost or misplaced."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.num_batches_tracked.fill_(7)
    return model


def torchvision_resnet(arch: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_batchnorm(getattr(torchvision.models, arch)(), seed).eval()


def torchvision_stages(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The outputs of a torchvision ResNet's layer1..layer4 under detectron2's names res2..res5."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(images))))
    out = {}
    for i in range(1, 5):
        x = getattr(model, f"layer{i}")(x)
        out[f"res{i + 1}"] = x
    return out
