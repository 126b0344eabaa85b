# RotNet with VISSL's ResNet-50-w4 (every channel x4: 8192-d features, head Linear(8192, 4)).
from .rotnet_R50 import NUM_ROTATIONS, dataloader, lr_multiplier, model, optimizer, train  # noqa: F401  (LazyConfig exports every section)

WIDTH = 4
model.trunk.width_multiplier = WIDTH
model.head.dims = [2048 * WIDTH, NUM_ROTATIONS]
train.output_dir = "output/rotnet_R50w4"
