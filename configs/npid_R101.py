# NPID with ResNet-101 (VISSL: configs/config/pretrain/npid/models/resnet101.yaml, head [2048, 128]).
from .common.models import use_resnet
from .npid_R50 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401  (LazyConfig exports every section)

use_resnet(model, depth=101, heads=[model.head])
train.output_dir = "output/npid_R101"
