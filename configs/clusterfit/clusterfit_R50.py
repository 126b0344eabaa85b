# ClusterFit step 2 (Yan et al., CVPR 2020) on ImageNet-1k with ResNet-50, after VISSL's
# configs/config/pretrain/clusterfit/clusterfit_resnet_8gpu_imagenet.yaml: a freshly initialised trunk
# learns the 16000 pseudo-labels written by step 1 (configs/clusterfit/cluster_features_R50.py, run with
# tools/cluster_features.py), with a Linear(2048, 16000) head and cross-entropy (-1: ignored).
#
#   python tools/train_net.py --config-file configs/clusterfit/clusterfit_R50.py --num-gpus 8 \
#     dataloader.train.dataset.labels_file=output/cluster_features_R50/imagenet1k_train_N16000_faiss_lbls.npy
#
# The training data set must list the images in the order step 1 clustered them (same loader, root and
# limit): attach_labels checks the length and fails naming both numbers otherwise.
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from torchvision import transforms as T

from d2ssl.data import build_ssl_train_loader
from d2ssl.data.datasets import attach_labels, load_image_folder
from d2ssl.data.mappers import ClassificationMapper
from d2ssl.modeling import mlp_head
from d2ssl.modeling.meta_arch import ClusterFit

from ..common.models import R50_FEATURE_DIM, r50_trunk
from ..common.optim import SGD as optimizer
from ..common.schedules import multistep
from ..common.train import train

NUM_CLUSTERS = 16000  # VISSL's CLUSTERFIT.NUM_CLUSTERS / HEAD.PARAMS [["mlp", {"dims": [2048, 16000]}]]
NUM_EPOCHS = 105
WARMUP_EPOCHS = 5  # VISSL's composite schedule: lengths [0.047619, 0.952381] of 105 epochs


def warmup_multistep(milestones, num_epochs, warmup_epochs, warmup_factor):
    """Linear warm-up from ``warmup_factor`` x lr to lr over ``warmup_epochs``, then a multistep."""
    return L(WarmupParamScheduler)(
        scheduler=multistep(milestones=milestones, num_epochs=num_epochs),
        warmup_factor=warmup_factor,
        warmup_length=warmup_epochs / num_epochs,
        warmup_method="linear",
        rescale_interval=False,
    )


dataloader = dict(
    train=L(build_ssl_train_loader)(
        # VISSL's LABEL_SOURCES [disk_filelist] / LABEL_PATHS: the images with the pseudo-labels of step 1.
        dataset=L(attach_labels)(
            dataset=L(load_image_folder)(root="datasets/imagenet/train"),
            labels_file="output/cluster_features_R50/imagenet1k_train_N16000_faiss_lbls.npy",
        ),
        # VISSL: RandomResizedCrop 224, ColorJitter brightness/contrast/saturation [0.6, 1.4] and hue
        # [-0.2, 0.2] (torchvision's 0.4 / 0.2), RandomHorizontalFlip, ImageNet normalisation. The mapper
        # flips before the jitter; the two commute, only the order of the random draws differs.
        mapper=L(ClassificationMapper)(
            train=True,
            crop_size=224,
            crop_scale=(0.08, 1.0),
            extra_transforms=[L(T.ColorJitter)(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2)],
            # True: the loader only decodes, crops and draws; the jitter and normalisation run batched on
            # the model's device (d2ssl.data.device_augmentation). Pays off when that device is a GPU.
            augment_on_device=False,
        ),
        total_batch_size=256,  # VISSL: 8 GPUs x BATCHSIZE_PER_REPLICA 32
        num_workers=8,
        seed=0,
    )
)

model = L(ClusterFit)(trunk=r50_trunk(), head=L(mlp_head)(dims=[R50_FEATURE_DIM, NUM_CLUSTERS]))

# SGD momentum 0.9, wd 1e-4 not on BatchNorm (VISSL: regularize_bn False, regularize_bias True); lr 0.1
# for 256 images (VISSL's auto_lr_scaling base_value 0.1, base_lr_batch_size 256). Warm-up from 0.025
# (x0.25, Goyal et al. 2017) over the first 5 of 105 epochs, then x0.1 at 30/60/90/100. VISSL's yaml
# writes the warm-up as linear start_value 0.25 -> end_value 0.1 with update_interval epoch: d2ssl reads
# the 0.25 as the factor (a start of 0.25 would be a 2.5x warm-*down*), and steps it every iteration.
optimizer.lr = 0.1
lr_multiplier = warmup_multistep(
    milestones=[30, 60, 90, 100], num_epochs=NUM_EPOCHS, warmup_epochs=WARMUP_EPOCHS, warmup_factor=0.25
)
train.epochs = NUM_EPOCHS
train.seed = 1  # VISSL's SEED_VALUE
train.reference_world_size = 8
train.output_dir = "output/clusterfit_R50"
