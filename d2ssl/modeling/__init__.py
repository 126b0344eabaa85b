from d2ssl.modeling import meta_arch  # noqa: F401  (fills META_ARCH_REGISTRY)
from d2ssl.modeling.backbone import build_resnet_trunk
from d2ssl.modeling.heads import TileConcatHead, mlp_head

__all__ = ["build_resnet_trunk", "mlp_head", "TileConcatHead"]
