"""Exporting a pretrained trunk for detectron2 detectors or torchvision classifiers.

- ``to_detectron2``: the model-zoo pickle detectron2's ``DetectionCheckpointer`` reads
  (``{"model": {name: ndarray}, "__author__", "matching_heuristics": True}``), as MoCo's and VISSL's
  converters write it. The names are the trunk's own (``stem.conv1.weight``,
  ``res5.2.conv3.norm.running_var``); the matching heuristics find them under ``backbone.bottom_up.``
  in an FPN detector and under ``backbone.`` / ``roi_heads.res5.`` in a C4 one. BatchNorm statistics
  travel with the weights.
- ``to_torchvision``: a state dict ``torchvision.models.resnet50()`` (18/34/50/101/152, or
  ``wide_resnet50_2``/``101_2`` for that torchvision layout) loads with ``strict=True``. SSL trunks
  have no classifier, so ``fc`` is written as zeros (all logits 0 until trained), unless the source
  was a torchvision model with its own ``fc``. VISSL-style wide trunks (every channel multiplied) have
  no torchvision counterpart and are refused.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from detectron2.utils.file_io import PathManager

from d2ssl.checkpoint.layouts import TrunkWeights, detectron2_to_torchvision_key, find_trunk
from d2ssl.checkpoint.load import find_trunk_in_file, resnet_location
from d2ssl.modeling.backbone import RESNET_DEPTHS
from d2ssl.utils.safe_io import atomic_write

AUTHOR = "d2ssl"
EXPORT_FORMATS = ("detectron2", "torchvision")


class ExportError(ValueError):
    """A trunk cannot be written in the requested format; the message says why and what to do."""


def _trunk(weights: Mapping[str, Any] | TrunkWeights) -> TrunkWeights:
    return weights if isinstance(weights, TrunkWeights) else find_trunk(weights)


def to_detectron2(weights: Mapping[str, Any] | TrunkWeights) -> dict[str, Any]:
    """A state dict of any known layout (or a ``TrunkWeights``) -> detectron2 model-zoo pickle content."""
    trunk = _trunk(weights)
    return {
        "model": {k: v.detach().cpu().numpy() for k, v in trunk.trunk.items()},
        "__author__": AUTHOR,
        "matching_heuristics": True,
    }


def _blocks_per_stage(trunk: Mapping[str, torch.Tensor]) -> tuple[int, ...]:
    counts = []
    for stage in range(2, 6):
        blocks = {int(m.group(1)) for k in trunk if (m := re.match(rf"res{stage}\.(\d+)\.", k))}
        counts.append(max(blocks) + 1 if blocks else 0)
    return tuple(counts)


def torchvision_arch(trunk: Mapping[str, torch.Tensor]) -> str:
    """Name of the ``torchvision.models`` constructor whose ResNet has this trunk's shapes."""
    blocks = _blocks_per_stage(trunk)
    bottleneck = "res2.0.conv3.weight" in trunk
    depth = next((d for d, b in RESNET_DEPTHS.items() if b == blocks and (d >= 50) == bottleneck), None)
    if depth is None:
        raise ExportError(
            f"no torchvision ResNet has {list(blocks)} {'bottleneck' if bottleneck else 'basic'} blocks "
            f"in res2..res5"
        )
    stem = int(trunk["stem.conv1.weight"].shape[0])
    inner = int(trunk["res2.0.conv1.weight"].shape[0])
    if stem == 64 and inner == 64:
        return f"resnet{depth}"
    if bottleneck and stem == 64 and inner == 128 and depth in (50, 101):
        return f"wide_resnet{depth}_2"
    raise ExportError(
        f"this ResNet-{depth} has a {stem}-channel stem and {inner}-channel first blocks; torchvision's "
        f"have 64 and 64. VISSL-style wide or reduced trunks (every channel scaled: width_multiplier, "
        f"base_channels) have no torchvision counterpart (torchvision's wide_resnet50_2 widens only the "
        f"bottleneck): export with --to detectron2, or load the d2ssl checkpoint into build_resnet_trunk"
    )


