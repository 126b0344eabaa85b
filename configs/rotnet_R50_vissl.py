# RotNet as VISSL batches it: one random rotation per image, 8 GPUs x 32 images. Since rotnet_R50.py
# runs VISSL's recipe by default, this is the same run under its own output folder (kept so that existing
# commands keep working).
from .rotnet_R50 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401  (LazyConfig exports every section)

dataloader.train.mapper.rotations_per_image = 1
dataloader.train.total_batch_size = 256
train.output_dir = "output/rotnet_R50_vissl"
