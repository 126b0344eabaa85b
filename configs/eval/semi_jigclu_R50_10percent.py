# JigClu semi-supervised fine-tuning on 10 % of ImageNet-1k labels, ResNet-50: dvlab-research/
# JigsawClustering main_semi.py with the README's command (--wd 0.0 --lr 0.01 --lr-last-layer 0.2
# --syncbn --labels-perc 10): the whole network trains, new fc initialised normal(0, 0.01), SGD momentum
# 0.9, weight decay 0, batch 256, 100 epochs with lr x0.1 at 30, 60, 90 (--schedule default),
# validated every 2 epochs. Subset: SimCLR's imagenet_subsets/10percent.txt (one file name per line),
# put at datasets/imagenet_subsets/; or draw one per class from a seed:
#   dataloader.train.dataset = L(class_balanced_subset)(dataset=..., fraction=0.1, seed=0)
# JigClu's published top-1: 63.0 (10 %), 40.7 (1 %).
#
# The last layer trains at the trunk's rate, as the reference code did: main_semi.py (commit 1490f3b)
# puts --lr-last-layer on the fc's param group (l. 249-263), but adjust_learning_rate (l. 559-568, the
# second definition, which wins) writes args.lr * decay into every param group, and it runs at the start
# of every epoch, epoch 0 included (l. 341-344): the fc never trained at 0.2. The rates the flag names
# (fc at 0.2 / 0.01 = 20 x the trunk's) are an option: semi_jigclu_R50_10percent_lastlayer_lr.py.
from detectron2.config import LazyCall as L

from d2ssl.data.datasets import load_image_folder
from d2ssl.data.splits import subset_from_list
from d2ssl.evaluation.models import LastLayerLrFactor

from ..common.schedules import multistep
from .linear_jigclu_R50 import BATCH, dataloader, model, optimizer, train

SUBSET_IMAGES = 128116  # lines of 10percent.txt
EPOCH_ITERS = SUBSET_IMAGES // BATCH  # main_semi.py drops the last incomplete batch

dataloader.train.dataset = L(subset_from_list)(
    dataset=L(load_image_folder)(root="datasets/imagenet/train"),
    list_file="datasets/imagenet_subsets/10percent.txt",
)
model.freeze_trunk = False
model.trunk.norm = "SyncBN"  # --syncbn (apex's in JigClu); "BN" on one process

optimizer.update(lr=0.01, weight_decay=0.0, momentum=0.9)
optimizer.params.base_lr = "${optimizer.lr}"  # lr_factor_func needs it; follows lr scaling and overrides
# factor 1: what main_semi.py ran (see the header); the _lastlayer_lr configs set --lr-last-layer / --lr.
optimizer.params.lr_factor_func = L(LastLayerLrFactor)(factor=1.0, prefix="heads.")
lr_multiplier = multistep(milestones=[30, 60, 90], num_epochs=100)

train.epochs = 100
train.eval_period = 2 * EPOCH_ITERS
train.checkpointer.period = 2 * EPOCH_ITERS
train.output_dir = "output/semi_jigclu_R50_10percent"
