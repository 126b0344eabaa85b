# Jigsaw Clustering with VISSL's ResNet-50-w4 (every channel x4: 8192-d features); the heads follow:
# clustering MLP 8192 -> 8192 -> 128, location Linear(8192, 4).
from .jigclu_R50 import NUM_POSITIONS, PROJECTION_DIM, dataloader, lr_multiplier, model, optimizer, train  # noqa: F401  (LazyConfig exports every section)

FEATURE_DIM = 2048 * 4
model.trunk.width_multiplier = 4
model.cluster_head.dims = [FEATURE_DIM, FEATURE_DIM, PROJECTION_DIM]
model.location_head.dims = [FEATURE_DIM, NUM_POSITIONS]
train.output_dir = "output/jigclu_R50w4"
