# VISSL's linear benchmark on ImageNet-1k, ResNet-50 frozen, the protocol Jigsaw and RotNet trunks are
# judged by: facebookresearch/vissl configs/config/benchmark/linear_image_classification/imagenet1k/
# eval_resnet_8gpu_transfer_in1k_linear.yaml. Heads trained at once, one top-1 per layer:
# - eval_mlp (BatchNorm2d + flatten + Linear, vissl/models/heads/linear_eval_mlp.py) on each layer
#   average-pooled to ~9k dims (LINEAR_EVAL_FEAT_POOL_OPS_MAP): conv1 AvgPool2d((10,10), 10, 4) -> 9216,
#   res2 ((16,16), 8, 0) -> 9216, res3 ((13,13), 5, 0) -> 8192, res4 ((8,8), 3, 0) -> 9216,
#   res5 ((6,6), 1, 0) -> 8192 (the yaml's head dims);
# - on the globally pooled res5 (2048-d): BatchNorm + Linear, and a plain Linear (the res5avg heads of
#   VISSL's other in1k linear configs; added here so the seven numbers come from one run).
# Linear layers keep PyTorch's default init (VISSL's MLP). SGD nesterov, momentum 0.9, weight decay
# 5e-4 (0 on BatchNorm: regularize_bn False; biases decayed: regularize_bias True), lr 0.01 per 256
# images (auto_lr_scaling base_value 0.01, base_lr_batch_size 256) x0.1 at epochs 8, 16, 24 of 28,
# 8 GPUs x 32 images, evaluated every epoch (TEST_EVERY_NUM_EPOCH 1), seed 1 (SEED_VALUE).
#
#   python tools/train_linear.py --config-file configs/eval/linear_vissl_R50.py --num-gpus 8 \
#       train.weights_init.PARAMS_FILE=converted_vissl_jigsaw.torch
from ..common.optim import SGD as optimizer
from ..common.schedules import multistep
from .linear_jigclu_R50 import EPOCH_ITERS, dataloader, model, train

_POOL_OPS = {  # feature: (kernel, stride, padding), VISSL's LINEAR_EVAL_FEAT_POOL_OPS_MAP
    "conv1": ((10, 10), 10, 4),
    "res2": ((16, 16), 8, 0),
    "res3": ((13, 13), 5, 0),
    "res4": ((8, 8), 3, 0),
    "res5": ((6, 6), 1, 0),
}

model.heads = {
    **{name: dict(feature=name, pool=pool, use_bn=True, init_std=None) for name, pool in _POOL_OPS.items()},
    "res5avg_bn": dict(feature="res5", pool=None, use_bn=True, init_std=None),
    "res5avg": dict(feature="res5", pool=None, use_bn=False, init_std=None),
}

optimizer.update(lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
optimizer.params.weight_decay_norm = 0.0
lr_multiplier = multistep(milestones=[8, 16, 24], num_epochs=28)

dataloader.train.seed = 1
train.update(epochs=28, seed=1, output_dir="output/linear_vissl_R50")
train.eval_period = EPOCH_ITERS
