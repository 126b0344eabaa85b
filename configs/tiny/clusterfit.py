# CPU-sized ClusterFit step 2 for the chain (scripts/clusterfit_chain.sh) and the tests: a fresh tiny
# ResNet-18 (16 stem channels, 128-d res5) learns the NUM_CLUSTERS pseudo-labels that
# configs/tiny/clusterfit_cluster.py wrote for the first NUM_IMAGES Fashion-MNIST training photos
# (upscaled to 64 px as every configs/tiny/ file). VISSL's recipe otherwise (crop, colour jitter, flip,
# SGD), with configs/tiny/rotnet.py's short schedule: x0.1 for the last fifth, after a linear warm-up from
# x0.25 (d2ssl's choice for a short CPU run; the 8-GPU recipe VISSL ran had none; cites no number).
#
#   python tools/cluster_features.py --config-file configs/tiny/clusterfit_cluster.py   # step 1
#   python tools/train_net.py --config-file configs/tiny/clusterfit.py                  # step 2
from detectron2.config import LazyCall as L

from d2ssl.data.datasets import get_dataset_dicts, num_classes_of_labels

from ..clusterfit.clusterfit_R50 import dataloader, model, optimizer, train
from ..common.models import TINY_FEATURE_DIM, tiny_trunk
from ..common.schedules import warmup_multistep
from ..common.train import on_cpu_for_minutes
from .clusterfit_cluster import LABELS_FILE, NUM_CLUSTERS, NUM_IMAGES

# The same images, in the same order, as the clustering step (attach_labels checks them against the
# digest recorded beside the labels file). dataloader.train.dataset=folder:PATH replaces this inner data
# set and keeps the pseudo-labels: cluster PATH first (configs/tiny/clusterfit_cluster.py with the same
# override) and set dataloader.train.dataset.labels_file to the _lbls.npy it writes.
dataloader.train.dataset.dataset = L(get_dataset_dicts)(names="fashion_mnist_train", limit=NUM_IMAGES)
dataloader.train.dataset.labels_file = LABELS_FILE
dataloader.train.mapper.update(crop_size=64, crop_scale=(0.5, 1.0))  # 8% of a 28 px photo is a smudge
dataloader.train.total_batch_size = 32
dataloader.train.num_workers = 0

model.trunk = tiny_trunk()
# One logit per cluster of the labels file (its record says how many k-means made); NUM_CLUSTERS only
# while the file does not exist yet (building the model alone: training needs the file).
model.head.dims = [
    TINY_FEATURE_DIM,
    L(num_classes_of_labels)(labels_file="${dataloader.train.dataset.labels_file}", default=NUM_CLUSTERS),
]

optimizer.lr = 0.05  # 0.1 per 256 images would crawl in 400 steps; configs/tiny/rotnet.py's rate
on_cpu_for_minutes(train, output_dir="output/tiny_clusterfit", max_iter=400)
lr_multiplier = warmup_multistep(milestones=[80], num_epochs=100, warmup_epochs=5, warmup_factor=0.25)
