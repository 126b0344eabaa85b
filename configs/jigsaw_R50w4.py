# Jigsaw with VISSL's ResNet-50-w4 (every channel x4: 8192-d features per tile, per-tile Linear(8192, 1000)).
from .common.models import use_resnet
from .jigsaw_R50 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401  (LazyConfig exports every section)

use_resnet(model, width_multiplier=4, heads=[model.head.per_tile])
train.output_dir = "output/jigsaw_R50w4"
