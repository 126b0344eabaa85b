# Jigsaw Clustering with ResNet-101 (same 2048-d features, so the heads are unchanged).
from .jigclu_R50 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401  (LazyConfig exports every section)

model.trunk.depth = 101
train.output_dir = "output/jigclu_R101"
