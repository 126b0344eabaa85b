# CPU-sized RotNet for the demo and the tests: Fashion-MNIST (28 px photos upscaled to 64), all four
# rotations of 16 images per step (64 inputs, chance accuracy 1/4), a ResNet-18 with 16 stem channels.
from detectron2.config import LazyCall as L

from d2ssl.data.datasets import get_dataset_dicts

from ..common.models import TINY, TINY_FEATURE_DIM
from ..rotnet_R50 import NUM_ROTATIONS, dataloader, lr_multiplier, model, optimizer, train

dataloader.train.dataset = L(get_dataset_dicts)(names="fashion_mnist_train")
dataloader.train.mapper.update(crop_size=64, crop_scale=(0.5, 1.0))  # 8% of a 28 px photo is a smudge
dataloader.train.total_batch_size = 16
dataloader.train.num_workers = 0

model.trunk = TINY
del TINY  # a building block, not a config section (LazyConfig keeps every top-level dict)
model.head.dims = [TINY_FEATURE_DIM, NUM_ROTATIONS]

optimizer.lr = 0.05
train.epochs = None
train.max_iter = 200
train.device = "cpu"
train.reference_world_size = 0
train.checkpointer.period = 100
train.log_period = 20
train.output_dir = "output/tiny_rotnet"
lr_multiplier.milestones = [80]
lr_multiplier.num_updates = 100
lr_multiplier.values = [1.0, 0.1]
