# Faster R-CNN R50-C4 on Pascal VOC 07+12 trainval, tested on VOC 2007 test: MoCo's
# detection/configs/pascal_voc_R_50_C4_24k_moco.yaml (also VISSL's voc0712 benchmarks), i.e. the VOC07
# recipe of faster_rcnn_R50_C4_voc07.py with both trainval sets and 24k iterations, and MoCo's norm:
# Base-RCNN-C4-BN.yaml sets RESNETS.NORM "naiveSyncBN" (detectron2's NaiveSyncBatchNorm, statistics
# averaged over GPUs) for the trunk, res5 and the extra norm, where VISSL's voc07 yaml has "SyncBN".
# MoCo commit 7397dfe, detection/configs/.
from .faster_rcnn_R50_C4_voc07 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

dataloader.train.dataset.names = ("voc_2007_trainval", "voc_2012_trainval")
NORM = "naiveSyncBN"  # "SyncBN seems to cause larger variance for unknown reasons" (MoCo's comment)
model.backbone.stem.norm = NORM
model.backbone.stages.norm = NORM
model.roi_heads.res5.blocks.norm = NORM
model.roi_heads.res5.norm = NORM
# SOLVER: MAX_ITER 24000, STEPS (18000, 22000), WARMUP_ITERS 100.
lr_multiplier.scheduler.update(values=[1.0, 0.1, 0.01], milestones=[18000, 22000], num_updates=24000)
lr_multiplier.warmup_length = 100 / 24000
train.max_iter = 24000
train.output_dir = "output/detection/faster_rcnn_R50_C4_voc0712"