def to_torchvision(
    weights: Mapping[str, Any] | TrunkWeights, num_classes: int | None = None
) -> tuple[dict[str, torch.Tensor], str]:
    """A state dict of any known layout -> ``(torchvision state dict, constructor name)``.

    ``torchvision.models.<name>(num_classes=num_classes).load_state_dict(sd, strict=True)`` works.
    ``fc`` is the source's torchvision classifier if it has one of ``num_classes`` outputs, else zeros
    of ``num_classes`` (default 1000) outputs.
    """
    trunk = _trunk(weights)
    arch = torchvision_arch(trunk.trunk)
    out: dict[str, torch.Tensor] = {}
    for key, value in trunk.trunk.items():
        out[detectron2_to_torchvision_key(key)] = value.detach().clone()
    for key in [k for k in out if k.endswith(".running_mean")]:
        # strict=True needs every BN's counter; 0 is what a fresh torchvision BN holds.
        out.setdefault(key[: -len("running_mean")] + "num_batches_tracked", torch.tensor(0, dtype=torch.long))
    last_conv = "layer4.0.conv3.weight" if "layer4.0.conv3.weight" in out else "layer4.0.conv2.weight"
    features = int(out[last_conv].shape[0])
    if trunk.classifier is not None and num_classes in (None, trunk.classifier[0].shape[0]):
        out["fc.weight"], out["fc.bias"] = (t.detach().clone() for t in trunk.classifier)
    else:
        out["fc.weight"] = torch.zeros(num_classes or 1000, features)
        out["fc.bias"] = torch.zeros(num_classes or 1000)
    return out, arch


def convert_checkpoint(
    input_file: str,
    output_file: str,
    to: str,
    state_dict_key_name: str | Sequence[str] | None = None,
    remove_prefix: str | None = None,
    num_classes: int | None = None,
    allow_pickle: bool = False,
) -> str:
    """Reads a checkpoint of any known layout and writes its ResNet for ``to`` (``detectron2`` or
    ``torchvision``); returns a one-line summary. detectron2 output must be a ``.pkl`` (detectron2
    applies the name-matching heuristics only to pickles).

    The output is written atomically with a ``.sha256`` beside it: a refused conversion (or a crash)
    leaves an existing ``output_file`` as it was. ``allow_pickle`` lets the input hold Python objects
    besides tensors (unpickling them runs code stored in the file: trusted files only)."""
    if to not in EXPORT_FORMATS:
        raise ExportError(f"--to must be one of {EXPORT_FORMATS}, got {to!r}")
    if to == "detectron2" and not output_file.endswith(".pkl"):
        raise ExportError(
            f"detectron2 output {output_file!r} must end with .pkl: DetectionCheckpointer reads other files "
            f"as full detectron2 checkpoints and would not match the trunk's names"
        )
    trunk, where = find_trunk_in_file(input_file, state_dict_key_name, remove_prefix, allow_pickle)
    # Everything that can refuse the conversion runs before the output is touched.
    if to == "detectron2":
        content, save = to_detectron2(trunk), pickle.dump
        use = "set MODEL.WEIGHTS / train.init_checkpoint to it"
    else:
        (content, arch), save = to_torchvision(trunk, num_classes), torch.save
        use = f"load with torchvision.models.{arch}().load_state_dict(torch.load(...), strict=True)"
    if os.path.dirname(output_file):
        PathManager.mkdirs(os.path.dirname(output_file))
    atomic_write(output_file, lambda f: save(content, f), mode="wb", checksum=True)
    return (
        f"{input_file} ({trunk.layout} layout, ResNet at '{resnet_location(where, trunk.prefix)}', "
        f"{len(trunk.trunk)} tensors, {len(trunk.unused)} entries outside it) -> {output_file} ({to}): "
        f"{use}"
    )
