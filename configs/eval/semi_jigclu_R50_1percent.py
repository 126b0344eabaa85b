# JigClu semi-supervised fine-tuning on 1 % of ImageNet-1k labels: as the 10 % config, with the README's
# 1 % command (--lr 0.02 --lr-last-layer 5.0 --wd 0.0 --syncbn --labels-perc 1) and SimCLR's
# imagenet_subsets/1percent.txt. JigClu's published top-1: 40.7.
# As main_semi.py ran it, the last layer trains at the trunk's 0.02, not 5.0 (see the 10 % config's
# header); semi_jigclu_R50_1percent_lastlayer_lr.py trains it at 5.0.
from .semi_jigclu_R50_10percent import BATCH, dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

SUBSET_IMAGES = 12811  # lines of 1percent.txt
EPOCH_ITERS = SUBSET_IMAGES // BATCH

dataloader.train.dataset.list_file = "datasets/imagenet_subsets/1percent.txt"
optimizer.lr = 0.02
train.eval_period = 2 * EPOCH_ITERS
train.checkpointer.period = 2 * EPOCH_ITERS
train.output_dir = "output/semi_jigclu_R50_1percent"
