# Jigsaw on ImageNet-1k with ResNet-50, VISSL's configs/config/pretrain/jigsaw/jigsaw_8gpu_resnet.yaml
# (Goyal et al. 2019): 2000 permutations (max_avg Hamming), 3x3 tiles of 64 px from a 255 crop,
# 8 GPUs x 32 images, SGD lr 0.1, 105 epochs with steps at 30/60/90/100 (VISSL removes its warmup on
# one node, so the schedule is plain multistep). IN-1k linear top-1 in VISSL's zoo: 46.73 (2K perms).
from detectron2.config import LazyCall as L

from d2ssl.data import build_ssl_train_loader
from d2ssl.data.datasets import load_image_folder
from d2ssl.data.mappers import JigsawMapper
from d2ssl.data.transforms import load_or_create_permutations
from d2ssl.modeling import TileConcatHead, mlp_head
from d2ssl.modeling.meta_arch import Jigsaw

from .common.models import R50_FEATURE_DIM, r50_trunk
from .common.optim import SGD as optimizer
from .common.schedules import multistep
from .common.train import train

GRID = 3
NUM_PERMUTATIONS = 2000  # VISSL also ships 100 (Noroozi's set) and 10000

dataloader = dict(
    train=L(build_ssl_train_loader)(
        dataset=L(load_image_folder)(root="datasets/imagenet/train"),
        mapper=L(JigsawMapper)(
            # Generated once (max_avg Hamming, as VISSL's script) and saved beside the outputs; point
            # `path` at VISSL's hamming_perms_2000_patches_9_max_avg.npy to use the published set.
            permutations=L(load_or_create_permutations)(
                path="output/jigsaw_R50/permutations_2000_9.npy", num_tiles=GRID * GRID,
                num_permutations=NUM_PERMUTATIONS, seed=0, method="max_avg",
            ),
            grid=GRID, resize_size=256, crop_size=255, tile_size=64,
            grayscale_prob=0.66, per_tile_normalization=False,
        ),
        total_batch_size=256,  # 8 GPUs x 32
        num_workers=8,
        seed=0,
    )
)

# Per-tile Linear(2048, 1000) + BN + ReLU, 9 tiles concatenated to 9000, Linear(9000, 2000).
model = L(Jigsaw)(
    trunk=r50_trunk(),
    head=L(TileConcatHead)(
        per_tile=L(mlp_head)(dims=[R50_FEATURE_DIM, 1000], use_bn=True, last_layer_bn_relu=True),
        on_concat=L(mlp_head)(dims=[1000 * GRID * GRID, NUM_PERMUTATIONS]),
        num_tiles=GRID * GRID,
    ),
)

optimizer.lr = 0.1
lr_multiplier = multistep(milestones=[30, 60, 90, 100], num_epochs=105)
train.epochs = 105
train.output_dir = "output/jigsaw_R50"
