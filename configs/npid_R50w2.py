# NPID with VISSL's ResNet-50-w2 (every channel x2: 4096-d features, head Linear(4096, 128);
# VISSL: configs/config/pretrain/npid/models/resnet50_w2.yaml).
from .common.models import use_resnet
from .npid_R50 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401  (LazyConfig exports every section)

use_resnet(model, width_multiplier=2, heads=[model.head])
train.output_dir = "output/npid_R50w2"
