"""Reading one image of a data set dict into an RGB PIL image, whatever its source or mode."""

from __future__ import annotations

import numpy as np
from detectron2.utils.file_io import PathManager
from PIL import Image, ImageOps


class BadImageError(OSError):
    """An image cannot be decoded; the message names the file."""


def _to_rgb(img: Image.Image) -> Image.Image:
    # 16-bit and 32-bit grayscale ("I;16", "I", "F") would be clipped to white by convert("RGB"):
    # rescale their range to 8 bits first.
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.round().astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite on black rather than keep whatever colour the transparent pixels happen to hold.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def read_rgb_image(dataset_dict: dict) -> Image.Image:
    """Returns the image of a data set dict as RGB: from ``image`` (uint8 array) or ``file_name``.

    Raises:
        BadImageError: the file is missing, empty, truncated or not an image.
    """
    if "image" in dataset_dict and not hasattr(dataset_dict["image"], "dim"):
        arr = np.asarray(dataset_dict["image"])
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        return _to_rgb(Image.fromarray(arr))
    path = dataset_dict.get("file_name")
    if path is None:
        raise KeyError(f"data set dict has neither 'image' nor 'file_name': keys {sorted(dataset_dict)}")
    try:
        with PathManager.open(path, "rb") as f:
            img = Image.open(f)
            img.load()  # decode now, inside the try: a truncated file fails here, not later
        img = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadImageError(f"cannot read image {path!r}: {e}") from e
    return _to_rgb(img)
