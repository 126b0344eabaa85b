from detectron2.config import LazyCall as L

from d2ssl.modeling.backbone import build_resnet_trunk

# ResNet-50 trunk of every published SSL model: BatchNorm (use norm="SyncBN" for multi-GPU BN
# statistics), stride in the 3x3 convolution as torchvision. depth=101 and width_multiplier=2/4 give
# the R101 and the VISSL/PIRL wide models (R50-w2: 4096-d, R50-w4: 8192-d features).
R50 = L(build_resnet_trunk)(depth=50, width_multiplier=1, norm="BN", out_features=("res5",))
R50_FEATURE_DIM = 2048

# A CPU-sized ResNet-18 with 16 stem channels (res5 has 128 channels), for the demo and the tests.
TINY = L(build_resnet_trunk)(depth=18, base_channels=16, norm="BN", out_features=("res5",))
TINY_FEATURE_DIM = 128
