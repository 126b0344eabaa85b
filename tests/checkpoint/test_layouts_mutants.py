"""Layout detection and key mapping, each decision pinned by hand-written keys (the mutants of
benchmarks/mutation.py that the broader tests in test_layouts.py let through)."""

from __future__ import annotations

import pytest
import torch

from d2ssl.checkpoint.layouts import (
    UnknownLayoutError,
    detectron2_to_torchvision_key,
    find_trunk,
    is_detectron2_trunk_key,
    torchvision_to_detectron2_key,
)

W = torch.zeros(1)
TV_MARKERS = ("conv1.weight", "layer1.0.conv1.weight")
D2_MARKERS = ("stem.conv1.weight", "res2.0.conv1.weight")


def _state(prefix: str, keys=TV_MARKERS) -> dict[str, torch.Tensor]:
    return {prefix + k: W for k in keys}


@pytest.mark.parametrize(
    "prefix, layout",
    [("_feature_blocks.", "vissl"), ("module.encoder.", "jigclu"), ("encoder_q.", "moco"),
     ("module.base_encoder.", "moco-v3"), ("base_encoder.", "moco-v3"), ("", "torchvision"),
     ("module.", "torchvision")],
)
def test_each_torchvision_prefix_names_its_code_base(prefix, layout):
    found = find_trunk(_state(prefix))
    assert (found.layout, found.prefix) == (layout, prefix)
    assert found.trunk.keys() == {"stem.conv1.weight", "res2.0.conv1.weight"}
    assert found.source_keys == {"stem.conv1.weight": prefix + "conv1.weight",
                                 "res2.0.conv1.weight": prefix + "layer1.0.conv1.weight"}


@pytest.mark.parametrize(
    "prefix, layout",
    [("trunk.", "d2ssl"), ("module.trunk.", "d2ssl"), ("", "detectron2"),
     ("backbone.bottom_up.", "detectron2")],
)
def test_each_detectron2_prefix_names_its_code_base(prefix, layout):
    found = find_trunk(_state(prefix, D2_MARKERS))
    assert (found.layout, found.prefix) == (layout, prefix)
    assert sorted(found.trunk) == ["res2.0.conv1.weight", "stem.conv1.weight"]


def test_one_resnet_under_an_unknown_prefix_is_found_there():
    found = find_trunk(_state("student.backbone."))
    assert (found.layout, found.prefix) == ("torchvision", "student.backbone.")
    found = find_trunk(_state("ema.", D2_MARKERS))
    assert (found.layout, found.prefix) == ("detectron2", "ema.")


def test_a_prefix_must_end_at_a_dot():
    # "myconv1.weight" is not conv1 under a prefix "my": no ResNet.
    with pytest.raises(UnknownLayoutError, match="no ResNet found"):
        find_trunk({"myconv1.weight": W, "mylayer1.0.conv1.weight": W})


def test_a_prefix_needs_both_marker_keys():
    # conv1 under "a." and layer1 under "b.": neither prefix holds a ResNet.
    with pytest.raises(UnknownLayoutError, match="no ResNet found"):
        find_trunk({"a.conv1.weight": W, "b.layer1.0.conv1.weight": W})


def test_detectron2_names_win_over_torchvision_names():
    state = {**_state("teacher."), **_state("trunk.", D2_MARKERS)}
    found = find_trunk(state)
    assert (found.layout, found.prefix) == ("d2ssl", "trunk.")
    assert sorted(found.unused) == ["teacher.conv1.weight", "teacher.layer1.0.conv1.weight"]


def test_preferred_prefix_order_among_detectron2_resnets():
    # A d2ssl model whose checkpoint also holds an FPN-style copy: trunk. is the one listed first.
    state = {**_state("backbone.bottom_up.", D2_MARKERS), **_state("trunk.", D2_MARKERS)}
    assert find_trunk(state).prefix == "trunk."


def test_two_unknown_detectron2_resnets_name_their_prefixes():
    state = {**_state("student.", D2_MARKERS), **_state("teacher.", D2_MARKERS)}
    with pytest.raises(UnknownLayoutError, match=r"detectron2-named ResNets .*\['student.', 'teacher.'\]"):
        find_trunk(state)


def test_the_error_for_two_resnets_lists_the_first_five_keys():
    keys = [f"{p}.{k}" for p in ("s", "t", "u") for k in TV_MARKERS]
    with pytest.raises(UnknownLayoutError) as e:
        find_trunk({k: W for k in keys})
    assert f"(first keys: {keys[:5]})" in str(e.value)


