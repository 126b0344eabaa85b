from d2ssl.data.mappers.classification import ClassificationMapper
from d2ssl.data.mappers.image import ImageMapper
from d2ssl.data.mappers.jigsaw import JigsawMapper
from d2ssl.data.mappers.montage import JigsawClusteringMapper
from d2ssl.data.mappers.pirl import PIRLMapper
from d2ssl.data.mappers.rotation import RotationMapper

__all__ = [
    "ClassificationMapper",
    "ImageMapper",
    "JigsawClusteringMapper",
    "JigsawMapper",
    "PIRLMapper",
    "RotationMapper",
]
