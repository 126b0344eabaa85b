# PIRL with VISSL's ResNet-50-w2 (configs/config/pretrain/pirl/models/resnet50_w2.yaml): every channel x2,
# 4096-d features, Linear(4096, 128) heads; mixed precision and 400 epochs as VISSL.
# IN-1k linear top-1 in VISSL's zoo for R50-w2 at 400 epochs: 69.3.
from .common.models import use_resnet
from .common.schedules import cosine_per_epoch
from .pirl_R50 import dataloader, model, optimizer, train  # noqa: F401  (LazyConfig exports every section)

use_resnet(model, width_multiplier=2, heads=[model.image_head, model.patch_head.per_tile])
train.amp.enabled = True
train.epochs = 400
lr_multiplier = cosine_per_epoch(num_epochs=400, end_value=0.001)
train.output_dir = "output/pirl_R50w2"
