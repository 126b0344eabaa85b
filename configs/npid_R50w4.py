# NPID with VISSL's ResNet-50-w4 (every channel x4: 8192-d features, head Linear(8192, 128)). VISSL ships
# NPID w2 and w3 heads (configs/config/pretrain/npid/models/); w4 follows the same rule.
from .common.models import use_resnet
from .npid_R50 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401  (LazyConfig exports every section)

use_resnet(model, width_multiplier=4, heads=[model.head])
train.output_dir = "output/npid_R50w4"
