"""Detection transfer: a d2ssl checkpoint initialises detectron2 detectors that fine-tune and evaluate
on the CPU, with detectron2's own trainer, data sets (COCO and VOC layouts) and evaluators."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from detectron2.config import instantiate
from detectron2.layers import FrozenBatchNorm2d, NaiveSyncBatchNorm
from detectron2.utils.events import EventStorage
from torch import nn

from d2ssl.engine.checkpointer import AtomicCheckpointer
from d2ssl.engine.detection import prepare_init_checkpoint, train_detector
from d2ssl.engine.train_loop import do_train, setup_config
from d2ssl.modeling.backbone import build_resnet_trunk
from d2ssl.modeling.roi_heads import res5_with_extra_norm
from d2ssl.utils.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]
TINY_DETECTION = REPO / "configs" / "detection" / "tiny"


def tiny_detection_config(fmt: str, tmp_path: Path, *overrides: str):
    """The tiny detection config with its data sets (8 training, 4 test images, registered under names
    of their own) and outputs under tmp_path."""
    data, tag = tmp_path / f"pasted_{fmt}", tmp_path.name
    return setup_config(str(TINY_DETECTION / f"faster_rcnn_FPN_pasted_{fmt}.py"), [
        f"train.output_dir={tmp_path / 'detection'}",
        f"dataloader.train.dataset.names.root={data}", "dataloader.train.dataset.names.num_images=8",
        f"dataloader.train.dataset.names.name={fmt}_train_{tag}",
        f"dataloader.test.dataset.names.root={data}", "dataloader.test.dataset.names.num_images=4",
        f"dataloader.test.dataset.names.name={fmt}_test_{tag}",
        "train.precise_bn.num_iter=2", *overrides,
    ])


def test_pretrained_checkpoint_fine_tunes_a_detector_and_coco_evaluation_gives_numbers(tmp_path, tiny_config):
    pretrain = tiny_config("jigsaw", "train.max_iter=2")
    do_train(pretrain)
    checkpoint = Path(pretrain.train.output_dir) / "model_final.pth"

    # After 6 steps no score passes detectron2's 0.05 threshold; with all boxes kept COCO AP is a number.
    cfg = tiny_detection_config("coco", tmp_path, "train.max_iter=6", f"train.init_checkpoint={checkpoint}",
                                "model.roi_heads.box_predictor.test_score_thresh=0.0", "train.log_period=1")
    results = train_detector(cfg)

    for key in ("bbox/AP", "bbox/AP50", "bbox/AP75"):
        assert math.isfinite(results[key]) and 0.0 <= results[key] <= 100.0, (key, results[key])
    for key in ("loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"):
        assert math.isfinite(results[key]), (key, results[key])
    # The d2ssl checkpoint was converted once for detectron2, and training wrote a final detector.
    assert (tmp_path / "detection" / "model_final_detectron2.pkl").is_file()
    assert (tmp_path / "detection" / "model_final.pth").is_file()
    # It fine-tuned the pretrained trunk (6 small steps away from it, not from a fresh initialisation,
    # which is ~1.4 times the weights' norm away) and trained the heads, whose loss fell.
    pretrained = torch.load(checkpoint, weights_only=True)["model"]
    final = torch.load(tmp_path / "detection" / "model_final.pth", weights_only=True)["model"]
    for key in ("stem.conv1.weight", "res5.1.conv2.weight"):
        start, end = pretrained[f"trunk.{key}"], final[f"backbone.bottom_up.{key}"]
        assert (end - start).norm() < 0.1 * start.norm(), key  # measured: 0.017 (stem), 0.001 (res5)
    losses = [r["loss_cls"] for r in read_metrics(cfg.train.output_dir) if "loss_cls" in r]
    assert len(losses) == 6 and losses[-1] < 0.75 * losses[0], losses  # measured: 1.28 -> 0.67


def test_init_checkpoint_puts_the_pretrained_trunk_in_the_fpn_backbone(tmp_path):
    torch.manual_seed(3)
    trunk = build_resnet_trunk(18, base_channels=16, out_features=("res2", "res3", "res4", "res5"))
    with torch.no_grad():  # non-trivial BN statistics, which must travel too
        for m in trunk.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    holder = nn.Module()
    holder.trunk = trunk  # a d2ssl meta-architecture keeps its trunk under "trunk."
    AtomicCheckpointer(holder, str(tmp_path / "pretrain")).save("model_final")

    cfg = tiny_detection_config("coco", tmp_path)
    detector = instantiate(cfg.model)
    path = prepare_init_checkpoint(str(tmp_path / "pretrain" / "model_final.pth"), str(tmp_path / "out"))
    assert path.endswith(".pkl")
    AtomicCheckpointer(detector).load(path)
    loaded = detector.backbone.bottom_up.state_dict()
    for key, value in trunk.state_dict().items():
        assert torch.equal(loaded[key], value), key
    # A whole detector is loaded as it is, not converted.
    AtomicCheckpointer(detector, str(tmp_path / "detector")).save("model_final")
    whole = str(tmp_path / "detector" / "model_final.pth")
    assert prepare_init_checkpoint(whole, str(tmp_path / "out")) == whole


def test_frozen_trunk_transfer_keeps_the_pretrained_weights_and_statistics(tmp_path):
    # The demo's detection setting (scripts/demo.sh): freeze_at=5 freezes stem and res2-res5, BatchNorm
    # statistics included; FPN and heads train (precise BN recomputes only their statistics).
    torch.manual_seed(5)
    trunk = build_resnet_trunk(18, base_channels=16, out_features=("res2", "res3", "res4", "res5"))
    with torch.no_grad():
        for m in trunk.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    holder = nn.Module()
    holder.trunk = trunk
    AtomicCheckpointer(holder, str(tmp_path / "pretrain")).save("model_final")

    cfg = tiny_detection_config("coco", tmp_path, "train.max_iter=3", "model.backbone.bottom_up.freeze_at=5",
                                f"train.init_checkpoint={tmp_path / 'pretrain' / 'model_final.pth'}")
    detector = instantiate(cfg.model)
    bottom_up = detector.backbone.bottom_up
    assert not any(p.requires_grad for p in bottom_up.parameters())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in bottom_up.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in bottom_up.modules()) > 10
    assert any(p.requires_grad for p in detector.backbone.parameters())  # the FPN's

    train_detector(cfg)
    AtomicCheckpointer(detector).load(str(tmp_path / "detection" / "model_final.pth"))
    trained = detector.backbone.state_dict()
    for key, value in trunk.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        assert torch.equal(trained[f"bottom_up.{key}"], value), key


def test_voc_layout_fine_tunes_and_evaluates_with_the_pascal_voc_evaluator(tmp_path):
    cfg = tiny_detection_config("voc", tmp_path, "train.max_iter=3", "train.init_checkpoint=",
                                "model.roi_heads.box_predictor.test_score_thresh=0.0", "train.log_period=1")
    results = train_detector(cfg)
    for key in ("bbox/AP", "bbox/AP50", "bbox/AP75"):
        assert math.isfinite(results[key]) and 0.0 <= results[key] <= 100.0, (key, results[key])
    # The VOC annotations reached the heads: detectron2 adds every ground-truth box to the proposals, so
    # each image gives foreground samples and a box regression loss (0 and 0 if the boxes were lost).
    records = [r for r in read_metrics(cfg.train.output_dir) if "roi_head/num_fg_samples" in r]
    assert len(records) == 3, records
    assert all(r["roi_head/num_fg_samples"] >= 1 and r["loss_box_reg"] > 0 for r in records), records


def test_syncbn_detector_trains_in_one_cpu_process(tmp_path):
    cfg = tiny_detection_config("coco", tmp_path)
    detector = instantiate(cfg.model).train()
    sync_bns = [m for m in detector.modules() if isinstance(m, nn.SyncBatchNorm)]
    assert len(sync_bns) > 20  # trunk, FPN and box head, as the protocol
    batch = next(iter(instantiate(cfg.dataloader.train)))
    before = sync_bns[0].running_mean.clone()
    with EventStorage():
        losses = detector(batch)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert not torch.equal(sync_bns[0].running_mean, before)  # statistics of this batch, as plain BN


def test_res5_with_extra_norm_normalises_the_res5_output():
    torch.manual_seed(0)
    blocks = [nn.Conv2d(4, 8, 1), nn.Conv2d(8, 8, 1)]  # out_channels, as detectron2's blocks
    res5 = res5_with_extra_norm(blocks, "BN").eval()
    x = torch.randn(2, 4, 3, 3)
    with torch.no_grad():
        res5.norm.running_mean.fill_(1.0)
        expected = res5.norm(blocks[1](blocks[0](x)))
        assert list(dict(res5.named_children())) == ["0", "1", "norm"]
        assert torch.equal(res5(x), expected)  # the same modules called in the same order


@pytest.mark.parametrize(
    "name, roi_heads, datasets",
    [
        ("faster_rcnn_R50_FPN_coco", "StandardROIHeads", "coco_2017_train"),
        ("faster_rcnn_R50_FPN_voc0712", "StandardROIHeads", ["voc_2007_trainval", "voc_2012_trainval"]),
        ("faster_rcnn_R50_C4_voc07", "Res5ROIHeads", "voc_2007_trainval"),
        ("faster_rcnn_R50_C4_voc0712", "Res5ROIHeads", ["voc_2007_trainval", "voc_2012_trainval"]),
    ],
)
def test_r50_configs_follow_the_transfer_protocol(name, roi_heads, datasets):
    cfg = setup_config(str(REPO / "configs" / "detection" / f"{name}.py"))
    assert cfg.dataloader.train.dataset.names == datasets
    mapper = cfg.dataloader.train.mapper
    assert mapper.image_format == "RGB" and not mapper.use_instance_mask
    detector = instantiate(cfg.model)
    assert type(detector.roi_heads).__name__ == roi_heads and not detector.roi_heads.mask_on
    assert detector.input_format == "RGB"
    torch.testing.assert_close(detector.pixel_mean.flatten(), torch.tensor([123.675, 116.28, 103.53]))
    torch.testing.assert_close(detector.pixel_std.flatten(), torch.tensor([58.395, 57.12, 57.375]))
    backbone = detector.backbone.bottom_up if hasattr(detector.backbone, "bottom_up") else detector.backbone
    # Stride in the 3x3 convolution (torchvision-style, as the SSL trunks), nothing frozen, SyncBN
    # (MoCo's VOC 07+12 C4 yaml: detectron2's "naiveSyncBN", its Base-RCNN-C4-BN.yaml).
    assert backbone.res3[0].conv1.stride == (1, 1) and backbone.res3[0].conv2.stride == (2, 2)
    assert all(p.requires_grad for p in detector.parameters())
    sync = NaiveSyncBatchNorm if name == "faster_rcnn_R50_C4_voc0712" else nn.SyncBatchNorm
    norm_types = (nn.BatchNorm2d, nn.SyncBatchNorm, FrozenBatchNorm2d)
    norms = [m for m in detector.modules() if isinstance(m, norm_types)]
    assert norms and all(isinstance(m, sync) for m in norms)
    if roi_heads == "Res5ROIHeads":
        assert isinstance(detector.roi_heads.res5.norm, sync)  # MoCo's extra norm after res5
        assert detector.roi_heads.res5[0].conv2.stride == (2, 2)
