"""Rotation prediction (RotNet, Gidaris et al. 2018) with VISSL's crop recipe
(``configs/config/pretrain/rotnet/rotnet_8gpu_resnet.yaml``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from d2ssl.data.color import ColorAugmentation, color_augmentation, torch_rng_from
from d2ssl.data.image_io import read_rgb_image
from d2ssl.data.resize import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    normalize_uint8,
    pil_to_uint8_hwc,
    random_resized_crop_box,
    resized_crop,
    to_normalized_tensor,
)

NUM_ROTATIONS = 4  # 0, 90, 180, 270 degrees


def rotate(image: torch.Tensor, label: int) -> torch.Tensor:
    """Rotates a ``(C, H, W)`` image by ``label * 90`` degrees counter-clockwise, pixel-exactly
    (the direction of torchvision's ``rotate`` and VISSL's ``ImgRotatePil``)."""
    return torch.rot90(image, k=int(label), dims=(1, 2))


class RotationMapper:
    """Dataset dict -> ``{"images": (R, 3, S, S), "rotation_labels": (R,), "image_id": int}``.

    One square random-resized crop (VISSL: 224 px, scale 0.08-1), then ``augmentation`` (VISSL: a
    horizontal flip only; ``color_augmentation(gaussian_blur_prob=0.5, ...)`` gives the blur
    variant), normalisation, and ``R = rotations_per_image`` exact rotations of that one crop;
    ``images[r]`` is the crop rotated by ``rotation_labels[r] * 90`` degrees counter-clockwise.

    ``rotations_per_image=4`` (default) puts all four rotations of each image in the batch, as
    Gidaris et al.'s code; ``1`` draws one rotation uniformly per image, as VISSL. Between, a random
    subset of distinct rotations.

    ``rotate_before_crop=False`` (default) differs from VISSL so that the label is exact: VISSL
    rotates the whole (possibly non-square) image before cropping, which blacks out its sides at 90/270
    degrees (a cue to the label); here the square crop is rotated. And VISSL flips *after* rotating,
    which turns an image rotated by 90 degrees into a flipped image rotated by 270 under label 90; here
    the flip, like every augmentation, happens before the rotation (as in Gidaris et al.).
    ``rotate_before_crop=True`` is VISSL's ``ImgRotatePil`` then crop then ``augmentation``: one
    rotation drawn per image (needs ``rotations_per_image=1``), torchvision's ``rotate`` of the decoded
    image (same canvas, black fill), then the random-resized crop of that and the augmentation.
    """

    def __init__(
        self,
        crop_size: int = 224,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        augmentation: Callable | None = None,
        rotations_per_image: int = NUM_ROTATIONS,
        pixel_mean: tuple[float, float, float] = IMAGENET_MEAN,
        pixel_std: tuple[float, float, float] = IMAGENET_STD,
        decode_min_side: int | None = None,
        rotate_before_crop: bool = False,
    ):
        if rotate_before_crop and rotations_per_image != 1:
            raise ValueError(
                f"rotate_before_crop=True (VISSL's ImgRotatePil) draws one rotation per image: set "
                f"rotations_per_image=1, got {rotations_per_image}"
            )
        if not 1 <= rotations_per_image <= NUM_ROTATIONS:
            raise ValueError(
                f"rotations_per_image must be between 1 and {NUM_ROTATIONS}, got {rotations_per_image}"
            )
        self.rotations_per_image = rotations_per_image
        self.rotate_before_crop = rotate_before_crop
        self.crop_size, self.crop_scale = crop_size, tuple(crop_scale)
        self.decode_min_side = decode_min_side
        self.crop = T.RandomResizedCrop(crop_size, scale=tuple(crop_scale))
        if augmentation is None:
            augmentation = color_augmentation(color_jitter=None, grayscale_prob=0.0, horizontal_flip=True)
        self.augmentation = augmentation
        self.pixel_mean, self.pixel_std = pixel_mean, pixel_std

    def __call__(self, dataset_dict: dict, generator: torch.Generator) -> dict:
        image = read_rgb_image(dataset_dict, decode_min_side=self.decode_min_side)
        if self.rotate_before_crop:
            label = int(torch.randint(NUM_ROTATIONS, (1,), generator=generator))
            # img_rotate_pil.py: TF.rotate(image, angle) on the PIL image, counter-clockwise, no expand.
            image = TF.rotate(image, 360.0 * label / NUM_ROTATIONS)
        if isinstance(self.augmentation, ColorAugmentation):
            box = random_resized_crop_box(image.width, image.height, self.crop_scale, generator)
            view = resized_crop(pil_to_uint8_hwc(image), box, self.crop_size)
            view = self.augmentation.apply(view[None], generator)
            crop = normalize_uint8(view[0], self.pixel_mean, self.pixel_std)
        else:  # any PIL transform
            with torch_rng_from(generator):
                image = self.augmentation(self.crop(image))
            crop = to_normalized_tensor(image, self.pixel_mean, self.pixel_std)
        if self.rotate_before_crop:
            return {"images": crop[None], "rotation_labels": torch.tensor([label]),
                    "image_id": dataset_dict["image_id"]}
        if self.rotations_per_image == NUM_ROTATIONS:
            labels = torch.arange(NUM_ROTATIONS)
        else:
            labels = torch.randperm(NUM_ROTATIONS, generator=generator)[: self.rotations_per_image]
        images = torch.stack([rotate(crop, k) for k in labels.tolist()])
        return {"images": images, "rotation_labels": labels, "image_id": dataset_dict["image_id"]}
