# Faster R-CNN R50-FPN fine-tuned on COCO from a self-supervised trunk, with the Jigsaw Clustering
# detection protocol (dvlab-research/JigsawClustering detection/configs/R50-JigClu.yaml), itself
# MoCo's recipe for FPN: SyncBN in the trunk, the FPN and a 4conv1fc box head, nothing frozen, precise
# BN before evaluation, and the input convention the trunk was pretrained with (RGB, ImageNet mean/std
# x255, stride in the 3x3 convolution). JigClu reports 39.3 box AP on coco_2017_val for its R50.
#
#   python tools/train_detection.py --config-file configs/detection/faster_rcnn_R50_FPN_coco.py \
#       --num-gpus 8 train.init_checkpoint=output/jigclu_R50/model_final.pth
#
# train.init_checkpoint may be any pretrained checkpoint d2ssl recognises (a d2ssl run's .pth,
# torchvision, VISSL, JigClu or MoCo files: converted on the fly) or a .pkl written by
# tools/convert_checkpoint.py --to detectron2. Built on detectron2's model zoo LazyConfig pieces.
from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from ..common.train import train

# detectron2's Mask R-CNN FPN without its mask branch is its Faster R-CNN FPN.
model = get_config("common/models/mask_rcnn_fpn.py").model
model.roi_heads.update(mask_in_features=None, mask_pooler=None, mask_head=None)
# The trunk as pretrained (d2ssl.modeling.backbone: torchvision-style bottleneck), trained whole.
model.backbone.bottom_up.stem.norm = "SyncBN"
model.backbone.bottom_up.stages.update(depth=50, stride_in_1x1=False, norm="SyncBN")
model.backbone.bottom_up.freeze_at = 0  # MODEL.BACKBONE.FREEZE_AT: 0
model.backbone.norm = "SyncBN"  # FPN.NORM
# ROI_BOX_HEAD: FastRCNNConvFCHead, NUM_CONV 4, NUM_FC 1, NORM SyncBN.
model.roi_heads.box_head.update(conv_dims=[256] * 4, fc_dims=[1024], conv_norm="SyncBN")
model.proposal_generator.pre_nms_topk = (2000, 6000)  # RPN.PRE_NMS_TOPK_TEST: 6000
# INPUT.FORMAT RGB, PIXEL_MEAN / PIXEL_STD: ImageNet statistics x255, as the trunk saw them.
model.input_format = "RGB"
model.pixel_mean = [123.675, 116.280, 103.530]
model.pixel_std = [58.395, 57.120, 57.375]

# coco_2017_train / coco_2017_val from $DETECTRON2_DATASETS (detectron2's built-in registrations),
# shorter side 640..800 in training, 800 in test, COCOEvaluator.
dataloader = get_config("common/data/coco.py").dataloader
dataloader.train.mapper.update(image_format="RGB", use_instance_mask=False)
dataloader.train.total_batch_size = 8  # SOLVER.IMS_PER_BATCH: 8

# SOLVER: BASE_LR 0.01, MAX_ITER 180000, STEPS (120000, 160000), detectron2's 1000-iteration linear
# warmup: detectron2's 1x schedule (16 x 90k images) at half the batch.
optimizer = get_config("common/optim.py").SGD
optimizer.lr = 0.01
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01], milestones=[120000, 160000], num_updates=180000
    ),
    warmup_length=1000 / 180000,
    warmup_factor=0.001,
)

# Detection starts from train.init_checkpoint; the pretraining-only weights_init does not apply.
del train["weights_init"]
train.update(
    max_iter=180000,
    init_checkpoint="output/jigclu_R50/model_final.pth",
    # IMS_PER_BATCH is a total over all GPUs in detectron2: no linear scaling.
    reference_world_size=0,
    eval_period=0,  # evaluate once, at the end (TEST.EVAL_PERIOD: 0)
    # TEST.PRECISE_BN: recompute BN statistics over 200 batches (detectron2's NUM_ITER) before evaluating.
    precise_bn=dict(enabled=True, num_iter=200),
    checkpointer=dict(period=10000, max_to_keep=3),
    output_dir="output/detection/faster_rcnn_R50_FPN_coco",
)
