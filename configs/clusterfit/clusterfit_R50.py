# ClusterFit step 2 (Yan et al., CVPR 2020) on ImageNet-1k with ResNet-50, after VISSL's
# configs/config/pretrain/clusterfit/clusterfit_resnet_8gpu_imagenet.yaml: a freshly initialised trunk
# learns the 16000 pseudo-labels written by step 1 (configs/clusterfit/cluster_features_R50.py, run with
# tools/cluster_features.py), with a Linear(2048, 16000) head and cross-entropy (-1: ignored).
# IN-1k linear top-1 in VISSL's zoo (MODEL_ZOO.md, 16K clusters of RotNet features, 105 epochs): 53.63.
#
#   python tools/train_net.py --config-file configs/clusterfit/clusterfit_R50.py --num-gpus 8 \
#     dataloader.train.dataset.labels_file=output/cluster_features_R50/imagenet1k_train_N16000_faiss_lbls.npy
#
# The training data set must list the images in the order step 1 clustered them (same loader, root and
# limit): attach_labels checks the length and fails naming both numbers otherwise.
#
# What VISSL ran (commit 09270ed), not only what its yaml says: the yaml's composite schedule has a
# linear warm-up phase, but vissl/utils/hydra_config.py's resolve_linear_schedule (l. 227-268) deletes
# it on one node, so the published 8-GPU run had no warm-up (d2ssl.engine.schedules). Views: crop,
# colour jitter, then flip, drawn in that order as VISSL's TRANSFORMS list.
from detectron2.config import LazyCall as L
from torchvision import transforms as T

from d2ssl.data import build_ssl_train_loader
from d2ssl.data.datasets import attach_labels, load_image_folder
from d2ssl.data.mappers import ClassificationMapper
from d2ssl.engine.schedules import vissl_warmup_multistep
from d2ssl.modeling import mlp_head
from d2ssl.modeling.meta_arch import ClusterFit

from ..common.models import R50_FEATURE_DIM, r50_trunk
from ..common.optim import SGD as optimizer
from ..common.train import train

NUM_CLUSTERS = 16000  # VISSL's CLUSTERFIT.NUM_CLUSTERS / HEAD.PARAMS [["mlp", {"dims": [2048, 16000]}]]
NUM_EPOCHS = 105  # VISSL's OPTIMIZER.num_epochs
# VISSL's composite lengths [0.047619, 0.952381]: the linear phase's share of training (5 of 105 epochs),
# used only on several nodes (see the header).
WARMUP_LENGTH = 0.047619


dataloader = dict(
    train=L(build_ssl_train_loader)(
        # VISSL's LABEL_SOURCES [disk_filelist] / LABEL_PATHS: the images with the pseudo-labels of step 1.
        dataset=L(attach_labels)(
            dataset=L(load_image_folder)(root="datasets/imagenet/train"),
            labels_file="output/cluster_features_R50/imagenet1k_train_N16000_faiss_lbls.npy",
        ),
        # VISSL: RandomResizedCrop 224, ColorJitter brightness/contrast/saturation [0.6, 1.4] and hue
        # [-0.2, 0.2] (torchvision's 0.4 / 0.2), RandomHorizontalFlip, ImageNet normalisation, in this
        # order (clusterfit_resnet_8gpu_imagenet.yaml l. 19-30): the flip comes after the jitter, so it
        # is passed among the extra transforms and the mapper's own flip is off.
        mapper=L(ClassificationMapper)(
            train=True,
            crop_size=224,
            crop_scale=(0.08, 1.0),
            horizontal_flip=False,
            extra_transforms=[
                L(T.ColorJitter)(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2),
                L(T.RandomHorizontalFlip)(),
            ],
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
# for 256 images (VISSL's auto_lr_scaling base_value 0.1, base_lr_batch_size 256), x0.1 at epochs
# 30/60/90/100 of 105, updated per epoch. The yaml's linear phase (start_value 0.25, end_value 0.1) is
# replaced by VISSL before training: start = 0.1 x batch per node / 256, end = the scaled lr, and the
# phase deleted on one node; on n nodes it warms up from 1/n of the lr over 5 epochs
# (d2ssl.engine.schedules.vissl_warmup_multistep reads n from the launched job).
optimizer.lr = 0.1
lr_multiplier = L(vissl_warmup_multistep)(
    milestones=[30, 60, 90, 100],
    num_epochs=NUM_EPOCHS,
    warmup_length=WARMUP_LENGTH,
    total_batch_size="${dataloader.train.total_batch_size}",  # after scaling to the actual processes
    num_nodes=None,
)
train.epochs = NUM_EPOCHS
train.seed = 1  # VISSL's SEED_VALUE
train.reference_world_size = 8
train.output_dir = "output/clusterfit_R50"
