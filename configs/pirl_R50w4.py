# PIRL with VISSL's ResNet-50-w4 (configs/config/pretrain/pirl/models/resnet50_w4.yaml): every channel x4,
# 8192-d features, Linear(8192, 128) heads; mixed precision and 400 epochs as VISSL.
from .common.models import use_resnet
from .common.schedules import cosine_per_epoch
from .pirl_R50 import dataloader, model, optimizer, train  # noqa: F401  (LazyConfig exports every section)

use_resnet(model, width_multiplier=4, heads=[model.image_head, model.patch_head.per_tile])
train.amp.enabled = True
train.epochs = 400
lr_multiplier = cosine_per_epoch(num_epochs=400, end_value=0.001)
train.output_dir = "output/pirl_R50w4"
