# CPU-sized RotNet for the demo and the tests: Fashion-MNIST (28 px photos upscaled to 64), all four
# rotations of 16 images per step (64 inputs, chance accuracy 1/4), a ResNet-18 with 16 stem channels.
from detectron2.config import LazyCall as L

from d2ssl.data.datasets import get_dataset_dicts

from ..common.models import TINY_FEATURE_DIM, tiny_trunk
from ..common.schedules import multistep
from ..common.train import knn_monitor_on, on_cpu_for_minutes
from ..rotnet_R50 import NUM_ROTATIONS, dataloader, model, optimizer, train

dataloader.train.dataset = L(get_dataset_dicts)(names="fashion_mnist_train")
dataloader.train.mapper.update(crop_size=64, crop_scale=(0.5, 1.0))  # 8% of a 28 px photo is a smudge
# All four exact rotations of each crop (rotnet_R50.py runs VISSL's one rotation of the whole image).
dataloader.train.mapper.update(rotations_per_image=NUM_ROTATIONS, rotate_before_crop=False)
dataloader.train.total_batch_size = 16
dataloader.train.num_workers = 0

model.trunk = tiny_trunk()
model.head.dims = [TINY_FEATURE_DIM, NUM_ROTATIONS]

optimizer.lr = 0.05
on_cpu_for_minutes(train, output_dir="output/tiny_rotnet")
train.seed = 0  # the demo's seed (rotnet_R50.py takes VISSL's SEED_VALUE 1)
# kNN top-1 (NPID's weighted kNN) of 300 labelled training images voting for 200 others held out
# from them, drawn from whatever dataloader.train.dataset is (a folder: swap carries through), seen at
# the pretraining's 64 px, logged as knn_top1 at iterations 100 and 200.
knn_monitor_on(train, num_memory=300, num_queries=200, image_size=64, period=100)
lr_multiplier = multistep(milestones=[80], num_epochs=100)  # x0.1 for the last fifth
