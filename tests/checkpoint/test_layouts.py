"""Key renames between torchvision and detectron2 ResNets, and finding the ResNet in each layout."""

from __future__ import annotations

import pytest
import torch

from d2ssl.checkpoint.layouts import (
    UnknownLayoutError,
    detectron2_to_torchvision_key,
    find_trunk,
    torchvision_to_detectron2_key,
)
from d2ssl.modeling.backbone import build_resnet_trunk


@pytest.mark.parametrize(
    "torchvision_key, detectron2_key",
    [
        ("conv1.weight", "stem.conv1.weight"),
        ("bn1.running_var", "stem.conv1.norm.running_var"),
        ("layer1.0.conv1.weight", "res2.0.conv1.weight"),
        ("layer2.3.bn3.bias", "res3.3.conv3.norm.bias"),
        ("layer3.0.downsample.0.weight", "res4.0.shortcut.weight"),
        ("layer4.0.downsample.1.num_batches_tracked", "res5.0.shortcut.norm.num_batches_tracked"),
    ],
)
def test_key_renames_match_moco_and_vissl_converters(torchvision_key, detectron2_key):
    assert torchvision_to_detectron2_key(torchvision_key) == detectron2_key
    assert detectron2_to_torchvision_key(detectron2_key) == torchvision_key


def test_keys_outside_the_resnet_are_not_renamed():
    for key in ("fc.weight", "fc_clu.0.weight", "layer1.0.se.fc.weight", "queue"):
        assert torchvision_to_detectron2_key(key) is None
    assert detectron2_to_torchvision_key("linear.weight") is None


@pytest.mark.parametrize("depth", [18, 50])
def test_every_trunk_key_survives_a_round_trip_through_torchvision_names(depth):
    with torch.device("meta"):
        keys = list(build_resnet_trunk(depth).state_dict())
    assert [torchvision_to_detectron2_key(detectron2_to_torchvision_key(k)) for k in keys] == keys


def test_momentum_encoders_are_not_taken_for_the_query_encoder():
    weight = torch.zeros(1)
    state = {}
    for prefix in ("module.encoder_k.", "module.encoder_q."):
        state.update({prefix + "conv1.weight": weight, prefix + "layer1.0.conv1.weight": weight})
    found = find_trunk(state)
    assert (found.layout, found.prefix) == ("moco", "module.encoder_q.")
    assert sorted(found.unused) == ["module.encoder_k.conv1.weight", "module.encoder_k.layer1.0.conv1.weight"]


def test_c4_detector_res5_is_found_in_its_roi_heads():
    w = torch.zeros(1)
    keys = ["backbone.stem.conv1.weight", "backbone.res2.0.conv1.weight", "roi_heads.res5.0.conv1.weight",
            "roi_heads.res5.norm.weight", "roi_heads.box_predictor.w"]
    state = {k: w for k in keys}
    found = find_trunk(state)
    assert sorted(found.trunk) == ["res2.0.conv1.weight", "res5.0.conv1.weight", "stem.conv1.weight"]
    assert "roi_heads.res5.norm.weight" in found.unused


def test_two_unknown_resnets_ask_for_a_prefix():
    w = torch.zeros(1)
    state = {f"{p}.{k}": w for p in ("student", "teacher") for k in ("conv1.weight", "layer1.0.conv1.weight")}
    with pytest.raises(UnknownLayoutError, match="REMOVE_PREFIX"):
        find_trunk(state)


def test_no_resnet_lists_the_first_keys():
    with pytest.raises(UnknownLayoutError, match="encoder.blocks.0.attn.qkv.weight"):
        find_trunk({"encoder.blocks.0.attn.qkv.weight": torch.zeros(1)})
