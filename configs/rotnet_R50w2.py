# RotNet with VISSL's ResNet-50-w2 (every channel x2: 4096-d features, head Linear(4096, 4)).
from .rotnet_R50 import NUM_ROTATIONS, dataloader, lr_multiplier, model, optimizer, train  # noqa: F401  (LazyConfig exports every section)

WIDTH = 2
model.trunk.width_multiplier = WIDTH
model.head.dims = [2048 * WIDTH, NUM_ROTATIONS]
train.output_dir = "output/rotnet_R50w2"
