# PIRL with ResNet-101 (heads and loss as pirl_R50.py: R101 features are 2048-d too).
from .common.models import use_resnet
from .pirl_R50 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401  (LazyConfig exports every section)

use_resnet(model, depth=101, heads=[model.image_head, model.patch_head.per_tile])
train.output_dir = "output/pirl_R101"
