"""Pixels between PIL and torch: uint8 layouts, antialiased resizing, random resized crops drawn from
a ``torch.Generator``, and ImageNet normalisation."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F_nn
from torchvision.transforms import functional as F

# ImageNet statistics in RGB order on [0, 1] (torchvision, VISSL); x255 for detectron2's PIXEL_MEAN/STD.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_normalized_tensor(image, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """PIL RGB image -> float ``(3, H, W)`` normalised with ``mean``/``std`` (on [0, 1])."""
    return F.normalize(F.to_tensor(image), mean, std)


def pil_to_uint8(image: Image.Image) -> torch.Tensor:
    """PIL RGB image -> uint8 ``(3, H, W)``."""
    return torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy())


def uint8_to_pil(image: torch.Tensor) -> Image.Image:
    """uint8 ``(3, H, W)`` -> PIL RGB image."""
    return Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())


def pil_to_uint8_hwc(image: Image.Image) -> torch.Tensor:
    """PIL RGB image -> uint8 ``(3, H, W)`` over the pixels in PIL's interleaved order (a channels-last
    view, no transpose copy): the layout :func:`resize_uint8`'s vectorised kernels read."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


def resize_uint8(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 ``(3, H, W)`` or ``(n, 3, H, W)`` -> uint8 resized to ``size = (h, w)`` with torch's
    antialiased bilinear filter (PIL's ``BILINEAR`` resize: the same triangle filter widened by the
    scale) in torch's vectorised uint8 kernels (``benchmarks/jigsaw_floor.py`` times both). Equal to
    PIL's resize within 1 grey level on about 0.1% of the values (tests). The kernels read and write
    channels-last pixels: the input is brought to that layout (no copy for :func:`pil_to_uint8_hwc`'s
    tensors) and the output keeps it (``out.permute(1, 2, 0)`` is contiguous, PIL's layout)."""
    batch = (images if images.dim() == 4 else images[None]).contiguous(memory_format=torch.channels_last)
    out = F_nn.interpolate(batch, size=size, mode="bilinear", antialias=True, align_corners=False)
    out = out.contiguous(memory_format=torch.channels_last)  # some input shapes come back CHW
    return out if images.dim() == 4 else out[0]


def normalize_uint8(images: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 ``(..., 3, H, W)`` -> float ``(x / 255 - mean) / std`` in one multiply-add per pixel
    (equal to :func:`to_normalized_tensor` to float32 rounding)."""
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=images.device).view(3, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std)], device=images.device).view(3, 1, 1)
    # Whatever the input's layout (channels-last from resize_uint8), the output is contiguous.
    return torch.addcmul(shift, images.to(torch.float32, memory_format=torch.contiguous_format), scale)



def random_resized_crop_box(
    width: int,
    height: int,
    scale: tuple[float, float],
    generator: torch.Generator,
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params`` drawn from ``generator``: area fraction uniform
    in ``scale``, log aspect ratio uniform in ``log(ratio)``, up to 10 tries, else the central crop
    clamped to ``ratio``. Returns ``(top, left, h, w)``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    draws = torch.rand(10, 4, generator=generator, dtype=torch.float64).tolist()
    for u_area, u_ratio, u_top, u_left in draws:
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u_area)
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u_ratio)
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            # torchvision: randint(0, height - h + 1); floor of a uniform gives the same law.
            return int(u_top * (height - h + 1)), int(u_left * (width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resized_crop(pixels: torch.Tensor, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    """``(top, left, h, w)`` region of uint8 ``(3, H, W)`` pixels (:func:`pil_to_uint8_hwc`) resized to
    uint8 ``(3, size, size)``: ``F.resized_crop`` on PIL (crop, then PIL's antialiased bilinear resize
    of the crop) as torch's uint8 kernel (:func:`resize_uint8`, within 1 grey level of PIL's), in
    channels-last layout."""
    top, left, h, w = box
    return resize_uint8(pixels[:, top : top + h, left : left + w], (size, size))
