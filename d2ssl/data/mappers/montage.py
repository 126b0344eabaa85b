"""Jigsaw Clustering (Chen, Liu & Jia, CVPR 2021) patches and montages, as in
``dvlab-research/JigsawClustering`` (``JigClu/loader.py``, ``JigClu/jigclu.py``).

The mapper cuts each image into 4 overlapping quadrant crops and augments each independently; the
model then shuffles the patches of the whole (global) batch and puts them back together as 2x2
montages (:func:`assemble_montages`), because a montage mixes patches of different images.

Location convention (shared by mapper, montage and model): positions and montage slots are
row-major, ``0 = top-left, 1 = top-right, 2 = bottom-left, 3 = bottom-right``. The reference labels
its crops column-major (0 TL, 1 BL, 2 TR, 3 BR, from ``h, w = x.size`` swapping PIL's width and
height); that only renames the 4 classes of the location head, while its montage slots are
row-major as here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision import transforms as T

from d2ssl.data.color import ColorAugmentation, color_augmentation, torch_rng_from
from d2ssl.data.device_augmentation import DEFERRED_AUGMENTATION, defer_augmentation
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
from d2ssl.data.tiles import stack_channels_last

NUM_PATCHES = 4  # a 2x2 grid


def overlapping_quadrant_boxes(
    width: int, height: int, cross_ratio: float = 0.3
) -> list[tuple[float, float, float, float]]:
    """PIL crop boxes ``(left, upper, right, lower)`` of the 4 quadrants, each extended by
    ``cross_ratio`` of the image side across the centre line, in row-major order.

    JigClu's arithmetic: the split is at ``width // 2`` (floor) and the extension ``cross_ratio *
    width`` is not rounded; PIL rounds the float box when cropping. With 0.3 each crop spans 0.8 of
    each side and neighbouring crops share 0.6 of it.
    """
    cw, ch = cross_ratio * width, cross_ratio * height
    mid_x, mid_y = width // 2, height // 2
    return [
        (0, 0, mid_x + cw, mid_y + ch),
        (mid_x - cw, 0, width, mid_y + ch),
        (0, mid_y - ch, mid_x + cw, height),
        (mid_x - cw, mid_y - ch, width, height),
    ]


def default_jigclu_augmentation() -> Callable:
    """JigClu's per-patch photometric recipe (MoCo v2): colour jitter 0.4/0.4/0.4/0.1 with p 0.8,
    grayscale p 0.2, PIL Gaussian blur (``GaussianBlur(radius=sigma)``) sigma in [0.1, 2] with p 0.5,
    horizontal flip."""
    return color_augmentation(
        color_jitter=(0.4, 0.4, 0.4, 0.1), color_jitter_prob=0.8, grayscale_prob=0.2,
        gaussian_blur_prob=0.5, blur_sigma=(0.1, 2.0), horizontal_flip=True, blur_impl="pil",
    )


class JigsawClusteringMapper:
    """Dataset dict -> ``{"patches": (4, 3, P, P), "image_id": int}``, patch ``k`` from position ``k``.

    Each of the 4 overlapping quadrant crops (:func:`overlapping_quadrant_boxes`) goes through its own
    draw of the same transform, as JigClu's ``JigCluTransform``: random-resized crop to ``patch_size``
    (112, scale 0.2-1), then ``augmentation`` (default :func:`default_jigclu_augmentation`), then
    ImageNet normalisation. One view per image (JigClu's ``TwoCropsTransform`` is unused).

    The reference blurs with PIL's ``GaussianBlur(radius=sigma)``, as the default here
    (``blur_impl="pil"``); ``blur_impl="torchvision"`` uses torchvision's 23-tap kernel instead.

    With a :class:`ColorAugmentation`, each patch's crop box is drawn from the generator and read
    from the photo in one resize (the random-resized crop of the quadrant, composed with the
    quadrant's box), and the 4 patches are augmented by :class:`ColorAugmentation` (per PIL patch, or
    as one uint8 batch with ``backend="torch"``). ``decode_min_side``: see
    ``read_rgb_image`` (off by default; a patch is at most 0.8 of the photo's side, so
    ``patch_size / 0.8`` keeps the crops at or above their output resolution on average).

    ``augment_on_device=True`` (needs a :class:`ColorAugmentation`): the same crops and draws, but the
    patches stay uint8 and the colour augmentation and normalisation run on the model's device
    (``d2ssl.data.device_augmentation``); it pays off when that device is a GPU.
    """

    def __init__(
        self,
        patch_size: int = 112,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        cross_ratio: float = 0.3,
        augmentation: Callable | None = None,
        pixel_mean: tuple[float, float, float] = IMAGENET_MEAN,
        pixel_std: tuple[float, float, float] = IMAGENET_STD,
        decode_min_side: int | None = None,
        augment_on_device: bool = False,
    ):
        if not 0.0 <= cross_ratio < 0.5:
            raise ValueError(f"cross_ratio must be in [0, 0.5), got {cross_ratio}")
        self.cross_ratio = cross_ratio
        self.patch_size, self.crop_scale = patch_size, tuple(crop_scale)
        self.decode_min_side = decode_min_side
        self.crop = T.RandomResizedCrop(patch_size, scale=tuple(crop_scale))
        self.augmentation = augmentation if augmentation is not None else default_jigclu_augmentation()
        self.pixel_mean, self.pixel_std = pixel_mean, pixel_std
        if augment_on_device and not isinstance(self.augmentation, ColorAugmentation):
            raise ValueError(
                f"JigsawClusteringMapper: augment_on_device=True needs a ColorAugmentation, got "
                f"{self.augmentation!r}"
            )
        self.augment_on_device = augment_on_device

    def __call__(self, dataset_dict: dict, generator: torch.Generator) -> dict:
        image = read_rgb_image(dataset_dict, decode_min_side=self.decode_min_side)
        boxes = overlapping_quadrant_boxes(*image.size, self.cross_ratio)
        if isinstance(self.augmentation, ColorAugmentation):
            pixels, crops = pil_to_uint8_hwc(image), []
            for box in boxes:
                # PIL's crop rounds a float box: the quadrant as the reference crops it.
                left, upper, right, lower = (int(round(x)) for x in box)
                top, left_in, h, w = random_resized_crop_box(
                    right - left, lower - upper, self.crop_scale, generator
                )
                crops.append(resized_crop(pixels, (upper + top, left + left_in, h, w), self.patch_size))
            crops = stack_channels_last(crops)  # to PIL per view without a transpose copy
            if self.augment_on_device:
                deferred = defer_augmentation(
                    len(crops), [(self.augmentation, None)], generator, self.pixel_mean, self.pixel_std
                )
                return {
                    "patches": crops,
                    "image_id": dataset_dict["image_id"],
                    DEFERRED_AUGMENTATION: {"patches": deferred},
                }
            patches = self.augmentation.apply(crops, generator)
            patches = normalize_uint8(patches, self.pixel_mean, self.pixel_std)
            return {"patches": patches, "image_id": dataset_dict["image_id"]}
        with torch_rng_from(generator):
            crops = [self.augmentation(self.crop(image.crop(box))) for box in boxes]
        patches = torch.stack([to_normalized_tensor(c, self.pixel_mean, self.pixel_std) for c in crops])
        return {"patches": patches, "image_id": dataset_dict["image_id"]}


def assemble_montages(
    patches: torch.Tensor, permutation: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shuffles the patches of a batch and tiles them into 2x2 montages, as JigClu's model does.

    Args:
        patches: ``(N, 4, C, P, P)``, ``patches[i, k]`` = position ``k`` of image ``i``.
        permutation: ``(4N,)`` permutation of the flat patch indices ``k * N + i`` (JigClu's
            position-major order). One permutation over the whole batch: a montage may hold
            patches of any images, including two of the same image.

    Returns:
        ``montages`` ``(N, C, 2P, 2P)``: slot ``s`` (row-major) of montage ``m`` holds flat patch
        ``permutation[s * N + m]``; and, for each slot ``s * N + m`` in that order, the source image
        ``cluster_labels`` ``(4N,)`` (``permutation % N``) and its position in the source image
        ``location_labels`` ``(4N,)`` (``permutation // N``).
    """
    n, k, c, h, w = patches.shape
    if k != NUM_PATCHES or permutation.shape != (NUM_PATCHES * n,):
        raise ValueError(
            f"assemble_montages expects patches (N, {NUM_PATCHES}, C, P, P) and a permutation of "
            f"{NUM_PATCHES}N indices, got {tuple(patches.shape)} and {tuple(permutation.shape)}"
        )
    flat = patches.transpose(0, 1).reshape(NUM_PATCHES * n, c, h, w)
    slots = flat[permutation].view(2, 2, n, c, h, w)  # (slot row, slot column, montage, ...)
    montages = slots.permute(2, 3, 0, 4, 1, 5).reshape(n, c, 2 * h, 2 * w)
    return montages, permutation % n, torch.div(permutation, n, rounding_mode="floor")
