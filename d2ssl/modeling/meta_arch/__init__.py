from d2ssl.modeling.meta_arch.base import SSLMetaArch
from d2ssl.modeling.meta_arch.jigsaw import Jigsaw

__all__ = ["SSLMetaArch", "Jigsaw"]
