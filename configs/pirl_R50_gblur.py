# PIRL with VISSL's photo_gblur colour recipe on every view
# (configs/config/pretrain/pirl/transforms/photo_gblur.yaml).
from .pirl_R50 import dataloader, lr_multiplier, model, optimizer, train, use_photo_gblur  # noqa: F401  (LazyConfig exports every section)

use_photo_gblur(dataloader)
train.output_dir = "output/pirl_R50_gblur"
