# VISSL's semi-supervised benchmark on ImageNet-1k, ResNet-50, 1 % of the labels (SimCLR's subset), the
# whole network fine-tuned: facebookresearch/vissl 09270ed configs/config/benchmark/semi_supervised/
# imagenet1k/eval_resnet_8gpu_transfer_in1k_semi_sup_fulltune.yaml (the "fulltune yaml" below) with
# +dataset=simclr_in1k_per01 (docs/source/evaluations/semi_supervised.rst l.27-29):
# - data: SimCLR's imagenet_subsets/1percent.txt (google-imagenet1k-per01, dataset/simclr_in1k_per01.yaml
#   l.5-6), RandomResizedCrop 224 + flip (yaml l.20-27); test: ImageNet val, Resize 256 + CenterCrop 224
#   (l.32-45); 8 GPUs x 32 images (l.19, l.94), DROP_LAST True (l.31);
# - head: ["mlp", {"dims": [2048, 1000]}] (l.62-64): one Linear on the globally pooled res5, PyTorch's
#   default init (vissl/models/heads/mlp.py l.72-73); trunk and head both train (no FEATURE_EVAL_SETTINGS:
#   EVAL_MODE_ON False), trunk BatchNorm per GPU (CONVERT_BN_TO_SYNC_BN False, defaults.yaml l.909) and
#   BROADCAST_BUFFERS False (l.97): train.ddp.broadcast_buffers=False, d2ssl's default;
# - SGD nesterov, momentum 0.9, weight decay 0 (l.74-80); lr 0.05 per 256 images (auto_lr_scaling base_value
#   0.05, l.83-86), x0.1 at epoch 30 of 70 (values [0.05, 0.005], milestones [30], l.87-90), the SAME rate
#   for the head and the trunk (head_optimizer_params.use_different_lr False, defaults.yaml l.1266;
#   hydra_config.py l.386-389 copies lr to lr_head); evaluated and checkpointed every epoch (l.6, l.103),
#   seed 1 (l.8).
# VISSL publishes no number for this benchmark in its model zoo.
#
# Deviation (harmless, stated): d2ssl's training loader is an endless stream of full batches, so an
# "epoch" is EPOCH_ITERS iterations of 256 images: VISSL's per-replica DistributedSampler with DROP_LAST
# gives floor(ceil(N / 8) / 32) iterations per epoch, which max_iter and the eval period reproduce, but
# which images fill an epoch's batches is d2ssl's seeded order, not torch's DistributedSampler's.
#
#   python tools/train_linear.py --config-file configs/eval/semi_vissl_R50_1percent.py --num-gpus 8 \
#       train.weights_init.PARAMS_FILE=converted_vissl_pirl.torch
from detectron2.config import LazyCall as L

from d2ssl.data.datasets import load_image_folder
from d2ssl.data.splits import subset_from_list

from ..common.optim import SGD as optimizer
from ..common.schedules import multistep
from .linear_jigclu_R50 import BATCH, dataloader, model, train

GPUS, PER_GPU = 8, 32  # fulltune yaml l.19, l.94
NUM_EPOCHS = 70  # l.77
SUBSET_IMAGES = 12811  # lines of SimCLR's 1percent.txt
EPOCH_ITERS = -(-SUBSET_IMAGES // GPUS) // PER_GPU  # DROP_LAST per replica: 50

dataloader.train.dataset = L(subset_from_list)(
    dataset=L(load_image_folder)(root="datasets/imagenet/train"),
    list_file="datasets/imagenet_subsets/1percent.txt",
)
dataloader.train.total_batch_size = BATCH
dataloader.train.seed = 1
model.heads = {"fc": dict(feature="res5", pool=None, use_bn=False, init_std=None)}
model.freeze_trunk = False
model.trunk.norm = "BN"

optimizer.update(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.0)
lr_multiplier = multistep(milestones=[30], num_epochs=NUM_EPOCHS)

train.update(epochs=None, max_iter=NUM_EPOCHS * EPOCH_ITERS, seed=1)
train.output_dir = "output/semi_vissl_R50_1percent"
train.eval_period = EPOCH_ITERS
train.checkpointer.period = EPOCH_ITERS
