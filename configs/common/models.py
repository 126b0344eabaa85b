from detectron2.config import LazyCall as L

from d2ssl.modeling.backbone import build_resnet_trunk

# Trunks are returned by functions, not stored in module variables: LazyConfig keeps every top-level
# dict of a config file as a config section, so an imported building block would become one.

R50_FEATURE_DIM = 2048
TINY_FEATURE_DIM = 128


def r50_trunk():
    """The ResNet-50 trunk of every published SSL model: BatchNorm (norm="SyncBN" for multi-GPU BN
    statistics), stride in the 3x3 convolution as torchvision. depth=101 and width_multiplier=2/4
    give the R101 and the VISSL/PIRL wide models (R50-w2: 4096-d, R50-w4: 8192-d features)."""
    return L(build_resnet_trunk)(depth=50, width_multiplier=1, norm="BN", out_features=("res5",))


def tiny_trunk():
    """A CPU-sized ResNet-18 with 16 stem channels (res5: 128 channels), for the demo and the tests."""
    return L(build_resnet_trunk)(depth=18, base_channels=16, norm="BN", out_features=("res5",))


def use_resnet(model, depth: int = 50, width_multiplier: int = 1, heads=()) -> None:
    """Makes ``model.trunk`` a ResNet-``depth`` of width ``width_multiplier`` and resizes the
    ``mlp_head`` configs in ``heads`` to read its ``2048 * width_multiplier`` features: every dim but
    the output one, as VISSL's wide heads (R50-w2 MLP: [4096, 4096, 128]).

    Example: ``use_resnet(model, width_multiplier=2, heads=[model.image_head, model.patch_head.per_tile])``.
    """
    model.trunk.depth = depth
    model.trunk.width_multiplier = width_multiplier
    feature_dim = (R50_FEATURE_DIM if depth >= 50 else R50_FEATURE_DIM // 4) * width_multiplier
    for head in heads:
        head.dims = [feature_dim] * (len(head.dims) - 1) + [head.dims[-1]]