def test_no_resnet_lists_exactly_the_first_eight_keys():
    keys = [f"head.{i}.weight" for i in range(10)]
    with pytest.raises(UnknownLayoutError) as e:
        find_trunk({k: W for k in keys})
    assert str(e.value).endswith(f"first keys: {keys[:8]}")


def test_classifier_is_kept_for_a_torchvision_layout_only_and_only_as_a_matrix():
    fc_w, fc_b = torch.ones(3, 4), torch.arange(3.0)
    found = find_trunk({**_state(""), "fc.weight": fc_w, "fc.bias": fc_b})
    assert found.classifier is not None
    assert found.classifier[0] is fc_w and found.classifier[1] is fc_b
    # A DataParallel copy keeps its classifier under the same prefix.
    found = find_trunk({**_state("module."), "module.fc.weight": fc_w, "module.fc.bias": fc_b})
    assert found.classifier is not None and found.classifier[1] is fc_b
    # VISSL's fc is a head of another layout, not torchvision's classifier.
    assert find_trunk({**_state("_feature_blocks."), "_feature_blocks.fc.weight": fc_w,
                       "_feature_blocks.fc.bias": fc_b}).classifier is None
    # A vector is not a classifier's weight; either half alone is no classifier.
    assert find_trunk({**_state(""), "fc.weight": fc_b, "fc.bias": fc_b}).classifier is None
    assert find_trunk({**_state(""), "fc.weight": fc_w}).classifier is None
    assert find_trunk({**_state(""), "fc.bias": fc_b}).classifier is None


def test_a_c4_res5_key_already_taken_from_the_backbone_stays_unused():
    first, second = torch.ones(1), torch.full((1,), 2.0)
    state = {**_state("backbone.", D2_MARKERS), "backbone.res5.0.conv1.weight": first,
             "roi_heads.res5.0.conv1.weight": second}
    found = find_trunk(state)
    assert found.trunk["res5.0.conv1.weight"] is first
    assert found.source_keys["res5.0.conv1.weight"] == "backbone.res5.0.conv1.weight"
    assert found.unused == {"roi_heads.res5.0.conv1.weight": second}


def test_roi_heads_res5_is_trunk_only_in_a_c4_detector():
    # Under an FPN detector (backbone.bottom_up.) roi_heads.res5 is not part of the trunk.
    state = {**_state("backbone.bottom_up.", D2_MARKERS), "roi_heads.res5.0.conv1.weight": W}
    found = find_trunk(state)
    assert "res5.0.conv1.weight" not in found.trunk
    assert list(found.unused) == ["roi_heads.res5.0.conv1.weight"]


def test_arrays_become_tensors_with_their_values():
    import numpy as np

    state = {"conv1.weight": np.arange(4.0).reshape(2, 2), "layer1.0.conv1.weight": np.ones(2)}
    found = find_trunk(state)
    assert isinstance(found.trunk["stem.conv1.weight"], torch.Tensor)
    assert found.trunk["stem.conv1.weight"].tolist() == [[0.0, 1.0], [2.0, 3.0]]


@pytest.mark.parametrize(
    "torchvision_key, detectron2_key",
    [("bn1.weight", "stem.conv1.norm.weight"), ("conv1.bias", "stem.conv1.bias"),
     ("layer4.2.conv2.weight", "res5.2.conv2.weight"),
     ("layer1.0.bn1.running_mean", "res2.0.conv1.norm.running_mean"),
     ("layer2.0.downsample.0.weight", "res3.0.shortcut.weight"),
     ("layer2.0.downsample.1.weight", "res3.0.shortcut.norm.weight"),
     ("layer3.11.bn2.bias", "res4.11.conv2.norm.bias")],
)
def test_more_key_renames_in_both_directions(torchvision_key, detectron2_key):
    assert torchvision_to_detectron2_key(torchvision_key) == detectron2_key
    assert detectron2_to_torchvision_key(detectron2_key) == torchvision_key


@pytest.mark.parametrize(
    "key, is_trunk",
    [("stem.conv1.weight", True), ("stem.conv1.norm.bias", True), ("res5.2.shortcut.norm.weight", True),
     ("res2.0.conv3.weight", True), ("res6.0.conv1.weight", False), ("res1.0.conv1.weight", False),
     ("stem.conv2.weight", False), ("res2.0.conv4.weight", False), ("linear.weight", False)],
)
def test_detectron2_trunk_keys(key, is_trunk):
    assert is_detectron2_trunk_key(key) is is_trunk
