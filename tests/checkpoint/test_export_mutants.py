"""Export rules that benchmarks/mutation.py found untested (mutants of d2ssl/checkpoint/export.py that
survived the other tests): the architecture read from block counts, block type and widths, and its
refusal messages; the conversion's folders, sidecar, pickle refusal and BN counters. Trunks here are
dicts of tensor shapes written by hand (only names and the first dimension matter), so the expected name
comes from torchvision's table, not from the code under test."""

from __future__ import annotations

import argparse
import hashlib

import pytest
import torch
import torchvision

from d2ssl.checkpoint.export import ExportError, convert_checkpoint, to_torchvision, torchvision_arch
from d2ssl.checkpoint.load import WeightsLoadError
from d2ssl.modeling.backbone import build_resnet_trunk


def _trunk(blocks: tuple[int, int, int, int], bottleneck: bool, stem: int = 64, inner: int = 64) -> dict:
    trunk = {"stem.conv1.weight": torch.empty(stem, 1)}
    for stage, count in zip(range(2, 6), blocks):
        for i in range(count):
            trunk[f"res{stage}.{i}.conv1.weight"] = torch.empty(inner, 1)
            trunk[f"res{stage}.{i}.conv2.weight"] = torch.empty(inner, 1)
            if bottleneck:
                trunk[f"res{stage}.{i}.conv3.weight"] = torch.empty(4 * inner, 1)
    return trunk


@pytest.mark.parametrize("blocks, bottleneck, name", [
    ((2, 2, 2, 2), False, "resnet18"),
    ((3, 4, 6, 3), False, "resnet34"),
    ((3, 4, 6, 3), True, "resnet50"),
    ((3, 4, 23, 3), True, "resnet101"),
    ((3, 8, 36, 3), True, "resnet152"),
])
def test_block_counts_and_type_name_the_torchvision_resnet(blocks, bottleneck, name):
    assert torchvision_arch(_trunk(blocks, bottleneck)) == name


@pytest.mark.parametrize("blocks, bottleneck, kind", [
    ((1, 1, 1, 1), False, "basic"),
    ((2, 2, 2, 2), True, "bottleneck"),  # resnet18's counts with bottlenecks: no such torchvision model
    ((3, 4, 23, 3), False, "basic"),  # resnet101's counts with basic blocks
])
def test_unknown_block_layouts_are_refused_naming_counts_and_type(blocks, bottleneck, kind):
    counts = ", ".join(map(str, blocks))
    refusal = rf"no torchvision ResNet has \[{counts}\] {kind} blocks in res2\.\.res5"
    with pytest.raises(ExportError, match=refusal):
        torchvision_arch(_trunk(blocks, bottleneck))


def test_missing_stages_count_as_zero_blocks():
    trunk = {k: v for k, v in _trunk((2, 2, 2, 2), False).items() if not k.startswith("res5")}
    with pytest.raises(ExportError, match=r"\[2, 2, 2, 0\] basic"):
        torchvision_arch(trunk)


@pytest.mark.parametrize("blocks, name", [
    ((3, 4, 6, 3), "wide_resnet50_2"), ((3, 4, 23, 3), "wide_resnet101_2")])
def test_double_width_bottlenecks_are_torchvisions_wide_resnets(blocks, name):
    assert torchvision_arch(_trunk(blocks, True, inner=128)) == name


@pytest.mark.parametrize("blocks, bottleneck, stem, inner", [
    ((3, 8, 36, 3), True, 64, 128),  # torchvision has no wide_resnet152_2
    ((2, 2, 2, 2), False, 64, 128),  # nor a wide basic-block ResNet
    ((3, 4, 6, 3), True, 128, 128),  # VISSL's width_multiplier 2: the stem widens too
    ((3, 4, 6, 3), True, 64, 32),
])
def test_other_widths_are_refused_naming_stem_and_inner_channels(blocks, bottleneck, stem, inner):
    with pytest.raises(ExportError, match=rf"has a {stem}-channel stem and {inner}-channel first blocks"):
        torchvision_arch(_trunk(blocks, bottleneck, stem=stem, inner=inner))


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("in") / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return str(path)


def test_conversion_creates_missing_folders_and_writes_a_matching_sidecar(resnet18_file, tmp_path):
    out = tmp_path / "new" / "sub" / "r18_d2.pkl"
    summary = convert_checkpoint(resnet18_file, str(out), to="detectron2")
    assert summary.startswith(f"{resnet18_file} (torchvision layout") and f"-> {out} (detectron2)" in summary
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert (tmp_path / "new" / "sub" / "r18_d2.pkl.sha256").read_text() == f"{digest}  r18_d2.pkl\n"


def test_conversion_into_the_current_folder(resnet18_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    convert_checkpoint(resnet18_file, "r18_tv.pth", to="torchvision")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r18_tv.pth", "r18_tv.pth.sha256"]
    with pytest.raises(ExportError, match=r"--to must be one of \('detectron2', 'torchvision'\), got 'onnx'"):
        convert_checkpoint(resnet18_file, "x.onnx", to="onnx")


def test_a_checkpoint_holding_python_objects_is_refused_unless_allowed(resnet18_file, tmp_path):
    state = torch.load(resnet18_file, weights_only=True)
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=0.1)}, tmp_path / "with_args.pth")
    with pytest.raises(WeightsLoadError, match=r"argparse\.Namespace.*--allow-pickle"):
        convert_checkpoint(str(tmp_path / "with_args.pth"), str(tmp_path / "out.pth"), to="torchvision")
    assert not (tmp_path / "out.pth").exists()
    convert_checkpoint(str(tmp_path / "with_args.pth"), str(tmp_path / "out.pth"), to="torchvision",
                       allow_pickle=True)
    assert (tmp_path / "out.pth").exists()


def test_batch_norm_counters_absent_from_the_source_start_at_zero():
    with torch.device("meta"):
        trunk = build_resnet_trunk(18).state_dict()
    state_dict, _ = to_torchvision({k: v for k, v in trunk.items() if not k.endswith("num_batches_tracked")})
    counters = {k: v for k, v in state_dict.items() if k.endswith("num_batches_tracked")}
    assert len(counters) == 20  # bn1 + 2 per basic block * 8 + 3 downsample BNs
    assert all(v.item() == 0 and v.dtype == torch.long for v in counters.values())


def test_a_classifier_of_another_class_count_is_replaced_by_zeros_of_that_count(resnet18_file):
    state = torch.load(resnet18_file, weights_only=True)  # torchvision's 1000-class fc on 512 features
    state_dict, _ = to_torchvision(state, num_classes=512)
    assert state_dict["fc.weight"].shape == (512, 512) and torch.count_nonzero(state_dict["fc.weight"]) == 0
    kept, _ = to_torchvision(state, num_classes=1000)
    assert torch.equal(kept["fc.weight"], state["fc.weight"])
    assert torch.equal(kept["fc.bias"], state["fc.bias"])
