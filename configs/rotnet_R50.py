# RotNet (Gidaris et al. 2018) on ImageNet-1k with ResNet-50, as VISSL ran it for its zoo number:
# configs/config/pretrain/rotnet/rotnet_8gpu_resnet.yaml at commit 09270ed (ImgRotatePil: ONE random
# rotation of four per image; random-resized crop 224 + horizontal flip; head Linear(2048, 4); SGD lr 0.1
# for 256 images per step on 8 GPUs x 32, momentum 0.9, wd 1e-4 not on BatchNorm; 105 epochs, x0.1 at
# 30/60/90/100, no warmup; SEED_VALUE 1). IN-1k linear top-1 in VISSL's MODEL_ZOO.md: 48.2 (VISSL's own
# run rotnet_rn50_in1k_ep105_rotnet_8gpu_resnet_17_07_20).
#
# VISSL's order is kept, defects included: the whole image is rotated before the crop (torchvision's
# rotate, same canvas: a non-square image at 90/270 degrees gets black sides, a cue to the label) and the
# flip comes after the rotation (a flipped 90-degree image is a 270-degree rotation of the flipped image,
# still labelled 90). Both shape the training images, so they can move the number: they stay default.
# Opt-in: rotate_before_crop=False rotates the augmented square crop (every label exact);
# configs/rotnet_R50_4rot.py also puts all four rotations of each image in the batch (Gidaris et al.).
from detectron2.config import LazyCall as L

from d2ssl.data import build_ssl_train_loader
from d2ssl.data.color import color_augmentation
from d2ssl.data.datasets import load_image_folder
from d2ssl.data.mappers import RotationMapper
from d2ssl.modeling import mlp_head
from d2ssl.modeling.meta_arch import RotNet

from .common.models import R50_FEATURE_DIM, r50_trunk
from .common.optim import SGD as optimizer
from .common.schedules import multistep
from .common.train import train

ROTATIONS_PER_IMAGE = 1  # ImgRotatePil (num_rotations_per_img must be 1 in VISSL)
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
            rotate_before_crop=True,  # ImgRotatePil is the first transform of the yaml
        ),
        total_batch_size=256 // ROTATIONS_PER_IMAGE,  # images: 8 GPUs x 32 (BATCHSIZE_PER_REPLICA)
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
train.reference_world_size = 8  # 8 GPUs x 32 images x 1 rotation
train.seed = 1  # VISSL's SEED_VALUE
train.output_dir = "output/rotnet_R50"
