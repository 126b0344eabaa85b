# RotNet with Gaussian blur (p 0.5, sigma in [0.1, 2], as SimCLR / VISSL's photo_gblur) after the flip.
from .rotnet_R50 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401  (LazyConfig exports every section)

dataloader.train.mapper.augmentation.gaussian_blur_prob = 0.5
train.output_dir = "output/rotnet_R50_blur"
