# NPID with an MLP projection head, Linear(2048, 2048) + ReLU + Linear(2048, 128), as PIRL's MLP
# variant (VISSL has no NPID MLP config; the NCE loss is unchanged).
from .npid_R50 import dataloader, lr_multiplier, model, optimizer, train, use_mlp_head  # noqa: F401  (LazyConfig exports every section)

use_mlp_head(model)
train.output_dir = "output/npid_R50_mlp"
