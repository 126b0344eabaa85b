# Jigsaw Clustering with a linear clustering projection, Linear(2048, 128), instead of JigClu's MLP.
from .jigclu_R50 import PROJECTION_DIM, dataloader, lr_multiplier, model, optimizer, train  # noqa: F401  (LazyConfig exports every section)

model.cluster_head.dims = [2048, PROJECTION_DIM]
train.output_dir = "output/jigclu_R50_linearhead"
