# VISSL's semi-supervised full fine-tune as run for PIRL, 10 % of the labels: the fulltune yaml with
# +dataset=pirl_in1k_per10 (vissl 09270ed configs/config/benchmark/semi_supervised/imagenet1k/dataset/
# pirl_in1k_per10.yaml): data set imagenet1k-per10 (l.5), lr 0.01 per 256 images, x0.1 at epoch 30
# (l.9-13); every other value as semi_vissl_R50_10percent.py. imagenet1k-per10 is PIRL's own list
# (unpublished; dataset_catalog.json l.174-177): give its list file here.
from .semi_vissl_R50_10percent import EPOCH_ITERS, dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

dataloader.train.dataset.list_file = "datasets/imagenet_subsets/pirl_10percent.txt"
optimizer.lr = 0.01
train.output_dir = "output/semi_vissl_pirl_R50_10percent"
