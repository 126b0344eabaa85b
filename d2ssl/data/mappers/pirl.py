"""PIRL's two views (Misra & van der Maaten 2019): the image, and jigsaw tiles of another crop of it.

VISSL's ``ImgPilToPatchesAndImage`` followed by per-view transforms
(``configs/config/pretrain/pirl/pirl_jigsaw_4node_resnet50.yaml``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from d2ssl.data.color import ColorAugmentation, torch_rng_from
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
from d2ssl.data.tiles import cut_tiles, tile_corners, tiles_at


class PIRLMapper:
    """Dataset dict -> ``{"image": (3, S, S), "tiles": (T, 3, t, t), "tile_order": (T,), "image_id": int}``.

    - ``image``: a ``RandomResizedCrop(image_size, image_scale)`` of the image (224, 0.08-1).
    - ``tiles``: an independent ``RandomResizedCrop(patch_crop_size, patch_crop_scale)`` (255, 0.6-1)
      cut into ``grid x grid`` cells with a random ``tile_size`` crop in each (3x3 cells of 85 px,
      64 px tiles), shuffled uniformly over all ``T!`` orders: slot ``s`` holds the tile of cell
      ``tile_order[s]`` (cells numbered row-major, ``r * grid + c``). PIRL has no permutation set and
      no permutation label: the order only keeps the concatenated tile features from encoding position.
    - ``augmentation`` (PIL -> PIL) runs independently on the image and on every tile, then ImageNet
      normalisation. VISSL: ``color_augmentation(color_jitter=(0.4, 0.4, 0.4, 0.2),
      color_jitter_prob=1, photometric_prob=0.66, grayscale_prob=0.2)`` (flip included), or
      ``photo_gblur_augmentation()``.

    With a :class:`ColorAugmentation` (or none), every parameter is drawn from the generator and the
    views stay PIL images until :class:`ColorAugmentation` augments them (per view with its
    ``"pil"`` backend; as two uint8 batches, the image and the tiles, with ``"torch"``); any other
    callable runs on PIL views under :func:`torch_rng_from`. ``decode_min_side``: see
    ``read_rgb_image`` (off by default).

    ``augment_on_device=True`` (needs a :class:`ColorAugmentation` or none): the same crops and draws,
    but ``image`` and ``tiles`` stay uint8 and the colour augmentation and normalisation run on the
    model's device (``d2ssl.data.device_augmentation``); it pays off when that device is a GPU.
    """

    def __init__(
        self,
        augmentation: Callable | None = None,
        image_size: int = 224,
        image_scale: tuple[float, float] = (0.08, 1.0),
        patch_crop_size: int = 255,
        patch_crop_scale: tuple[float, float] = (0.6, 1.0),
        grid: int = 3,
        tile_size: int = 64,
        pixel_mean: tuple[float, float, float] = IMAGENET_MEAN,
        pixel_std: tuple[float, float, float] = IMAGENET_STD,
        decode_min_side: int | None = None,
        augment_on_device: bool = False,
    ):
        if augment_on_device and not (augmentation is None or isinstance(augmentation, ColorAugmentation)):
            raise ValueError(
                f"PIRLMapper: augment_on_device=True needs a ColorAugmentation (or no augmentation), got "
                f"{augmentation!r}"
            )
        if tile_size > patch_crop_size // grid:
            raise ValueError(
                f"tile_size={tile_size} does not fit a {grid}x{grid} grid on patch_crop_size="
                f"{patch_crop_size} (cells of {patch_crop_size // grid} px): need tile_size <= "
                "patch_crop_size // grid"
            )
        self.augmentation = augmentation
        self.image_size, self.image_scale = image_size, tuple(image_scale)
        self.patch_crop_size, self.patch_crop_scale = patch_crop_size, tuple(patch_crop_scale)
        self.decode_min_side = decode_min_side
        self.image_crop = T.RandomResizedCrop(image_size, scale=tuple(image_scale))
        self.patch_crop = T.RandomResizedCrop(patch_crop_size, scale=tuple(patch_crop_scale))
        self.grid = grid
        self.tile_size = tile_size
        self.pixel_mean, self.pixel_std = pixel_mean, pixel_std
        self.augment_on_device = augment_on_device

    @property
    def num_tiles(self) -> int:
        return self.grid * self.grid

    def __call__(self, dataset_dict: dict, generator: torch.Generator) -> dict:
        image = read_rgb_image(dataset_dict, decode_min_side=self.decode_min_side)
        if self.augmentation is None or isinstance(self.augmentation, ColorAugmentation):
            return self._fast_views(image, generator, dataset_dict["image_id"])
        with torch_rng_from(generator):
            views = [self.image_crop(image)]
            patch_crop = torch.from_numpy(np.array(self.patch_crop(image))).permute(2, 0, 1)
            # Cut the uint8 crop, as VISSL does: each tile is then augmented on its own, like a photo.
            tiles = cut_tiles(patch_crop, self.grid, self.tile_size)
            tile_order = torch.randperm(self.num_tiles)
            views += [Image.fromarray(tile.permute(1, 2, 0).numpy()) for tile in tiles[tile_order]]
            if self.augmentation is not None:
                views = [self.augmentation(view) for view in views]
        tensors = [to_normalized_tensor(view, self.pixel_mean, self.pixel_std) for view in views]
        return {
            "image": tensors[0],
            "tiles": torch.stack(tensors[1:]),
            "tile_order": tile_order,
            "image_id": dataset_dict["image_id"],
        }

    def _fast_views(self, image, generator: torch.Generator, image_id) -> dict:
        view, tiles, tile_order = self._crops(image, generator)
        if self.augment_on_device:
            # The loader path's next draws: the image's parameters, then the tiles'.
            recipes = [(self.augmentation, None)] if self.augmentation is not None else []
            mean, std = self.pixel_mean, self.pixel_std
            return {
                "image": view,
                "tiles": tiles,
                "tile_order": tile_order,
                "image_id": image_id,
                DEFERRED_AUGMENTATION: {
                    "image": defer_augmentation(1, recipes, generator, mean, std),
                    "tiles": defer_augmentation(len(tiles), recipes, generator, mean, std),
                },
            }
        if self.augmentation is not None:
            view = self.augmentation.apply(view[None], generator)[0]
            tiles = self.augmentation.apply(tiles, generator)
        return self._normalized(view, tiles, tile_order, image_id)

    def _crops(self, image: Image.Image, generator: torch.Generator):
        """uint8 ``(3, S, S)`` image view, ``(T, 3, t, t)`` shuffled tiles and the tile order; every
        draw from ``generator`` (the image's crop, the patch crop, the tile jitter, the order). Both
        crops are ``RandomResizedCrop``'s (:func:`~d2ssl.data.resize.resized_crop`)."""
        pixels = pil_to_uint8_hwc(image)
        top, left, h, w = random_resized_crop_box(image.width, image.height, self.image_scale, generator)
        view = resized_crop(pixels, (top, left, h, w), self.image_size)
        top, left, h, w = random_resized_crop_box(
            image.width, image.height, self.patch_crop_scale, generator
        )
        size = self.patch_crop_size
        patch_crop = resized_crop(pixels, (top, left, h, w), size)
        corners = tile_corners(size, size, self.grid, self.tile_size, generator)
        tile_order = torch.randperm(self.num_tiles, generator=generator)
        tiles = tiles_at(patch_crop, [corners[i] for i in tile_order.tolist()], self.tile_size)
        return view, tiles, tile_order

    def _normalized(self, view: torch.Tensor, tiles: torch.Tensor, tile_order: torch.Tensor, image_id):
        # uint8 (3, H, W) view and (T, 3, t, t) tiles, augmented -> the mapper's output.
        return {
            "image": normalize_uint8(view, self.pixel_mean, self.pixel_std),
            "tiles": normalize_uint8(tiles, self.pixel_mean, self.pixel_std),
            "tile_order": tile_order,
            "image_id": image_id,
        }
