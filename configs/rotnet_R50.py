# RotNet (Gidaris et al. 2018) on ImageNet-1k with ResNet-50, after VISSL's
# configs/config/pretrain/rotnet/rotnet_8gpu_resnet.yaml: random-resized crop 224 + horizontal flip,
# head Linear(2048, 4), SGD lr 0.1 for 256 inputs per step on 8 GPUs, 105 epochs with steps at
# 30/60/90/100 (VISSL drops its warmup on one node). IN-1k linear top-1 in VISSL's zoo: 48.2.
#
# rotations_per_image: 4 (default) puts all four rotations of each image in the batch, as Gidaris et
# al.; 1 draws one random rotation per image, as VISSL (configs/rotnet_R50_vissl.py). The batch is
# counted in images: 64 images x 4 rotations = 256 trunk inputs per step, VISSL's 8 x 32, so lr 0.1
# keeps its meaning; an epoch (one pass over the images) then costs 4x VISSL's.
from detectron2.config import LazyCall as L

from d2ssl.data import build_ssl_train_loader
from d2ssl.data.datasets import load_image_folder
from d2ssl.data.mappers import RotationMapper
from d2ssl.data.transforms import color_augmentation
from d2ssl.modeling import mlp_head
from d2ssl.modeling.meta_arch import RotNet

from .common.models import R50_FEATURE_DIM, r50_trunk
from .common.optim import SGD as optimizer
from .common.schedules import multistep
from .common.train import train

ROTATIONS_PER_IMAGE = 4
NUM_ROTATIONS = 4

dataloader = dict(
    train=L(build_ssl_train_loader)(
        dataset=L(load_image_folder)(root="datasets/imagenet/train"),
        mapper=L(RotationMapper)(
            crop_size=224,
            crop_scale=(0.08, 1.0),
            # VISSL's recipe is a horizontal flip only; gaussian_blur_prob=0.5 is the blur variant
            # (configs/rotnet_R50_blur.py).
            augmentation=L(color_augmentation)(
                color_jitter=None, grayscale_prob=0.0, gaussian_blur_prob=0.0, horizontal_flip=True
            ),
            rotations_per_image=ROTATIONS_PER_IMAGE,
        ),
        total_batch_size=256 // ROTATIONS_PER_IMAGE,
        num_workers=8,
        seed=0,
    )
)

# VISSL: HEAD.PARAMS [["mlp", {"dims": [2048, 4]}]], a single Linear; [2048, 2048, 4] is the MLP
# variant (configs/rotnet_R50_mlphead.py).
model = L(RotNet)(trunk=r50_trunk(), head=L(mlp_head)(dims=[R50_FEATURE_DIM, NUM_ROTATIONS]))

# SGD momentum 0.9, wd 1e-4 except on BatchNorm (VISSL: regularize_bn False, regularize_bias True).
optimizer.lr = 0.1
lr_multiplier = multistep(milestones=[30, 60, 90, 100], num_epochs=105)
train.epochs = 105
train.reference_world_size = 8  # 8 GPUs x 8 images x 4 rotations
train.output_dir = "output/rotnet_R50"
