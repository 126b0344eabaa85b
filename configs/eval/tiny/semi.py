# CPU-sized semi-supervised fine-tuning (configs/eval/semi_jigclu_R50_1percent.py's recipe) on 1 % of
# Fashion-MNIST's training labels drawn per class from a seed (600 photos, 60 per class), the tiny
# trunk at 64 px, all of it trained. lr 0.02 / last layer x250 as the 1 % recipe would put the last
# layer at 5.0, far too high for 64-image batches: here 0.05 for the trunk and x10 for the last layer.
from detectron2.config import LazyCall as L

from d2ssl.data.datasets import get_dataset_dicts
from d2ssl.data.splits import class_balanced_subset

from ...common.models import tiny_trunk
from ...common.schedules import multistep
from ..semi_jigclu_R50_1percent import model, optimizer  # noqa: F401
from .linear import dataloader, train  # noqa: F401

dataloader.train.dataset = L(class_balanced_subset)(
    dataset=L(get_dataset_dicts)(names="fashion_mnist_train"), fraction=0.01, seed=0
)
model.trunk = tiny_trunk()
model.num_classes = 10
model.input_size = 64

optimizer.lr = 0.05
optimizer.params.lr_factor_func.factor = 10.0
lr_multiplier = multistep(milestones=[30, 60, 90], num_epochs=100)
train.output_dir = "output/tiny_semi"
