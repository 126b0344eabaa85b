# Faster R-CNN R50-C4 on Pascal VOC 2007 trainval, tested on VOC 2007 test: VISSL's
# benchmark/object_detection/voc07/rn50_transfer_voc07_detectron2_e2e.yaml, built on MoCo's
# Base-RCNN-C4-BN.yaml: SyncBN everywhere with one more norm after res5 in the ROI heads (MoCo's
# Res5ROIHeadsExtraNorm), nothing frozen, precise BN, RGB input with ImageNet mean/std x255 and the
# stride in the 3x3 convolution, as the trunk was pretrained. VISSL's PIRL/NPID variant
# (voc07/pirl_npid) uses optimizer.lr=0.002 and a 1000-iteration warmup.
from detectron2.config import LazyCall as L
from detectron2.evaluation import PascalVOCDetectionEvaluator
from detectron2.model_zoo import get_config
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from d2ssl.modeling.roi_heads import res5_with_extra_norm

from ..common.train import train

# detectron2's Mask R-CNN C4 without its mask branch is its Faster R-CNN C4.
model = get_config("common/models/mask_rcnn_c4.py").model
model.roi_heads.mask_head = None
model.roi_heads.num_classes = 20
model.backbone.stem.norm = "SyncBN"
model.backbone.stages.update(depth=50, stride_in_1x1=False, norm="SyncBN")
model.backbone.freeze_at = 0  # MODEL.BACKBONE.FREEZE_AT: 0
model.roi_heads.res5.update(stride_in_1x1=False, norm="SyncBN")
model.roi_heads.res5 = L(res5_with_extra_norm)(blocks=model.roi_heads.res5, norm="SyncBN")
model.roi_heads.box_predictor.input_shape.channels = "${...res5.blocks.out_channels}"
# RPN.PRE_NMS_TOPK_TEST 6000, POST_NMS_TOPK_TEST 1000: detectron2's C4 defaults already.
model.input_format = "RGB"
model.pixel_mean = [123.675, 116.280, 103.530]
model.pixel_std = [58.395, 57.120, 57.375]

# INPUT.MIN_SIZE_TRAIN (480..800 step 32), MIN_SIZE_TEST 800; data from $DETECTRON2_DATASETS/VOC2007.
dataloader = get_config("common/data/coco.py").dataloader
dataloader.train.dataset.names = "voc_2007_trainval"
dataloader.train.mapper.update(image_format="RGB", use_instance_mask=False)
dataloader.train.mapper.augmentations[0].short_edge_length = tuple(range(480, 801, 32))
dataloader.train.total_batch_size = 16  # SOLVER.IMS_PER_BATCH: 16
dataloader.test.dataset.names = "voc_2007_test"
dataloader.test.mapper.augmentations[0].short_edge_length = 800
dataloader.evaluator = L(PascalVOCDetectionEvaluator)(dataset_name="${..test.dataset.names}")

# SOLVER: BASE_LR 0.02, MAX_ITER 12500, STEPS (9500,), WARMUP_ITERS 100.
optimizer = get_config("common/optim.py").SGD
optimizer.lr = 0.02
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=[9500], num_updates=12500),
    warmup_length=100 / 12500,
    warmup_factor=0.001,
)

# Detection starts from train.init_checkpoint (see faster_rcnn_R50_FPN_coco.py for what it accepts).
del train["weights_init"]
train.update(
    max_iter=12500,
    init_checkpoint="output/jigsaw_R50/model_final.pth",
    reference_world_size=0,  # IMS_PER_BATCH is a total over all GPUs in detectron2
    eval_period=0,
    precise_bn=dict(enabled=True, num_iter=200),  # TEST.PRECISE_BN
    checkpointer=dict(period=5000, max_to_keep=3),
    output_dir="output/detection/faster_rcnn_R50_C4_voc07",
)
