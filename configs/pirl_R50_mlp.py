# PIRL with MLP heads and InfoNCE (VISSL's configs/config/pretrain/pirl/models/resnet50_mlphead.yaml):
# Linear-ReLU-Linear-ReLU per tile, Linear-ReLU-Linear for the image, loss_type cross_entropy, T 0.1.
# IN-1k linear top-1 in VISSL's zoo: 69.9 (800 epochs; 65.8 at 200).
from .pirl_R50 import dataloader, lr_multiplier, model, optimizer, train, use_mlp_heads  # noqa: F401  (LazyConfig exports every section)

use_mlp_heads(model)
train.output_dir = "output/pirl_R50_mlp"
