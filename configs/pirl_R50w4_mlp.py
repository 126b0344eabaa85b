# PIRL with VISSL's ResNet-50-w4 and MLP heads (configs/config/pretrain/pirl/models/resnet50_w4_mlphead.yaml):
# [8192, 8192, 128] heads, InfoNCE at T 0.1, mixed precision, 400 epochs (see pirl_R50w2_mlp.py).
from .common.models import use_resnet
from .pirl_R50w2_mlp import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401  (LazyConfig exports every section)

use_resnet(model, width_multiplier=4, heads=[model.image_head, model.patch_head.per_tile])
train.output_dir = "output/pirl_R50w4_mlp"
