# RotNet with all four rotations of each image in the batch, as Gidaris et al.'s code (opt-in; the
# published VISSL number of rotnet_R50.py came from one random rotation per image), each an exact rotation
# of the augmented square crop. The batch is counted
# in images: 64 images x 4 rotations = 256 trunk inputs per step, VISSL's 8 x 32, so lr 0.1 keeps its
# meaning; an epoch (one pass over the images) then costs 4x VISSL's.
from .rotnet_R50 import NUM_ROTATIONS, dataloader, lr_multiplier, model, optimizer, train  # noqa: F401  (LazyConfig exports every section)

dataloader.train.mapper.rotations_per_image = NUM_ROTATIONS
dataloader.train.mapper.rotate_before_crop = False
dataloader.train.total_batch_size = 256 // NUM_ROTATIONS
train.output_dir = "output/rotnet_R50_4rot"
