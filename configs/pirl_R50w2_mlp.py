# PIRL with VISSL's ResNet-50-w2 and MLP heads (configs/config/pretrain/pirl/models/resnet50_w2_mlphead.yaml):
# [4096, 4096, 128] heads, InfoNCE at T 0.1, mixed precision, 400 epochs. VISSL's image head there lacks
# the ReLU (its "use_relu" sits outside the head's kwargs and is ignored); here it has one, as in R50.
# IN-1k linear top-1 in VISSL's zoo for R50-w2 MLP at 400 epochs: 70.9.
from .common.models import use_resnet
from .common.schedules import cosine_per_epoch
from .pirl_R50 import dataloader, model, optimizer, train, use_mlp_heads  # noqa: F401  (LazyConfig exports every section)

use_mlp_heads(model)
use_resnet(model, width_multiplier=2, heads=[model.image_head, model.patch_head.per_tile])
train.amp.enabled = True
train.epochs = 400
lr_multiplier = cosine_per_epoch(num_epochs=400, end_value=0.001)
train.output_dir = "output/pirl_R50w2_mlp"
