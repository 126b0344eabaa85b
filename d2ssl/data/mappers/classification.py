"""The views of the evaluation protocols: a deterministic test view, and the supervised training view.

Shared by feature extraction (kNN, cached-feature linear benchmarks, ClusterFit's clustering), the
linear benchmarks, semi-supervised fine-tuning and ClusterFit's training on pseudo-labels.

- ``train=False``: ``Resize(resize_size)`` (shorter side) + ``CenterCrop(crop_size)``; at full scale
  256 / 224, the test transform of every reference (MoCo/JigClu ``main_lincls.py``, VISSL's
  ``ImgPilToTensor`` test pipeline, ClusterFit's feature extraction).
- ``train=True``: ``RandomResizedCrop(crop_size, scale=crop_scale)`` + ``RandomHorizontalFlip``, with
  optional extra PIL transforms after them (ClusterFit turns the flip off and passes colour jitter then
  flip, VISSL's order, so the draws come in that order), drawn from the sample's
  generator so the views are reproducible and resume stays exact. This is :class:`ImageMapper`'s
  recipe, so it runs on ImageMapper's fast path (parameters drawn from the generator, one resize,
  uint8 colour ops) whenever the extra transforms are colour jitter, as in every d2ssl config.
  ``augment_on_device=True`` (training views on that path only) leaves the colour ops and the
  normalisation to the model's device, as ImageMapper's option of the same name (ClusterFit's and the
  linear benchmarks' models handle such batches).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchvision import transforms as T

from d2ssl.data.image_io import read_rgb_image
from d2ssl.data.mappers.image import ImageMapper
from d2ssl.data.resize import IMAGENET_MEAN, IMAGENET_STD, to_normalized_tensor


class ClassificationMapper:
    """Dataset dict -> ``{"image": (3, crop, crop), "image_id": int[, "label": int]}``.

    Callable as ``mapper(dataset_dict)`` (test view: no randomness) or
    ``mapper(dataset_dict, generator)`` (the training loader's signature).
    """

    def __init__(
        self,
        train: bool = False,
        crop_size: int = 224,
        resize_size: int = 256,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        horizontal_flip: bool = True,
        extra_transforms: Sequence[Callable] = (),
        pixel_mean: tuple[float, float, float] = IMAGENET_MEAN,
        pixel_std: tuple[float, float, float] = IMAGENET_STD,
        augment_on_device: bool = False,
    ):
        if augment_on_device and not train:
            raise ValueError("ClassificationMapper: augment_on_device=True applies to training views "
                             "(train=True); the test view has no augmentation to defer")
        self.train = train
        self.pixel_mean, self.pixel_std = pixel_mean, pixel_std
        if train:
            ops: list[Callable] = [T.RandomResizedCrop(crop_size, scale=tuple(crop_scale))]
            if horizontal_flip:
                ops.append(T.RandomHorizontalFlip())
            ops.extend(extra_transforms)
            self.train_view = ImageMapper(ops, pixel_mean, pixel_std, augment_on_device=augment_on_device)
        else:
            self.transform = T.Compose([T.Resize(resize_size), T.CenterCrop(crop_size)])

    def __call__(self, dataset_dict: dict, generator: torch.Generator | None = None) -> dict:
        if self.train:
            if generator is None:
                raise ValueError("ClassificationMapper(train=True) needs a torch.Generator")
            return self.train_view(dataset_dict, generator)
        image = self.transform(read_rgb_image(dataset_dict))
        out = {
            "image": to_normalized_tensor(image, self.pixel_mean, self.pixel_std),
            "image_id": dataset_dict["image_id"],
        }
        if "label" in dataset_dict:
            out["label"] = dataset_dict["label"]
        return out
