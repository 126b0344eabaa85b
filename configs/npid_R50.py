# NPID (Wu et al. 2018) on ImageNet-1k with ResNet-50, VISSL's
# configs/config/pretrain/npid/npid_8gpu_resnet.yaml: 8 GPUs x 32 = 256 images per step, a
# Linear(2048, 128) projection, NCE against a memory bank of one 128-d entry per training image
# (4096 random negatives, T 0.07, bank momentum 0.5, Z estimated on the first batch), SGD lr 0.03,
# 200 epochs with x0.1 at 120 and 160. IN-1k linear top-1 in VISSL's zoo: 52.73.
#
# Variants: npid_R101.py, npid_R50w2.py, npid_R50w4.py (trunk), npid_R50_mlp.py (MLP head),
# npid_R50_gblur.py (photo_gblur colour recipe), npid_pp_R50.py (NPID++: 1024 images, 32000
# negatives, 800 epochs). Epochs: train.epochs=...; GPUs: the linear scaling rule adapts batch and lr
# to the number of processes (train.reference_world_size=8).
# Keep train.ddp.broadcast_buffers=False: every rank applies the same gathered bank update, and
# broadcasting buffers would copy the whole bank (650 MB for ImageNet) at every step.
from detectron2.config import LazyCall as L
from torchvision import transforms as T

from d2ssl.data import build_ssl_train_loader
from d2ssl.data.color import photo_gblur_augmentation
from d2ssl.data.datasets import load_image_folder
from d2ssl.data.mappers import ImageMapper
from d2ssl.losses import NCELossWithMemory
from d2ssl.modeling import mlp_head
from d2ssl.modeling.meta_arch import NPID

from .common.models import R50_FEATURE_DIM, r50_trunk
from .common.optim import SGD as optimizer
from .common.schedules import multistep
from .common.train import train

EMBEDDING_DIM = 128

dataloader = dict(
    train=L(build_ssl_train_loader)(
        dataset=L(load_image_folder)(root="datasets/imagenet/train"),
        mapper=L(ImageMapper)(
            transforms=[
                # VISSL jitters the whole image before cropping (hue 0.4; no grayscale, unlike
                # lemniscate's p 0.2).
                L(T.ColorJitter)(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.4),
                L(T.RandomResizedCrop)(size=224, scale=(0.08, 1.0)),
                L(T.RandomHorizontalFlip)(),
            ],
            # True: the loader only decodes and crops (same draws); the colour jitter, flip and
            # normalisation run on the model's device, batched (d2ssl/data/device_augmentation.py).
            # Pays off when that device is a GPU and the loader's CPUs are the bottleneck.
            augment_on_device=False,
        ),
        total_batch_size=256,  # 8 GPUs x 32
        num_workers=8,
        seed=0,
    )
)

model = L(NPID)(
    trunk=r50_trunk(),
    # VISSL's ["mlp", {"dims": [2048, 128]}]: a single Linear.
    head=L(mlp_head)(dims=[R50_FEATURE_DIM, EMBEDDING_DIM]),
    loss=L(NCELossWithMemory)(
        num_train_samples=-1,  # filled in with the data set size before the model is built
        loss_type="nce",
        norm_embedding=True,
        temperature=0.07,
        loss_weights=[1.0],
        norm_constant=-1,  # Z estimated from the first batch
        update_mem_with_emb_index=-100,  # unused: update_mem_on_forward
        # VISSL's draw (vissl/losses/nce_loss.py l. 290-311 at commit 09270ed: AliasMethod over uniform
        # unigrams of all N rows, with replacement, column 0 then overwritten by the positive), so the
        # positive can come back as a negative. exclude_positive=True draws from the other N - 1 rows
        # instead (d2ssl's option). VISSL draws the positive K/N times per sample on average:
        # 0.003 for K 4096 on ImageNet's 1.28M rows.
        negative_sampling_params=dict(num_negatives=4096, type="random", exclude_positive=False),
        memory_params=dict(
            memory_size=-1,  # one row per training image
            embedding_dim=EMBEDDING_DIM,
            momentum=0.5,
            norm_init=True,
            update_mem_on_forward=True,
            init_seed=0,
            # "bfloat16"/"float16": a half-precision bank (half the memory) scored in float32.
            dtype="float32",
        ),
    ),
)

# SGD momentum 0.9, wd 1e-4 except on BatchNorm (VISSL: regularize_bn False, regularize_bias True).
optimizer.lr = 0.03
lr_multiplier = multistep(milestones=[120, 160], num_epochs=200)
train.epochs = 200
train.reference_world_size = 8
train.output_dir = "output/npid_R50"


def use_mlp_head(model) -> None:
    """Linear(F, F) + ReLU + Linear(F, 128) instead of the Linear projection (F: trunk features)."""
    model.head.dims = [model.head.dims[0], model.head.dims[0], model.head.dims[-1]]
    model.head.use_relu = True


def use_photo_gblur(dataloader) -> None:
    """VISSL's photo_gblur colour recipe (jitter 0.8 with p 0.8, grayscale, blur, flip) after the crop,
    instead of NPID's whole-image jitter."""
    crop = dataloader.train.mapper.transforms[1]
    dataloader.train.mapper.transforms = [crop, L(photo_gblur_augmentation)()]
