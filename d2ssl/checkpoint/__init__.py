"""Weights in and out of d2ssl: import of foreign ResNet checkpoints, export to detectron2 and torchvision."""

from d2ssl.checkpoint.export import convert_checkpoint, to_detectron2, to_torchvision, torchvision_arch
from d2ssl.checkpoint.layouts import TrunkWeights, find_trunk
from d2ssl.checkpoint.load import LoadReport, WeightsLoadError, load_pretrained_weights, load_weights_init

__all__ = [
    "LoadReport",
    "TrunkWeights",
    "WeightsLoadError",
    "convert_checkpoint",
    "find_trunk",
    "load_pretrained_weights",
    "load_weights_init",
    "to_detectron2",
    "to_torchvision",
    "torchvision_arch",
]
