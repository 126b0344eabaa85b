# JigClu semi-supervised fine-tuning on 1 % of ImageNet-1k labels with the last layer at the rate the
# README's --lr-last-layer 5.0 names (250 x the trunk's 0.02, under the same multistep), which
# main_semi.py's adjust_learning_rate overwrites with the trunk's rate from the first epoch on (see
# semi_jigclu_R50_10percent.py). Not what produced JigClu's published 40.7: an option, not the recipe.
from .semi_jigclu_R50_1percent import BATCH, dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

optimizer.params.lr_factor_func.factor = 5.0 / 0.02  # --lr-last-layer / --lr
train.output_dir = "output/semi_jigclu_R50_1percent_lastlayer_lr"
