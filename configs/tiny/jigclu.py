# CPU-sized Jigsaw Clustering for the demo and the tests: Fashion-MNIST (28 px photos; each 22 px
# quadrant crop resized to a 32 px patch, montages of 64 px), 16 images (64 patches) per step, a
# ResNet-18 with 16 stem channels and plain BatchNorm.
from detectron2.config import LazyCall as L

from d2ssl.data.datasets import get_dataset_dicts

from ..common.models import TINY_FEATURE_DIM, tiny_trunk
from ..common.schedules import cosine_per_epoch
from ..common.train import knn_monitor_on, on_cpu_for_minutes
from ..jigclu_R50 import NUM_POSITIONS, dataloader, model, optimizer, train  # noqa: F401

dataloader.train.dataset = L(get_dataset_dicts)(names="fashion_mnist_train")
dataloader.train.mapper.update(patch_size=32, crop_scale=(0.5, 1.0))  # 20% of a 22 px crop is a smudge
dataloader.train.total_batch_size = 16
dataloader.train.num_workers = 0

model.trunk = tiny_trunk()
model.cluster_head.dims = [TINY_FEATURE_DIM, TINY_FEATURE_DIM, 32]
model.location_head.dims = [TINY_FEATURE_DIM, NUM_POSITIONS]

on_cpu_for_minutes(train, output_dir="output/tiny_jigclu")
# kNN top-1 (NPID's weighted kNN) of 300 labelled training images voting for 200 others held out
# from them, drawn from whatever dataloader.train.dataset is (a folder: swap carries through), seen at
# the pretraining's 32 px, logged as knn_top1 at iterations 100 and 200.
knn_monitor_on(train, num_memory=300, num_queries=200, image_size=32, period=100)
# max_iter is short of an epoch: spread 10 cosine steps over the run instead of 200.
lr_multiplier = cosine_per_epoch(10)
