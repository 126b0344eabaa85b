# NPID with VISSL's photo_gblur colour recipe (configs/config/pretrain/pirl/transforms/photo_gblur.yaml):
# random-resized crop, then jitter (0.8, 0.8, 0.8, 0.2) with p 0.8, grayscale p 0.2, Gaussian blur
# p 0.5, flip.
from .npid_R50 import dataloader, lr_multiplier, model, optimizer, train, use_photo_gblur  # noqa: F401  (LazyConfig exports every section)

use_photo_gblur(dataloader)
train.output_dir = "output/npid_R50_gblur"
