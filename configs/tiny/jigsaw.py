# CPU-sized Jigsaw for the demo and the tests: Fashion-MNIST (28 px photos upscaled to 64), a 2x2 grid
# with all 4! = 24 permutations (chance accuracy 1/24), a ResNet-18 with 16 stem channels.
# What this config learns beyond a random trunk, and at which budget (3,000 steps at 32 px with 14 px tiles):
# benchmarks/every_method_vs_random.py, benchmarks/results/every_method_vs_random_cpu.md.
from detectron2.config import LazyCall as L

from d2ssl.data.datasets import get_dataset_dicts

from ..common.models import TINY_FEATURE_DIM, tiny_trunk
from ..common.schedules import multistep
from ..common.train import knn_monitor_on, on_cpu_for_minutes
from ..jigsaw_R50 import dataloader, model, optimizer, train

GRID = 2
NUM_PERMUTATIONS = 24

dataloader.train.dataset = L(get_dataset_dicts)(names="fashion_mnist_train")
dataloader.train.mapper.permutations.update(path="", num_tiles=GRID * GRID, num_permutations=NUM_PERMUTATIONS)
dataloader.train.mapper.update(grid=GRID, resize_size=64, crop_size=64, tile_size=28, grayscale_prob=0.0)
dataloader.train.total_batch_size = 32
dataloader.train.num_workers = 0

model.trunk = tiny_trunk()
model.head.per_tile.dims = [TINY_FEATURE_DIM, 64]
model.head.on_concat.dims = [64 * GRID * GRID, NUM_PERMUTATIONS]
model.head.num_tiles = GRID * GRID

optimizer.lr = 0.05
on_cpu_for_minutes(train, output_dir="output/tiny_jigsaw")
# kNN top-1 (NPID's weighted kNN) of 300 labelled training images voting for 200 others held out
# from them, drawn from whatever dataloader.train.dataset is (a folder: swap carries through), seen at
# the pretraining's 64 px, logged as knn_top1 at iterations 100 and 200.
knn_monitor_on(train, num_memory=300, num_queries=200, image_size=64, period=100)
lr_multiplier = multistep(milestones=[80], num_epochs=100)  # x0.1 for the last fifth
