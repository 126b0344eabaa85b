# VISSL's linear benchmark on ImageNet-1k, ResNet-50 frozen, the protocol Jigsaw and RotNet trunks are
# judged by: facebookresearch/vissl 09270ed configs/config/benchmark/linear_image_classification/imagenet1k/
# eval_resnet_8gpu_transfer_in1k_linear.yaml (the "yaml" below). Seven heads trained at once, one top-1
# each (accuracy_list_meter, num_meters set to the 7 pool ops: vissl/utils/hydra_config.py l.710):
# - eval_mlp (BatchNorm2d + flatten + Linear, vissl/models/heads/linear_eval_mlp.py) on each layer
#   average-pooled to ~9k dims (LINEAR_EVAL_FEAT_POOL_OPS_MAP, yaml l.60-68): conv1 AvgPool2d((10,10), 10, 4)
#   -> 9216, res2 ((16,16), 8, 0) -> 9216, res3 ((13,13), 5, 0) -> 8192, res4 ((8,8), 3, 0) -> 9216,
#   res5 ((6,6), 1, 0) -> 8192 (the head dims, yaml l.75-79);
# - on the globally pooled res5 (2048-d, the two "res5avg" Identity entries, yaml l.66-67): eval_mlp
#   (BatchNorm + Linear, l.80) and a plain mlp Linear (l.81). All seven are the yaml's own heads.
# The heads' BatchNorm is synchronised across processes (CONVERT_BN_TO_SYNC_BN True, yaml l.87-89;
# d2ssl.evaluation.models.PooledLinearHead). Linear layers keep PyTorch's default init (VISSL's MLP).
# SGD nesterov, momentum 0.9, weight decay 5e-4 (0 on BatchNorm: regularize_bn False; biases decayed:
# regularize_bias True; yaml l.95-102), lr 0.01 per 256 images (auto_lr_scaling base_value 0.01,
# base_lr_batch_size 256) x0.1 at epochs 8, 16, 24 of 28 (l.99, l.104-112), 8 GPUs x 32 images (l.19,
# l.116), evaluated every epoch (TEST_EVERY_NUM_EPOCH 1, l.6), seed 1 (SEED_VALUE, l.8).
# tests/test_recipes_vissl.py checks these values.
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
# 28 VISSL epochs of ceil(ceil(1281167 / 8) / 32) = 5005 iterations (DROP_LAST False): the lr drops at
# iterations 8, 16, 24 x 5005, where VISSL's epochs end (train.epochs=28 would put them ~5 earlier).
train.update(epochs=None, max_iter=28 * EPOCH_ITERS, seed=1, output_dir="output/linear_vissl_R50")
train.eval_period = EPOCH_ITERS
