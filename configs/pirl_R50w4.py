# PIRL with VISSL's ResNet-50-w4 (configs/config/pretrain/pirl/models/resnet50_w4.yaml): every channel x4,
# 8192-d features, Linear(8192, 128) heads; mixed precision and 400 epochs as VISSL (see pirl_R50w2.py).
from .common.models import use_resnet
from .pirl_R50w2 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401  (LazyConfig exports every section)

use_resnet(model, width_multiplier=4, heads=[model.image_head, model.patch_head.per_tile])
train.output_dir = "output/pirl_R50w4"
