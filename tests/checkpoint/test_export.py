"""Export to detectron2 and torchvision, and the round trip torchvision -> d2ssl -> detectron2."""

from __future__ import annotations

import pickle
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import instantiate
from resnet_helpers import randomize_batchnorm, torchvision_resnet, torchvision_stages
from tolerances import assert_equal

from d2ssl.checkpoint import convert_checkpoint, load_pretrained_weights, to_detectron2, to_torchvision
from d2ssl.checkpoint.export import ExportError, torchvision_arch
from d2ssl.checkpoint.layouts import find_trunk
from d2ssl.engine.checkpointer import AtomicCheckpointer
from d2ssl.engine.train_loop import setup_config
from d2ssl.modeling.backbone import build_resnet_trunk
from d2ssl.modeling.meta_arch import SSLMetaArch

REPO = Path(__file__).resolve().parents[2]
STAGES = ("res2", "res3", "res4", "res5")


@pytest.fixture(scope="module")
def tv_resnet50():
    return torchvision_resnet("resnet50", seed=2)


@pytest.fixture(scope="module")
def detectron2_file(tv_resnet50, tmp_path_factory) -> Path:
    """torchvision ResNet-50 -> torchvision file -> d2ssl model -> d2ssl checkpoint -> detectron2 .pkl."""
    root = tmp_path_factory.mktemp("round_trip")
    torch.save(tv_resnet50.state_dict(), root / "torchvision.pth")
    torch.manual_seed(11)
    model = SSLMetaArch(build_resnet_trunk(50))
    load_pretrained_weights(model, str(root / "torchvision.pth"))
    AtomicCheckpointer(model, str(root)).save("model_final")
    convert_checkpoint(str(root / "model_final.pth"), str(root / "model_final.pkl"), to="detectron2")
    return root / "model_final.pkl"


def load_detector(config: str, weights: Path):
    detector = instantiate(setup_config(str(REPO / "configs" / "detection" / f"{config}.py")).model)
    DetectionCheckpointer(detector).load(str(weights))
    return detector.eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_torchvision_to_d2ssl_to_detectron2_fpn_backbone_outputs_match(detectron2_file, tv_resnet50, images):
    detector = load_detector("faster_rcnn_R50_FPN_coco", detectron2_file)
    with torch.no_grad():
        got, want = detector.backbone.bottom_up(images), torchvision_stages(tv_resnet50, images)
    for name in STAGES:  # the same convolutions and eval-mode batch_norm calls in the same order
        assert_equal(got[name], want[name], name)


def test_torchvision_to_d2ssl_to_detectron2_c4_backbone_and_res5_match(detectron2_file, tv_resnet50, images):
    detector = load_detector("faster_rcnn_R50_C4_voc07", detectron2_file)
    with torch.no_grad():
        want = torchvision_stages(tv_resnet50, images)
        res4 = detector.backbone(images)["res4"]
        res5 = detector.roi_heads.res5[:-1](res4)  # the blocks, without MoCo's extra norm (new weights)
    assert_equal(res4, want["res4"], "res4")
    assert_equal(res5, want["res5"], "res5")


def test_detectron2_pickle_is_in_model_zoo_format(detectron2_file, tv_resnet50):
    with open(detectron2_file, "rb") as f:
        data = pickle.load(f)
    assert data["__author__"] == "d2ssl" and data["matching_heuristics"] is True
    model = data["model"]
    assert all(isinstance(v, np.ndarray) for v in model.values())
    last_bn = tv_resnet50.layer4[2].bn3
    np.testing.assert_array_equal(model["res5.2.conv3.norm.running_var"], last_bn.running_var)
    shortcut_bn = tv_resnet50.layer1[0].downsample[1]
    np.testing.assert_array_equal(model["res2.0.shortcut.norm.running_mean"], shortcut_bn.running_mean)


