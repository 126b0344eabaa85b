# Faster R-CNN R50-FPN on Pascal VOC 07+12 trainval, tested on VOC 2007 test: JigClu's
# detection/configs/voc-R50-JigClu.yaml, i.e. the COCO recipe (faster_rcnn_R50_FPN_coco.py) with 20
# classes, VOC image sizes and a 24k-iteration schedule.
from detectron2.config import LazyCall as L
from detectron2.evaluation import PascalVOCDetectionEvaluator

from .faster_rcnn_R50_FPN_coco import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.roi_heads.num_classes = 20
# INPUT.MIN_SIZE_TRAIN (480..800 step 32), MIN_SIZE_TEST 800.
dataloader.train.dataset.names = ("voc_2007_trainval", "voc_2012_trainval")
dataloader.train.mapper.augmentations[0].short_edge_length = tuple(range(480, 801, 32))
dataloader.test.dataset.names = "voc_2007_test"
dataloader.evaluator = L(PascalVOCDetectionEvaluator)(dataset_name="${..test.dataset.names}")

# SOLVER: MAX_ITER 24000, STEPS (18000, 22000), WARMUP_ITERS 100 (batch 8, lr 0.01 as for COCO).
lr_multiplier.scheduler.update(milestones=[18000, 22000], num_updates=24000)
lr_multiplier.warmup_length = 100 / 24000
train.max_iter = 24000
train.checkpointer.period = 5000
train.output_dir = "output/detection/faster_rcnn_R50_FPN_voc0712"
