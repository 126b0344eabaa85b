# RotNet with an MLP classifier, Linear(2048, 2048) + ReLU + Linear(2048, 4), instead of VISSL's Linear.
from .rotnet_R50 import NUM_ROTATIONS, dataloader, lr_multiplier, model, optimizer, train  # noqa: F401  (LazyConfig exports every section)

model.head.dims = [2048, 2048, NUM_ROTATIONS]
train.output_dir = "output/rotnet_R50_mlphead"
