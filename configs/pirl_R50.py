# PIRL (Misra & van der Maaten 2019) with the jigsaw pretext on ImageNet-1k and ResNet-50, VISSL's
# configs/config/pretrain/pirl/pirl_jigsaw_4node_resnet50.yaml: 4 nodes x 8 GPUs x 32 = 1024 images per
# step. Each image gives a 224 random-resized crop and 9 shuffled 64 px tiles of another (255 px, scale
# 0.6-1) crop, every view colour-augmented on its own. The trunk embeds the image (Linear(2048, 128))
# and the tiles (Linear(2048, 128) each, concatenated, Linear(1152, 128)); the loss is
# 0.5 * NCE(tiles, bank) + 0.5 * NCE(image, bank) with 32000 random negatives and T 0.07, the bank
# (one 128-d row per image, momentum 0.5) being updated from the image embedding only. SGD lr 0.12
# (0.03 per 256), cosine to 0.00012 updated per epoch, 800 epochs, no weight decay on biases and BN.
# IN-1k linear top-1 in VISSL's zoo: 64.29 (800 epochs; 62.9 at 200).
#
# Variants: pirl_R50_mlp.py (MLP heads + InfoNCE, T 0.1), pirl_R50_gblur.py (photo_gblur colour
# recipe), pirl_R50_mlp_gblur.py (both: VISSL's recommended recipe), pirl_R101.py, pirl_R50w2.py,
# pirl_R50w4.py, pirl_R50w2_mlp.py, pirl_R50w4_mlp.py. Epochs: train.epochs=...; GPUs: the linear
# scaling rule adapts batch and lr to the number of processes (train.reference_world_size=32).
# Keep train.ddp.broadcast_buffers=False: every rank applies the same gathered bank update, and
# broadcasting buffers would copy the whole bank (650 MB for ImageNet) at every step.
from detectron2.config import LazyCall as L

from d2ssl.data import build_ssl_train_loader
from d2ssl.data.color import color_augmentation, photo_gblur_augmentation
from d2ssl.data.datasets import load_image_folder
from d2ssl.data.mappers import PIRLMapper
from d2ssl.losses import NCELossWithMemory
from d2ssl.modeling import TileConcatHead, mlp_head
from d2ssl.modeling.meta_arch import PIRL

from .common.models import R50_FEATURE_DIM, r50_trunk
from .common.optim import SGD as optimizer
from .common.schedules import cosine_per_epoch
from .common.train import train

GRID = 3
EMBEDDING_DIM = 128

dataloader = dict(
    train=L(build_ssl_train_loader)(
        dataset=L(load_image_folder)(root="datasets/imagenet/train"),
        mapper=L(PIRLMapper)(
            # Applied to the image and to each tile independently: ColorJitter(0.4, 0.4, 0.4, 0.2)
            # always, ImgPilRandomPhotometric p 0.66, grayscale p 0.2, horizontal flip.
            augmentation=L(color_augmentation)(
                color_jitter=(0.4, 0.4, 0.4, 0.2), color_jitter_prob=1.0, photometric_prob=0.66,
                grayscale_prob=0.2, gaussian_blur_prob=0.0, horizontal_flip=True,
            ),
            image_size=224, image_scale=(0.08, 1.0),
            patch_crop_size=255, patch_crop_scale=(0.6, 1.0), grid=GRID, tile_size=64,
            # True: the loader only decodes and crops (same draws); the colour augmentation and the
            # normalisation run on the model's device, batched (d2ssl/data/device_augmentation.py).
            # Pays off when that device is a GPU and the loader's CPUs are the bottleneck.
            augment_on_device=False,
        ),
        total_batch_size=1024,  # 4 nodes x 8 GPUs x 32
        num_workers=8,
        seed=0,
    )
)

model = L(PIRL)(
    trunk=r50_trunk(),
    image_head=L(mlp_head)(dims=[R50_FEATURE_DIM, EMBEDDING_DIM]),
    patch_head=L(TileConcatHead)(
        per_tile=L(mlp_head)(dims=[R50_FEATURE_DIM, EMBEDDING_DIM], use_relu=False),
        on_concat=L(mlp_head)(dims=[EMBEDDING_DIM * GRID * GRID, EMBEDDING_DIM]),
        num_tiles=GRID * GRID,
    ),
    loss=L(NCELossWithMemory)(
        num_train_samples=-1,  # filled in with the data set size before the model is built
        loss_type="nce",
        norm_embedding=True,
        temperature=0.07,
        loss_weights=[0.5, 0.5],  # [tiles -> bank, image -> bank]
        norm_constant=-1,  # Z estimated from the first batch (of the tile branch, which comes first)
        update_mem_with_emb_index=1,  # the image embedding updates the bank
        # VISSL's draw (vissl/losses/nce_loss.py l. 290-311 at commit 09270ed: AliasMethod over uniform
        # unigrams of all N rows, with replacement, column 0 then overwritten by the positive), so the
        # positive can come back as a negative. exclude_positive=True draws from the other N - 1 rows
        # instead (d2ssl's option). VISSL draws the positive K/N times per sample on average:
        # 0.025 for K 32000 on ImageNet's 1.28M rows.
        negative_sampling_params=dict(num_negatives=32000, type="random", exclude_positive=False),
        memory_params=dict(
            memory_size=-1,  # one row per training image
            embedding_dim=EMBEDDING_DIM,
            momentum=0.5,
            norm_init=True,
            update_mem_on_forward=False,
            init_seed=0,
            # "bfloat16"/"float16": a half-precision bank (half the memory) scored in float32.
            dtype="float32",
        ),
    ),
)

optimizer.lr = 0.12
optimizer.params.weight_decay_bias = 0.0  # VISSL: regularize_bias False (and regularize_bn False)
lr_multiplier = cosine_per_epoch(num_epochs=800, end_value=0.001)
train.epochs = 800
train.reference_world_size = 32
train.output_dir = "output/pirl_R50"


def use_mlp_heads(model) -> None:
    """VISSL's models/resnet50_mlphead.yaml: Linear(F, F) + ReLU + Linear(F, 128) + ReLU per tile and
    Linear(F, F) + ReLU + Linear(F, 128) for the image (F: trunk features), with InfoNCE at T 0.1."""
    feature_dim, embedding_dim = model.image_head.dims[0], model.image_head.dims[-1]
    model.patch_head.per_tile.update(dims=[feature_dim, feature_dim, embedding_dim], use_relu=True,
                                     last_layer_bn_relu=True)
    model.image_head.update(dims=[feature_dim, feature_dim, embedding_dim], use_relu=True)
    model.loss.update(loss_type="cross_entropy", temperature=0.1)


def use_photo_gblur(dataloader) -> None:
    """VISSL's transforms/photo_gblur.yaml on every view: flip, jitter 0.8 with p 0.8, grayscale p 0.2,
    Gaussian blur p 0.5 (no photometric transform)."""
    dataloader.train.mapper.augmentation = L(photo_gblur_augmentation)()
