# PIRL's recommended recipe (VISSL's projects/PIRL/README.md: +models=resnet50_mlphead
# +transforms=photo_gblur): MLP heads, InfoNCE at T 0.1, photo_gblur colour augmentation.
from .pirl_R50 import dataloader, lr_multiplier, model, optimizer, train, use_mlp_heads, use_photo_gblur  # noqa: F401  (LazyConfig exports every section)

use_mlp_heads(model)
use_photo_gblur(dataloader)
train.output_dir = "output/pirl_R50_mlp_gblur"
