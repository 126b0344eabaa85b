# Jigsaw with ResNet-101 (same 2048-d features, so the head is unchanged).
from .common.models import use_resnet
from .jigsaw_R50 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401  (LazyConfig exports every section)

use_resnet(model, depth=101, heads=[model.head.per_tile])
train.output_dir = "output/jigsaw_R101"
