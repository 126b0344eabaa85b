"""Pieces of detectron2 detectors that the SSL detection-transfer protocols change."""

from __future__ import annotations

from collections.abc import Sequence

from detectron2.layers import get_norm
from torch import nn


def res5_with_extra_norm(blocks: Sequence[nn.Module], norm: str) -> nn.Sequential:
    """The res5 stage of a C4 detector's ROI heads followed by one more norm layer over its output.

    MoCo's ``Res5ROIHeadsExtraNorm`` (He et al. 2020, appendix A.2: a normalised head for fine-tuning
    SyncBN-trained features), used by the MoCo and VISSL VOC/COCO C4 benchmarks. The norm is named
    ``norm`` inside ``roi_heads.res5``, as MoCo's, so detectron2 checkpoints of both match.
    """
    res5 = nn.Sequential(*blocks)
    res5.add_module("norm", get_norm(norm, blocks[-1].out_channels))
    return res5
