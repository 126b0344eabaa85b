# The tiny detection fine-tuning of faster_rcnn_FPN_pasted_coco.py on the same kind of images written
# in Pascal VOC layout, evaluated by detectron2's PascalVOCDetectionEvaluator (VOC2007 11-point AP).
from detectron2.config import LazyCall as L
from detectron2.evaluation import PascalVOCDetectionEvaluator

from .faster_rcnn_FPN_pasted_coco import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

dataloader.train.dataset.names.update(name="pasted_voc_trainval", root="datasets/pasted_voc", format="voc",
                                      split="trainval")
dataloader.test.dataset.names.update(name="pasted_voc_test", root="datasets/pasted_voc", format="voc",
                                     split="test")
dataloader.evaluator = L(PascalVOCDetectionEvaluator)(dataset_name="${..test.dataset.names}")
train.output_dir = "output/tiny_detection_voc"
