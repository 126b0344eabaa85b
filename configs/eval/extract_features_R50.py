# Frozen ResNet-50 features of ImageNet-1k for kNN, the fast linear path and ClusterFit: res5 pooled by
# a global average (2048-d) on the deterministic test view, Resize 256 (shorter side) + CenterCrop 224,
# as MoCo/JigClu's main_lincls.py val transform and VISSL's feature extraction
# (configs/config/feature_extraction/extract_resnet_in1k_8gpu.yaml). VISSL's linear benchmark layers:
# extraction.layers='[conv1,res2,res3,res4,res5]' with extraction.pooling set to its AvgPool2d specs
# (d2ssl.evaluation.features docstring).
#
#   python tools/extract_features.py --config-file configs/eval/extract_features_R50.py --num-gpus 8 \
#       train.weights_init.PARAMS_FILE=path/to/any/checkpoint.pth          # or train.init_checkpoint=
#
# Each process extracts its shard (detectron2's InferenceSampler) into the shared memory-mapped files.
from detectron2.config import LazyCall as L

from d2ssl.data.datasets import load_image_folder
from d2ssl.data.mappers import ClassificationMapper

from ..common.models import r50_trunk
from ..common.train import train

model = r50_trunk()  # the trunk alone: heads of the checkpoint are skipped

dataloader = dict(
    train=dict(
        dataset=L(load_image_folder)(root="datasets/imagenet/train"),
        mapper=L(ClassificationMapper)(train=False, resize_size=256, crop_size=224),
    ),
    test=dict(
        dataset=L(load_image_folder)(root="datasets/imagenet/val"),
        mapper=L(ClassificationMapper)(train=False, resize_size=256, crop_size=224),
    ),
)

train.weights_init.SKIP_LAYERS = ["num_batches_tracked", "heads"]  # VISSL's WEIGHTS_INIT.SKIP_LAYERS
train.output_dir = "output/extract_features_R50"

# d2ssl.evaluation.features.extract_from_config
extraction = dict(
    layers=["res5"],
    pooling="avg",  # or {layer: [kernel, stride, padding]}: VISSL's AvgPool2d
    batch_size=64,  # per process
    num_workers=8,  # per process
    output_dir="output/extract_features_R50/features",
    splits=["train", "test"],
    reuse=True,  # a finished extraction with the same data, view, layers and weights is not redone
)
