from d2ssl.modeling.meta_arch.base import SSLMetaArch
from d2ssl.modeling.meta_arch.clusterfit import ClusterFit
from d2ssl.modeling.meta_arch.jigclu import JigsawClustering
from d2ssl.modeling.meta_arch.jigsaw import Jigsaw
from d2ssl.modeling.meta_arch.npid import NPID
from d2ssl.modeling.meta_arch.pirl import PIRL
from d2ssl.modeling.meta_arch.rotnet import RotNet

__all__ = ["NPID", "PIRL", "SSLMetaArch", "Jigsaw", "RotNet", "JigsawClustering", "ClusterFit"]
