# CPU-sized PIRL for the demo and the tests: Fashion-MNIST (60,000 photos of 28 px), a 32 px image
# crop and 9 tiles of 14 px from a 48 px crop (3x3 cells of 16 px), a ResNet-18 with 16 stem channels,
# a bank of one 128-d entry per image, 4096 negatives. InfoNCE rather than NCE, for the reason given in
# configs/tiny/npid.py (set model.loss.loss_type=nce for VISSL's loss).
# What this config learns beyond a random trunk, and at which budget (2,000 steps on 5,000 photos,
# several epochs over the bank): benchmarks/every_method_vs_random.py and its results in
# benchmarks/results/every_method_vs_random_cpu.md.
from detectron2.config import LazyCall as L

from d2ssl.data.datasets import get_dataset_dicts

from ..common.models import TINY_FEATURE_DIM, tiny_trunk
from ..common.train import knn_monitor_on, on_cpu_for_minutes
from ..pirl_R50 import EMBEDDING_DIM, dataloader, lr_multiplier, model, optimizer, train  # noqa: F401  (LazyConfig exports every section)

dataloader.train.dataset = L(get_dataset_dicts)(names="fashion_mnist_train")
dataloader.train.mapper.update(
    image_size=32, image_scale=(0.2, 1.0), patch_crop_size=48, patch_crop_scale=(0.6, 1.0), tile_size=14
)
dataloader.train.total_batch_size = 32
dataloader.train.num_workers = 0

model.trunk = tiny_trunk()
model.image_head.dims = [TINY_FEATURE_DIM, EMBEDDING_DIM]
model.patch_head.per_tile.dims = [TINY_FEATURE_DIM, EMBEDDING_DIM]
model.loss.loss_type = "cross_entropy"
# Negatives from the other images only (not VISSL's draw, which the full-size config keeps): with K 4096
# of N 60,000 rows VISSL's draw scores each sample against itself as a negative 0.07 times on average,
# and this config cites no published number. Kept as the demo ran it.
model.loss.negative_sampling_params.exclude_positive = True
model.loss.negative_sampling_params.num_negatives = 4096

optimizer.lr = 0.03
on_cpu_for_minutes(train, output_dir="output/tiny_pirl")
# kNN top-1 (NPID's weighted kNN) of 300 labelled training images voting for 200 others held out
# from them, drawn from whatever dataloader.train.dataset is (a folder: swap carries through), seen at
# the pretraining's 32 px, logged as knn_top1 at iterations 100 and 200.
knn_monitor_on(train, num_memory=300, num_queries=200, image_size=32, period=100)
