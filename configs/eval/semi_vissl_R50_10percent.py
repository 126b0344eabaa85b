# VISSL's semi-supervised full fine-tune with 10 % of the labels (SimCLR's subset): the fulltune yaml with
# +dataset=simclr_in1k_per10 (vissl 09270ed configs/config/benchmark/semi_supervised/imagenet1k/dataset/
# simclr_in1k_per10.yaml l.5: google-imagenet1k-per10; DROP_LAST True from the fulltune yaml l.31), every
# other value as semi_vissl_R50_1percent.py. VISSL publishes no number for it.
from .semi_vissl_R50_1percent import (  # noqa: F401
    GPUS,
    NUM_EPOCHS,
    PER_GPU,
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

SUBSET_IMAGES = 128116  # lines of SimCLR's 10percent.txt
EPOCH_ITERS = -(-SUBSET_IMAGES // GPUS) // PER_GPU  # 500

dataloader.train.dataset.list_file = "datasets/imagenet_subsets/10percent.txt"
train.update(max_iter=NUM_EPOCHS * EPOCH_ITERS, eval_period=EPOCH_ITERS)
train.output_dir = "output/semi_vissl_R50_10percent"
train.checkpointer.period = EPOCH_ITERS
