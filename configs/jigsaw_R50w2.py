# Jigsaw with VISSL's ResNet-50-w2 (every channel x2: 4096-d features per tile, per-tile Linear(4096, 1000)).
from .common.models import use_resnet
from .jigsaw_R50 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401  (LazyConfig exports every section)

use_resnet(model, width_multiplier=2, heads=[model.head.per_tile])
train.output_dir = "output/jigsaw_R50w2"
