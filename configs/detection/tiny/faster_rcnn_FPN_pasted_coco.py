# CPU-sized detection fine-tuning for the demo and the tests: the COCO FPN recipe
# (../faster_rcnn_R50_FPN_coco.py: SyncBN everywhere, 4conv1fc box head, RGB ImageNet input, precise BN)
# on the tiny trunk (configs/common/models.py TINY: ResNet-18, 16 stem channels), narrower FPN and
# heads, and a small COCO-format set of Fashion-MNIST trousers, sandals and bags pasted on
# scikit-image photographs (d2ssl.data.synthetic_detection), 128 px images, created on first use.
#
#   python tools/train_detection.py --config-file configs/detection/tiny/faster_rcnn_FPN_pasted_coco.py \
#       train.init_checkpoint=output/tiny_jigsaw/model_final.pth
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from d2ssl.data.synthetic_detection import pasted_detection_set

from ...common.models import tiny_trunk
from ..faster_rcnn_R50_FPN_coco import dataloader, lr_multiplier, model, optimizer, train

NUM_CLASSES = 3
FPN_CHANNELS = 64

model.backbone.bottom_up = tiny_trunk()
model.backbone.bottom_up.update(norm="SyncBN", out_features=["res2", "res3", "res4", "res5"])
model.backbone.out_channels = FPN_CHANNELS
model.proposal_generator.head.in_channels = FPN_CHANNELS
# Objects are 40-85 px on 128 px images: anchors one octave smaller than COCO's 32..512.
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
# At most 3 objects per image: far fewer proposals and sampled ROIs than COCO's.
model.proposal_generator.update(batch_size_per_image=64, pre_nms_topk=(200, 200), post_nms_topk=(100, 50))
model.roi_heads.update(num_classes=NUM_CLASSES, batch_size_per_image=32)
# Still 4conv1fc with SyncBN, narrower (the 4 convolutions over every ROI dominate the CPU time).
model.roi_heads.box_head.input_shape.channels = FPN_CHANNELS
model.roi_heads.box_head.update(conv_dims=[32] * 4, fc_dims=[128])
model.roi_heads.box_predictor.input_shape.channels = 128

dataloader.train.dataset.names = L(pasted_detection_set)(
    name="pasted_coco_train", root="datasets/pasted_coco", num_images=64, format="coco", seed=0,
    split="train", image_size=(128, 128), classes=(1, 5, 8), object_split="train",
)
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=(112, 128, 144), sample_style="choice", max_size=256),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.train.total_batch_size = 4
dataloader.train.num_workers = 0
# Held-out images and objects: another seed, Fashion-MNIST's test split.
dataloader.test.dataset.names = L(pasted_detection_set)(
    name="pasted_coco_val", root="datasets/pasted_coco", num_images=16, format="coco", seed=1,
    split="val", image_size=(128, 128), classes=(1, 5, 8), object_split="test",
)
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=128, max_size=256)]
dataloader.test.num_workers = 0

optimizer.lr = 0.02
lr_multiplier.scheduler.update(milestones=[240, 280], num_updates=300)
lr_multiplier.warmup_length = 20 / 300
train.update(
    max_iter=300,
    device="cpu",
    init_checkpoint="output/tiny_jigsaw/model_final.pth",
    precise_bn=dict(enabled=True, num_iter=4),
    checkpointer=dict(period=100, max_to_keep=2),
    log_period=20,
    output_dir="output/tiny_detection_coco",
)
