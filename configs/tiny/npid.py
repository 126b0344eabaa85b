# CPU-sized NPID for the demo and the tests: Fashion-MNIST (60,000 photos of 28 px; 32 px random
# crops), a ResNet-18 with 16 stem channels, a bank of one 128-d entry per image, 4096 negatives.
#
# InfoNCE (loss_type "cross_entropy") instead of NCE: NCE's Z is estimated once, on the first batch,
# against a random bank; as soon as the bank holds real (at first, nearly identical) embeddings the
# NCE loss climbs by orders of magnitude until they spread out, which takes far more steps than a CPU
# demo has. InfoNCE has no Z and starts at ln(K + 1). Set model.loss.loss_type=nce for VISSL's loss.
# What this config learns beyond a random trunk, and at which budget (3,000 steps on 5,000 photos,
# several epochs over the bank): benchmarks/every_method_vs_random.py and its results in
# benchmarks/results/every_method_vs_random_cpu.md.
from detectron2.config import LazyCall as L

from d2ssl.data.datasets import get_dataset_dicts

from ..common.models import TINY_FEATURE_DIM, tiny_trunk
from ..common.train import knn_monitor_on, on_cpu_for_minutes
from ..npid_R50 import EMBEDDING_DIM, dataloader, lr_multiplier, model, optimizer, train  # noqa: F401  (LazyConfig exports every section)

dataloader.train.dataset = L(get_dataset_dicts)(names="fashion_mnist_train")
dataloader.train.mapper.transforms[1].update(size=32, scale=(0.2, 1.0))  # the RandomResizedCrop
dataloader.train.total_batch_size = 32
dataloader.train.num_workers = 0

model.trunk = tiny_trunk()
model.head.dims = [TINY_FEATURE_DIM, EMBEDDING_DIM]
model.loss.loss_type = "cross_entropy"
# Negatives from the other images only (not VISSL's draw, which the full-size config keeps): with K 4096
# of N 60,000 rows VISSL's draw scores each sample against itself as a negative 0.07 times on average,
# and this config cites no published number. Kept as the demo ran it.
model.loss.negative_sampling_params.exclude_positive = True

optimizer.lr = 0.03
on_cpu_for_minutes(train, output_dir="output/tiny_npid")
# kNN top-1 (NPID's weighted kNN) of 300 labelled training images voting for 200 others held out
# from them, drawn from whatever dataloader.train.dataset is (a folder: swap carries through), seen at
# the pretraining's 32 px, logged as knn_top1 at iterations 100 and 200.
knn_monitor_on(train, num_memory=300, num_queries=200, image_size=32, period=100)
