"""One augmented view per image, with its data set index: NPID's input, and any single-view recipe."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchvision import transforms as T

from d2ssl.data.image_io import read_rgb_image
from d2ssl.data.transforms import IMAGENET_MEAN, IMAGENET_STD, to_normalized_tensor, torch_rng_from


class ImageMapper:
    """Dataset dict -> ``{"image": (3, H, W), "image_id": int[, "label": int]}``.

    ``transforms`` (PIL -> PIL, e.g. torchvision's) run in the given order, then ImageNet
    normalisation. ``image_id`` is the image's position in the data set (NPID/PIRL's memory-bank row);
    ``label`` is carried when the dict has one (kNN monitoring, ClusterFit pseudo-labels).

    NPID's recipe (VISSL ``npid_8gpu_resnet.yaml``): ``[ColorJitter(0.4, 0.4, 0.4, 0.4),
    RandomResizedCrop(224), RandomHorizontalFlip()]``: the jitter sees the whole image.
    """

    def __init__(
        self,
        transforms: Sequence[Callable],
        pixel_mean: tuple[float, float, float] = IMAGENET_MEAN,
        pixel_std: tuple[float, float, float] = IMAGENET_STD,
    ):
        self.augment = T.Compose(list(transforms))
        self.pixel_mean, self.pixel_std = pixel_mean, pixel_std

    def __call__(self, dataset_dict: dict, generator: torch.Generator) -> dict:
        image = read_rgb_image(dataset_dict)
        with torch_rng_from(generator):
            image = self.augment(image)
        out = {
            "image": to_normalized_tensor(image, self.pixel_mean, self.pixel_std),
            "image_id": dataset_dict["image_id"],
        }
        if "label" in dataset_dict:
            out["label"] = dataset_dict["label"]
        return out
