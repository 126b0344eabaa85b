# VISSL's semi-supervised full fine-tune as run for PIRL, 1 % of the labels: the fulltune yaml with
# +dataset=pirl_in1k_per01 (vissl 09270ed configs/config/benchmark/semi_supervised/imagenet1k/dataset/
# pirl_in1k_per01.yaml): data set imagenet1k-per01 (l.5) and lr 0.01 per 256 images, x0.1 at epoch 30
# (base_value 0.01, values [0.01, 0.001], l.9-13); every other value as semi_vissl_R50_1percent.py.
# imagenet1k-per01 is PIRL's own 1 % list, which VISSL's dataset_catalog.json leaves as <img_path>
# (l.170-173) and nobody published: give its list file here; SimCLR's 1percent.txt is the public one.
from .semi_vissl_R50_1percent import EPOCH_ITERS, dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

dataloader.train.dataset.list_file = "datasets/imagenet_subsets/pirl_1percent.txt"
optimizer.lr = 0.01
train.output_dir = "output/semi_vissl_pirl_R50_1percent"
