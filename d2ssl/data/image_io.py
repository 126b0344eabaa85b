"""Reading one image of a data set dict into an RGB PIL image, whatever its source or mode.

Every way an image can be unusable (missing, empty, truncated or not an image file; an array of an
unknown type; fewer pixels than the recipe needs) raises ``BadImageError``, which the training
loader (``SeededMapDataset``) counts and skips. Unusual but valid images are converted:

- ``L``, ``P``, ``1``, ``CMYK``, ``YCbCr``: PIL's ``convert("RGB")``;
- ``RGBA``, ``LA``, ``PA``, ``P`` with transparency: composited on black;
- ``I;16`` (16-bit PNG/TIFF): ``v / 257`` (65535 -> 255, absolute intensities kept);
- ``I`` (32-bit int): kept if in [0, 255], ``v / 257`` if in [0, 65535], else stretched min-max;
- ``F`` (float): ``v * 255`` if in [0, 1], kept if in [0, 255], else stretched min-max.
In-memory arrays (``HxW``, ``HxWx1/3/4`` of any numeric type) follow the same rules.
"""

from __future__ import annotations

import math

import numpy as np
from detectron2.utils.file_io import PathManager
from PIL import Image, ImageOps


class BadImageError(OSError):
    """An image cannot be used; the message names the file (or the image id)."""


def _scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Maps pixels of any numeric type to uint8, keeping absolute intensities where the range is a
    standard one (8 or 16 bits, floats in [0, 1] or [0, 255]) rather than stretching each image."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    values = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(values.min()), float(values.max())
    floating = np.issubdtype(arr.dtype, np.floating)
    if lo >= 0 and floating and hi <= 1.0:
        values = values * 255.0
    elif lo >= 0 and hi <= 255 and arr.dtype.itemsize != 2:
        pass  # 8-bit values held in a wider type (python ints become int64)
    elif lo >= 0 and hi <= 65535 and not floating:
        values = values / 257.0  # 16-bit: 65535 -> 255
    else:
        # No standard range to trust (negative or huge values): stretch this image to 8 bits.
        values = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
    return np.clip(np.round(values), 0, 255).astype(np.uint8)


def _to_rgb(img: Image.Image) -> Image.Image:
    # convert("RGB") clips 16/32-bit grayscale to white: bring them to 8 bits first.
    if img.mode.startswith("I") or img.mode == "F":
        img = Image.fromarray(_scale_to_uint8(np.asarray(img)))
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        # Composite on black rather than keep whatever colour the transparent pixels happen to hold.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def _array_to_image(arr: np.ndarray, name: str) -> Image.Image:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)) or arr.size == 0:
        raise BadImageError(f"image {name} is an array of shape {arr.shape}: need HxW, HxWx1, HxWx3 or HxWx4")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise BadImageError(f"image {name} is an array of dtype {arr.dtype}: need numbers")
    # uint8 HxW, HxWx3, HxWx4 become L, RGB, RGBA.
    return Image.fromarray(np.ascontiguousarray(_scale_to_uint8(arr)))


def image_name(dataset_dict: dict) -> str:
    """How messages name an image: its file, else its id."""
    if "file_name" in dataset_dict:
        return repr(dataset_dict["file_name"])
    return f"image_id={dataset_dict.get('image_id')!r}"


def read_rgb_image(dataset_dict: dict, min_size: int = 1, decode_min_side: int | None = None) -> Image.Image:
    """Returns the image of a data set dict as 8-bit RGB: from ``image`` (an ``HxW[xC]`` array of
    any numeric type) or ``file_name`` (any iopath URI), converted as the module docstring says.

    Args:
        min_size: images whose shorter side is below this many pixels are rejected (a jigsaw grid
            of ``g x g`` cells needs at least ``g`` pixels a side for tiles to differ).
        decode_min_side: a JPEG file is decoded at the smallest size libjpeg's DCT scaling gives
            (1/2, 1/4 or 1/8) whose shorter side is still at least this many pixels (PIL's ``draft``),
            several times faster than a full decode followed by a downscale. ``None`` (default):
            full-size decode. The reduced image is the DCT's own downscale, not PIL's antialiased
            resize: a recipe's resize of it differs from the full-size path by a few levels
            (``benchmarks/throughput.py`` reports the mean absolute difference).

    Raises:
        BadImageError: the file is missing, empty, truncated or not an image; or too small.
    """
    name = image_name(dataset_dict)
    if "image" in dataset_dict and not hasattr(dataset_dict["image"], "dim"):
        img = _to_rgb(_array_to_image(np.asarray(dataset_dict["image"]), name))
    elif "file_name" in dataset_dict:
        try:
            with PathManager.open(dataset_dict["file_name"], "rb") as f:
                img = Image.open(f)
                if decode_min_side and img.format == "JPEG" and min(img.size) > decode_min_side:
                    # draft() keeps both sides >= the requested ones: ask for the shorter side's bound.
                    ratio = decode_min_side / min(img.size)
                    img.draft("RGB", (math.ceil(img.width * ratio), math.ceil(img.height * ratio)))
                img.load()  # decode now, inside the try: a truncated file fails here, not later
            # In place, and no conversion of an image that is RGB already: each would copy the whole
            # decoded photo, on every image of every mapper.
            ImageOps.exif_transpose(img, in_place=True)
            if img.mode != "RGB":
                img = _to_rgb(img)
        except Exception as e:
            # Decoders raise many types on malformed files (OSError, SyntaxError, ValueError,
            # struct.error, DecompressionBombError...); one bad file must not end a long run.
            raise BadImageError(f"cannot read image {name}: {type(e).__name__}: {e}") from e
    else:
        raise KeyError(f"data set dict has neither 'image' nor 'file_name': keys {sorted(dataset_dict)}")
    if min(img.size) < min_size:
        raise BadImageError(
            f"image {name} is {img.width}x{img.height} px, smaller than the minimum of {min_size} px a side"
        )
    return img
