"""ResNet trunks for pretraining, built from detectron2's own ResNet blocks.

The trunk is a ``detectron2.modeling.backbone.ResNet``, so its parameter names (``stem.conv1``,
``res2.0.conv1``, ...) are exactly those of detectron2's detectors and export to detectron2 is a
rename-free copy. Like torchvision and every SSL reference (VISSL, MoCo, JigClu), the stride of a
downsampling bottleneck sits in its 3x3 convolution (``stride_in_1x1=False``); detection configs
that load these weights must say the same (``d2ssl.checkpoint`` does it for you).

Wide ResNets follow VISSL's ``WIDTH_MULTIPLIER`` (the PIRL/SimCLR "R50-w2/w4" models): every
channel count, stem and stage outputs included, is multiplied, so an R50-w2 trunk outputs 4096
channels. This is not torchvision's ``wide_resnet50_2``, which widens only the bottleneck.
"""

from __future__ import annotations

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock, ResNet
from torch import nn

# Blocks per stage, as in He et al. 2016 and torchvision.
RESNET_DEPTHS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


def build_resnet_trunk(
    depth: int = 50,
    width_multiplier: int = 1,
    norm: str = "BN",
    in_channels: int = 3,
    out_features: tuple[str, ...] = ("res5",),
    zero_init_residual: bool = False,
    base_channels: int = 64,
    freeze_at: int = 0,
) -> ResNet:
    """Builds a ResNet trunk (no classifier) from detectron2's blocks.

    Args:
        depth: 18 or 34 (basic blocks), 50, 101 or 152 (bottleneck blocks).
        width_multiplier: VISSL's width multiplier (1, 2, 4): scales every channel count.
        norm: any detectron2 norm name ("BN", "SyncBN", "FrozenBN", "GN", ...).
        out_features: which stages ``forward`` returns, e.g. ``("res5",)`` or ``("res4", "res5")``.
        zero_init_residual: zero the last BN gamma of each block (Goyal et al. 2017), as torchvision's
            option of the same name.
        base_channels: stem width (64 in every published model); smaller values give the tiny CPU
            trunks used by the demo and the tests.
        freeze_at: detectron2's ``freeze_at`` (0: train everything; 2: freeze stem and res2).

    Returns:
        a ``ResNet`` mapping ``(N, in_channels, H, W)`` to ``{name: (N, C, H/s, W/s)}``.
    """
    if depth not in RESNET_DEPTHS:
        raise ValueError(f"ResNet depth must be one of {sorted(RESNET_DEPTHS)}, got depth={depth}")
    if width_multiplier < 1 or int(width_multiplier) != width_multiplier:
        raise ValueError(f"width_multiplier must be a positive integer, got {width_multiplier}")
    stem_channels = base_channels * int(width_multiplier)
    stem = BasicStem(in_channels=in_channels, out_channels=stem_channels, norm=norm)
    bottleneck_blocks = depth >= 50
    stages = []
    in_ch, bottleneck = stem_channels, stem_channels
    for idx, num_blocks in enumerate(RESNET_DEPTHS[depth]):
        strides = [1 if idx == 0 else 2] + [1] * (num_blocks - 1)
        if bottleneck_blocks:
            out_ch = bottleneck * 4
            stage = ResNet.make_stage(
                BottleneckBlock, num_blocks, stride_per_block=strides, in_channels=in_ch,
                bottleneck_channels=bottleneck, out_channels=out_ch, num_groups=1, norm=norm,
                stride_in_1x1=False,
            )
        else:
            out_ch = bottleneck
            stage = ResNet.make_stage(
                BasicBlock, num_blocks, stride_per_block=strides, in_channels=in_ch,
                out_channels=out_ch, norm=norm,
            )
        stages.append(stage)
        in_ch, bottleneck = out_ch, bottleneck * 2
    trunk = ResNet(stem, stages, out_features=list(out_features))
    _init_like_torchvision(trunk, zero_init_residual)
    return trunk.freeze(freeze_at)


# Norms with a trainable scale: nn.SyncBatchNorm (detectron2's "SyncBN") is no BatchNorm2d subclass.
_AFFINE_NORMS = (nn.BatchNorm2d, nn.GroupNorm, nn.SyncBatchNorm)


def _init_like_torchvision(trunk: nn.Module, zero_init_residual: bool) -> None:
    # detectron2 initialises convolutions with c2_msra_fill (fan_out, no bias); torchvision and the SSL
    # references use kaiming_normal_(fan_out, relu) and BN weight 1 / bias 0: match the references.
    for m in trunk.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, _AFFINE_NORMS):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in trunk.modules():
            last_conv = {BottleneckBlock: "conv3", BasicBlock: "conv2"}.get(type(m))
            last_conv = getattr(m, last_conv) if last_conv else None
            # torchvision zeroes the last norm of a block whatever its type (SyncBN, GN included).
            if last_conv is not None and isinstance(last_conv.norm, _AFFINE_NORMS):
                nn.init.zeros_(last_conv.norm.weight)


def trunk_output_channels(trunk: ResNet, feature: str = "res5") -> int:
    """Number of channels of a trunk output, e.g. 2048 for an R50 ``res5``."""
    spec: ShapeSpec = trunk.output_shape()[feature]
    return int(spec.channels)


class PooledTrunk(nn.Module):
    """A trunk followed by global average pooling of one of its outputs: ``(N,3,H,W) -> (N,C)``."""

    def __init__(self, trunk: ResNet, feature: str = "res5"):
        super().__init__()
        self.trunk = trunk
        self.feature = feature
        self.out_channels = trunk_output_channels(trunk, feature)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.trunk(images)[self.feature], 1), 1)
