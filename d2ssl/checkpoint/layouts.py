"""Where each code base keeps its ResNet weights, and the renames between torchvision and detectron2 names.

d2ssl trunks are detectron2 ResNets, so the common currency here is a *trunk state dict*: detectron2
names relative to the ResNet (``stem.conv1.weight``, ``stem.conv1.norm.running_mean``,
``res2.0.conv1.weight``, ``res2.0.shortcut.norm.weight``, ...). Every known checkpoint is turned into
one by ``find_trunk``:

==========================  =========================================  ==============================
layout                      where the ResNet is                        names
==========================  =========================================  ==============================
torchvision                 flat state dict (``fc.*`` = classifier)    ``conv1``, ``bn1``, ``layer1``
VISSL                       ``classy_state_dict`` -> ``base_model``    torchvision, under
                            -> ``model`` -> ``trunk``                  ``_feature_blocks.``
Jigsaw Clustering           ``state_dict``                             torchvision, under
                                                                       ``module.encoder.``
MoCo v1/v2 (v3)             ``state_dict``                             torchvision, under
                                                                       ``module.encoder_q.``
                                                                       (``module.base_encoder.``)
d2ssl                       ``model``                                  detectron2, under ``trunk.``
detectron2 / d2ssl export   ``model`` (FPN: ``backbone.bottom_up.``;   detectron2
                            C4: ``backbone.`` + ``roi_heads.res5.``)
==========================  =========================================  ==============================
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


class UnknownLayoutError(ValueError):
    """No ResNet could be found in a state dict; the message lists the first keys."""


# Prefixes under which code bases keep a torchvision-named ResNet. When a checkpoint holds several
# (MoCo keeps a query and a key encoder), the first one listed here is the one transferred.
TORCHVISION_STYLE_PREFIXES: dict[str, str] = {
    "_feature_blocks.": "vissl",
    "module.encoder.": "jigclu",
    "module.encoder_q.": "moco",  # encoder_k is the momentum copy
    "encoder_q.": "moco",
    "module.base_encoder.": "moco-v3",  # momentum_encoder is the momentum copy
    "base_encoder.": "moco-v3",
    "": "torchvision",
    "module.": "torchvision",  # saved from a DataParallel / DDP wrapper
}
# The same for detectron2-named ResNets.
DETECTRON2_STYLE_PREFIXES: dict[str, str] = {
    "trunk.": "d2ssl",
    "": "detectron2",
    "backbone.bottom_up.": "detectron2",  # an FPN detector
    "backbone.": "detectron2",  # a C4 detector (res5 lives in roi_heads)
    "module.trunk.": "d2ssl",
}
# Where a C4 detector keeps res5 (detectron2's Res5ROIHeads).
C4_RES5_PREFIX = "roi_heads.res5."

_TV_STEM = re.compile(r"^(conv1|bn1)\.(.+)$")
_TV_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.(conv[1-3]|bn[1-3]|downsample\.[01])\.(.+)$")
_D2_STEM = re.compile(r"^stem\.conv1\.(norm\.)?([^.]+)$")
_D2_BLOCK = re.compile(r"^res([2-5])\.(\d+)\.(conv[1-3]|shortcut)\.(norm\.)?([^.]+)$")


def torchvision_to_detectron2_key(key: str) -> str | None:
    """``layer1.0.bn2.weight`` -> ``res2.0.conv2.norm.weight``; ``None`` outside the trunk (``fc.*``).

    The renames of MoCo's ``convert-pretrain-to-detectron2.py`` and VISSL's
    ``convert_vissl_to_detectron2.py``: conv1 -> stem.conv1, bn1 -> stem.conv1.norm, layerN -> res(N+1),
    bnK -> convK.norm, downsample.0 -> shortcut, downsample.1 -> shortcut.norm.
    """
    m = _TV_STEM.match(key)
    if m:
        return f"stem.conv1.{'norm.' if m.group(1) == 'bn1' else ''}{m.group(2)}"
    m = _TV_BLOCK.match(key)
    if not m:
        return None
    stage, block, layer, rest = int(m.group(1)) + 1, m.group(2), m.group(3), m.group(4)
    if layer.startswith("downsample"):
        module = "shortcut" if layer.endswith("0") else "shortcut.norm"
    elif layer.startswith("bn"):
        module = f"conv{layer[2]}.norm"
    else:
        module = layer
    return f"res{stage}.{block}.{module}.{rest}"


def detectron2_to_torchvision_key(key: str) -> str | None:
    """The inverse of ``torchvision_to_detectron2_key``; ``None`` for keys outside the trunk."""
    m = _D2_STEM.match(key)
    if m:
        return f"{'bn1' if m.group(1) else 'conv1'}.{m.group(2)}"
    m = _D2_BLOCK.match(key)
    if not m:
        return None
    stage, block, module, norm, rest = int(m.group(1)) - 1, m.group(2), m.group(3), m.group(4), m.group(5)
    if module == "shortcut":
        module = "downsample.1" if norm else "downsample.0"
    elif norm:
        module = f"bn{module[4]}"
    return f"layer{stage}.{block}.{module}.{rest}"


def is_detectron2_trunk_key(key: str) -> bool:
    return bool(_D2_STEM.match(key) or _D2_BLOCK.match(key))


@dataclass
class TrunkWeights:
    """A ResNet found in a checkpoint.

    Attributes:
        layout: which code base wrote it (``vissl``, ``jigclu``, ``moco``, ``torchvision``, ``d2ssl``, ...).
        prefix: where the ResNet was in the state dict (``module.encoder.``, ``trunk.``, ...).
        trunk: the trunk state dict, detectron2 names relative to the ResNet.
        source_keys: for each trunk key, the key it came from.
        unused: the other entries of the state dict (heads, classifier, momentum encoder, ...).
        classifier: ``(fc.weight, fc.bias)`` of a torchvision classifier, when the checkpoint has one.
    """

    layout: str
    prefix: str
    trunk: dict[str, torch.Tensor]
    source_keys: dict[str, str] = field(default_factory=dict)
    unused: dict[str, Any] = field(default_factory=dict)
    classifier: tuple[torch.Tensor, torch.Tensor] | None = None


def as_tensor(value: Any) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))


def _candidates(keys: Sequence[str], marker: str, companion: str) -> list[str]:
    # Every prefix p with p + marker and p + companion both present.
    keyset = set(keys)
    found = [k[: -len(marker)] for k in keys if k.endswith(marker)]
    return [p for p in found if (p == "" or p.endswith(".")) and p + companion in keyset]


def _choose(candidates: list[str], known: Mapping[str, str], style: str, keys: Sequence[str]) -> str:
    preferred = [p for p in known if p in candidates]
    if preferred:
        return preferred[0]
    if len(candidates) == 1:
        return candidates[0]
    raise UnknownLayoutError(
        f"several {style}-named ResNets in the state dict, under prefixes {sorted(candidates)}; say which "
        f"one with REMOVE_PREFIX (first keys: {list(keys)[:5]})"
    )


def find_trunk(state_dict: Mapping[str, Any]) -> TrunkWeights:
    """Finds the ResNet in a state dict of any known layout (see the module docstring).

    Raises:
        UnknownLayoutError: no torchvision- or detectron2-named ResNet is in ``state_dict``.
    """
    keys = list(state_dict.keys())
    d2_prefixes = _candidates(keys, "stem.conv1.weight", "res2.0.conv1.weight")
    tv_prefixes = _candidates(keys, "conv1.weight", "layer1.0.conv1.weight")
    if d2_prefixes:
        prefix = _choose(d2_prefixes, DETECTRON2_STYLE_PREFIXES, "detectron2", keys)
        layout = DETECTRON2_STYLE_PREFIXES.get(prefix, "detectron2")
        rename = _detectron2_rename(prefix)
    elif tv_prefixes:
        prefix = _choose(tv_prefixes, TORCHVISION_STYLE_PREFIXES, "torchvision", keys)
        layout = TORCHVISION_STYLE_PREFIXES.get(prefix, "torchvision")
        rename = lambda k: torchvision_to_detectron2_key(k[len(prefix):]) if k.startswith(prefix) else None
    else:
        raise UnknownLayoutError(
            "no ResNet found: expected torchvision names (conv1.weight, layer1.0.conv1.weight, possibly "
            "under a prefix such as _feature_blocks. or module.encoder.) or detectron2 names "
            f"(stem.conv1.weight, res2.0.conv1.weight); first keys: {keys[:8]}"
        )
    weights = TrunkWeights(layout=layout, prefix=prefix, trunk={})
    for key, value in state_dict.items():
        name = rename(key)
        if name is None or name in weights.trunk:
            weights.unused[key] = value
        else:
            weights.trunk[name] = as_tensor(value)
            weights.source_keys[name] = key
    fc_w, fc_b = state_dict.get(prefix + "fc.weight"), state_dict.get(prefix + "fc.bias")
    if layout == "torchvision" and fc_w is not None and fc_b is not None and np.ndim(fc_w) == 2:
        weights.classifier = (as_tensor(fc_w), as_tensor(fc_b))
    return weights


def _detectron2_rename(prefix: str):
    def rename(key: str) -> str | None:
        if prefix == "backbone." and key.startswith(C4_RES5_PREFIX):
            key = prefix + "res5." + key[len(C4_RES5_PREFIX):]
        name = key[len(prefix):] if key.startswith(prefix) else None
        return name if name is not None and is_detectron2_trunk_key(name) else None

    return rename
