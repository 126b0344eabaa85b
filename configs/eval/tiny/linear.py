# CPU-sized JigClu/MoCo linear benchmark for the demo and the tests: Fashion-MNIST (28 px photos
# upscaled to 64 as configs/tiny/*.py), the tiny ResNet-18 trunk (128-d res5) frozen, fc on pooled
# res5 as configs/eval/linear_jigclu_R50.py, validated on the first 1,000 test photos.
# Smaller than the reference on purpose (CPU minutes): batch 64, 300 iterations, crop scale (0.5, 1)
# since 8 % of a 28 px photo is a smudge, and lr 0.01: the fc sees unnormalised res5 features (pooled
# norm ~26 on a random tiny trunk) and, measured on cached features, 60 steps reach 46 % top-1 at
# lr 0.01 but ~25 % at 0.1 or 1.0, which oscillate (10.0 suits the small features of a trained R50).
#
#   python tools/train_linear.py --config-file configs/eval/tiny/linear.py \
#       train.weights_init.PARAMS_FILE=output/tiny_jigsaw/model_final.pth
from detectron2.config import LazyCall as L

from d2ssl.data.datasets import get_dataset_dicts

from ...common.models import tiny_trunk
from ...common.schedules import multistep
from ...common.train import on_cpu_for_minutes
from ..linear_jigclu_R50 import dataloader, model, optimizer, train

SIZE = 64

dataloader.train.dataset = L(get_dataset_dicts)(names="fashion_mnist_train")
dataloader.train.mapper.update(crop_size=SIZE, crop_scale=(0.5, 1.0))
dataloader.train.update(total_batch_size=64, num_workers=0)
dataloader.test.dataset = L(get_dataset_dicts)(names="fashion_mnist_test", limit=1000)
dataloader.test.mapper.update(resize_size=SIZE, crop_size=SIZE)
dataloader.test.update(batch_size=100, num_workers=0)

model.trunk = tiny_trunk()
model.num_classes = None  # from the labels: 10 (d2ssl.evaluation.models.resolve_num_classes)
model.input_size = SIZE

optimizer.lr = 0.01
on_cpu_for_minutes(train, output_dir="output/tiny_linear", max_iter=300)
train.eval_period = 100
lr_multiplier = multistep(milestones=[60, 80], num_epochs=100)  # the reference's shape over the run
