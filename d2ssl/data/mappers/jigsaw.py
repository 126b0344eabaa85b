"""Jigsaw puzzles (Noroozi & Favaro 2016) with VISSL's recipe (``configs/config/pretrain/jigsaw``)."""

from __future__ import annotations

import numpy as np
import torch

from d2ssl.data.color import ColorAugmentation, grayscale
from d2ssl.data.image_io import read_rgb_image
from d2ssl.data.permutations import validate_permutations
from d2ssl.data.resize import IMAGENET_MEAN, IMAGENET_STD, normalize_uint8, pil_to_uint8_hwc, resize_uint8
from d2ssl.data.tiles import normalize_per_tile, tile_corners, tiles_at


class JigsawMapper:
    """Dataset dict -> ``{"tiles": (T, 3, t, t), "perm_index": int, "image_id": int}``.

    VISSL's ``jigsaw_8gpu_resnet.yaml``: resize the shorter side to 256, random horizontal flip,
    random 255 crop, grayscale with p 0.66, ImageNet normalisation of the whole crop, a 3x3 grid of
    85 px cells with a random 64 px tile in each, then tiles shuffled by a permutation drawn
    uniformly from the set; the label is the permutation's row. Output slot ``s`` holds original tile
    ``permutations[perm_index][s]``.

    ``per_tile_normalization=True`` standardises each tile by its own statistics (Noroozi's
    original code; VISSL normalises the whole crop once, the default here).

    The resize is torch's antialiased bilinear on uint8 (:func:`~d2ssl.data.resize.resize_uint8`:
    PIL's filter, within 1 grey level of it on ~0.1% of the values); the crop is
    flipped (drawn before the crop in VISSL; a flipped crop at a uniform position has the same law)
    and the tiles cut from it are made grey (PIL's exact ``L`` formula) and normalised: only their
    pixels, per pixel, so equal to normalising the crop. Every parameter comes from the generator.
    ``decode_min_side``: see ``read_rgb_image`` (off by default).
    """

    def __init__(
        self,
        permutations: np.ndarray,
        grid: int = 3,
        resize_size: int = 256,
        crop_size: int = 255,
        tile_size: int = 64,
        grayscale_prob: float = 0.66,
        per_tile_normalization: bool = False,
        pixel_mean: tuple[float, float, float] = IMAGENET_MEAN,
        pixel_std: tuple[float, float, float] = IMAGENET_STD,
        decode_min_side: int | None = None,
    ):
        permutations = np.asarray(permutations)
        validate_permutations(permutations, grid * grid)
        if tile_size > crop_size // grid:
            raise ValueError(
                f"tile_size={tile_size} does not fit a {grid}x{grid} grid on crop_size={crop_size} "
                f"(cells of {crop_size // grid} px): need tile_size <= crop_size // grid"
            )
        if resize_size < crop_size:
            raise ValueError(
                f"resize_size={resize_size} < crop_size={crop_size}: every crop would be padded with black; "
                f"need resize_size >= crop_size"
            )
        self.permutations = torch.as_tensor(permutations, dtype=torch.long)
        self.grid = grid
        self.tile_size = tile_size
        self.per_tile_normalization = per_tile_normalization
        self.pixel_mean, self.pixel_std = pixel_mean, pixel_std
        self.resize_size, self.crop_size, self.grayscale_prob = resize_size, crop_size, grayscale_prob
        self.decode_min_side = decode_min_side
        self.gray = ColorAugmentation(
            color_jitter=None, grayscale_prob=grayscale_prob, horizontal_flip=True
        )

    @property
    def num_permutations(self) -> int:
        return len(self.permutations)

    def __call__(self, dataset_dict: dict, generator: torch.Generator) -> dict:
        # An image narrower than the grid would give tiles cut from the same pixels.
        image = read_rgb_image(dataset_dict, min_size=self.grid, decode_min_side=self.decode_min_side)
        # VISSL's order of draws: crop position, grayscale, flip, tile jitter, permutation.
        new_h, new_w = self._resized_size(image.width, image.height)
        top = int(torch.randint(0, new_h - self.crop_size + 1, (1,), generator=generator))
        left = int(torch.randint(0, new_w - self.crop_size + 1, (1,), generator=generator))
        params = self.gray.draw(1, generator)
        corners = tile_corners(self.crop_size, self.crop_size, self.grid, self.tile_size, generator)
        perm_index = int(torch.randint(len(self.permutations), (1,), generator=generator))

        resized = resize_uint8(pil_to_uint8_hwc(image), (new_h, new_w))
        crop = resized[:, top : top + self.crop_size, left : left + self.crop_size]
        if bool(params["flip"]):
            crop = crop.flip(-1)
        order = self.permutations[perm_index].tolist()
        tiles = tiles_at(crop, [corners[i] for i in order], self.tile_size)
        if bool(params.get("grayscale", False)):
            tiles = grayscale(tiles)
        # Normalisation is per pixel: the tiles' pixels only, not the whole crop's (VISSL's order).
        tiles = normalize_uint8(tiles, self.pixel_mean, self.pixel_std)
        if self.per_tile_normalization:
            tiles = normalize_per_tile(tiles)
        return {"tiles": tiles, "perm_index": perm_index, "image_id": dataset_dict["image_id"]}

    def _resized_size(self, width: int, height: int) -> tuple[int, int]:
        """``(h, w)`` of torchvision's ``Resize(resize_size)`` on PIL: the shorter side becomes
        ``resize_size``, the longer one truncated."""
        if width <= height:
            return int(self.resize_size * height / width), self.resize_size
        return self.resize_size, int(self.resize_size * width / height)