def test_d2ssl_trunk_exports_to_torchvision_for_a_strict_load(images):
    torch.manual_seed(4)
    trunk = randomize_batchnorm(build_resnet_trunk(50, out_features=STAGES), seed=4).eval()
    state_dict, arch = to_torchvision({"trunk." + k: v for k, v in trunk.state_dict().items()})
    assert arch == "resnet50"
    resnet = torchvision.models.resnet50()
    resnet.load_state_dict(state_dict, strict=True)
    resnet.eval()
    with torch.no_grad():
        got, want = torchvision_stages(resnet, images), trunk(images)
        logits = resnet(images)
    for name in STAGES:  # the same convolutions and eval-mode batch_norm calls in the same order
        assert_equal(got[name], want[name], name)
    assert torch.count_nonzero(logits) == 0  # no classifier in an SSL trunk: a zero fc


def test_torchvision_classifier_is_kept_and_other_class_counts_get_a_zero_fc():
    resnet = torchvision_resnet("resnet18", seed=3)
    state_dict, arch = to_torchvision(resnet.state_dict())
    assert arch == "resnet18" and torch.equal(state_dict["fc.weight"], resnet.fc.weight)
    state_dict, _ = to_torchvision(resnet.state_dict(), num_classes=10)
    assert state_dict["fc.weight"].shape == (10, 512) and torch.count_nonzero(state_dict["fc.weight"]) == 0
    torchvision.models.resnet18(num_classes=10).load_state_dict(state_dict, strict=True)


@pytest.mark.parametrize("depth", [18, 34, 101, 152])
def test_every_torchvision_depth_is_recognised(depth):
    with torch.device("meta"):
        trunk = build_resnet_trunk(depth)
        state_dict, arch = to_torchvision(trunk.state_dict())
        assert arch == f"resnet{depth}"
        getattr(torchvision.models, arch)().load_state_dict(state_dict, strict=True)


def test_torchvision_wide_resnet_round_trips():
    with torch.device("meta"):
        state_dict, arch = to_torchvision(torchvision.models.wide_resnet50_2().state_dict())
        assert arch == "wide_resnet50_2"
        torchvision.models.wide_resnet50_2().load_state_dict(state_dict, strict=True)


def test_vissl_style_wide_or_narrow_trunks_are_refused_for_torchvision():
    with torch.device("meta"):
        wide = build_resnet_trunk(50, width_multiplier=2).state_dict()
    narrow = build_resnet_trunk(18, base_channels=16).state_dict()
    with pytest.raises(ExportError, match="128-channel stem.*no torchvision counterpart.*--to detectron2"):
        to_torchvision(wide)
    with pytest.raises(ExportError, match="16-channel stem"):
        torchvision_arch(find_trunk(narrow).trunk)
    assert set(to_detectron2(narrow)["model"]) == set(narrow)  # detectron2 takes any width


def test_detectron2_output_must_be_a_pickle(tmp_path, tv_resnet50):
    torch.save(tv_resnet50.state_dict(), tmp_path / "tv.pth")
    with pytest.raises(ExportError, match=r"must end with \.pkl"):
        convert_checkpoint(str(tmp_path / "tv.pth"), str(tmp_path / "out.pth"), to="detectron2")


def test_convert_checkpoint_tool(tmp_path, monkeypatch, capsys):
    resnet = torchvision_resnet("resnet18", seed=8)
    state = {"epoch": 200, "state_dict": {"module.encoder." + k: v for k, v in resnet.state_dict().items()
                                          if not k.startswith("fc.")}}
    torch.save(state, tmp_path / "jigclu.pth.tar")
    argv = [str(tmp_path / "jigclu.pth.tar"), str(tmp_path / "r18.pth"), "--to", "torchvision"]
    monkeypatch.setattr(sys, "argv", ["convert_checkpoint.py", *argv])
    runpy.run_path(str(REPO / "tools" / "convert_checkpoint.py"), run_name="__main__")
    printed = capsys.readouterr().out
    assert "jigclu layout" in printed and "torchvision.models.resnet18()" in printed
    exported = torch.load(tmp_path / "r18.pth", weights_only=True)
    target = torchvision.models.resnet18()
    target.load_state_dict(exported, strict=True)
    assert torch.equal(target.layer4[1].bn2.running_var, resnet.layer4[1].bn2.running_var)
