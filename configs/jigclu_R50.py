# Jigsaw Clustering (Chen, Liu & Jia, CVPR 2021) on ImageNet-1k with ResNet-50, after
# dvlab-research/JigsawClustering (main.py defaults and the README command): 4 overlapping 112 px
# patches per image (cross_ratio 0.3), montages of 224 px, SupCon clustering loss at temperature 0.3
# (scaled by 0.3 / 0.07, base_temperature kept from the reference) + 4-way location loss, batch 256,
# SGD lr 0.03 momentum 0.9 wd 1e-4 on every parameter, cosine updated per epoch without warmup,
# 200 epochs, SyncBN. Reported: 66.4 IN-1k linear top-1, 39.3 COCO Faster R-CNN R50-FPN box AP.
from detectron2.config import LazyCall as L

from d2ssl.data import build_ssl_train_loader
from d2ssl.data.color import color_augmentation
from d2ssl.data.datasets import load_image_folder
from d2ssl.data.mappers import JigsawClusteringMapper
from d2ssl.modeling import mlp_head
from d2ssl.modeling.meta_arch import JigsawClustering

from .common.models import R50_FEATURE_DIM, r50_trunk
from .common.optim import SGD as optimizer
from .common.schedules import cosine_per_epoch
from .common.train import train

EPOCHS = 200
PROJECTION_DIM = 128  # --proj-dim
NUM_POSITIONS = 4

dataloader = dict(
    train=L(build_ssl_train_loader)(
        dataset=L(load_image_folder)(root="datasets/imagenet/train"),
        mapper=L(JigsawClusteringMapper)(
            patch_size=112,  # --crop-size
            crop_scale=(0.2, 1.0),
            cross_ratio=0.3,  # --cross-ratio
            # MoCo v2 per-patch recipe (main.py): jitter 0.4/0.4/0.4/0.1 p 0.8, grayscale 0.2, blur 0.5, flip.
            augmentation=L(color_augmentation)(
                color_jitter=(0.4, 0.4, 0.4, 0.1), color_jitter_prob=0.8, grayscale_prob=0.2,
                gaussian_blur_prob=0.5, blur_sigma=(0.1, 2.0), horizontal_flip=True,
                blur_impl="pil",  # JigClu/loader.py GaussianBlur: PIL's GaussianBlur(radius=sigma)
            ),
            # True: the loader only decodes and crops (same draws); the colour augmentation and the
            # normalisation run on the model's device, batched (d2ssl/data/device_augmentation.py).
            # Pays off when that device is a GPU and the loader's CPUs are the bottleneck.
            augment_on_device=False,
        ),
        total_batch_size=256,
        num_workers=8,
        seed=0,
    )
)

model = L(JigsawClustering)(
    trunk=r50_trunk(),
    # encoder.fc_clu = Linear(2048, 2048), ReLU, Linear(2048, 128); the MLP is always on in JigClu.
    # dims=[2048, 128] gives a linear projection instead (configs/jigclu_R50_linearhead.py).
    cluster_head=L(mlp_head)(dims=[R50_FEATURE_DIM, R50_FEATURE_DIM, PROJECTION_DIM]),
    location_head=L(mlp_head)(dims=[R50_FEATURE_DIM, NUM_POSITIONS]),  # encoder.fc_loc
    temperature=0.3,  # --loss-t as in the README (main.py's default is 0.07)
    base_temperature=0.07,  # SupCluLoss default, never overridden by JigClu
    cluster_loss_weight=1.0,  # --loss_clu
    location_loss_weight=1.0,  # --loss_loc
    upsample_size=8,  # res5 7x7 -> bilinear 8x8 -> 2x2 average pool
)
# apex.convert_syncbn_model in the reference: BN statistics over the montages of all GPUs.
model.trunk.norm = "SyncBN"

optimizer.lr = 0.03
# torch.optim.SGD(model.parameters(), weight_decay=1e-4): unlike VISSL, BatchNorm is decayed too.
optimizer.params.weight_decay_norm = 1e-4
lr_multiplier = cosine_per_epoch(EPOCHS)
train.epochs = EPOCHS
# Batch 256 on the reference's 4 GPUs (64 per GPU); other GPU counts scale batch and lr linearly, or
# set train.reference_world_size=0 to keep 256 at lr 0.03 on any number of GPUs as main.py does.
train.reference_world_size = 4
train.output_dir = "output/jigclu_R50"
