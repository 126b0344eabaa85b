# RotNet exactly as VISSL batches it: one random rotation per image, 8 GPUs x 32 images.
from .rotnet_R50 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401  (LazyConfig exports every section)

dataloader.train.mapper.rotations_per_image = 1
dataloader.train.total_batch_size = 256
train.output_dir = "output/rotnet_R50_vissl"
