"""Jigsaw permutation sets, tile cutting and seeded augmentation, shared by every mapper."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from collections.abc import Iterator

import numpy as np
import torch
from detectron2.utils.file_io import PathManager
from PIL import ImageEnhance, ImageOps
from torchvision import transforms as T
from torchvision.transforms import functional as F

logger = logging.getLogger(__name__)

# ImageNet statistics in RGB order on [0, 1] (torchvision, VISSL); x255 for detectron2's PIXEL_MEAN/STD.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def generate_permutations(
    num_tiles: int, num_permutations: int, seed: int = 0, method: str = "max_avg"
) -> np.ndarray:
    """Selects ``num_permutations`` permutations of ``num_tiles`` tiles far apart in Hamming distance.

    Algorithm 1 of Noroozi & Favaro (2016) as VISSL's ``extra_scripts/generate_jigsaw_permutations.py``
    runs it: start from all ``num_tiles!`` permutations in lexicographic order, pick the first one at
    random (here from ``seed``, so a set is reproducible), then repeatedly add the remaining
    permutation whose mean (``max_avg``, VISSL's default) or minimum (``max_min``) Hamming distance to
    those already chosen is largest; ties go to the lexicographically first.

    Returns:
        int64 array ``(num_permutations, num_tiles)``, 0-indexed, rows distinct.
    """
    if method not in ("max_avg", "max_min"):
        raise ValueError(f"permutation method must be 'max_avg' or 'max_min', got {method!r}")
    total = int(np.prod(np.arange(1, num_tiles + 1)))
    if not 1 <= num_permutations <= total:
        raise ValueError(
            f"num_permutations={num_permutations} must be between 1 and {num_tiles}! = {total} for "
            f"{num_tiles} tiles"
        )
    all_perms = np.array(list(itertools.permutations(range(num_tiles))), dtype=np.int8)
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(total))]
    available = np.ones(total, dtype=bool)
    available[chosen[0]] = False
    # Running sum (or min) of distances to the chosen set: each step adds one row instead of
    # recomputing the full |chosen| x |remaining| matrix as VISSL does; the selection is the same.
    score = np.zeros(total, dtype=np.float64) if method == "max_avg" else np.full(total, np.inf)
    for _ in range(num_permutations - 1):
        dist = (all_perms != all_perms[chosen[-1]]).sum(axis=1)
        score = score + dist if method == "max_avg" else np.minimum(score, dist)
        j = int(np.argmax(np.where(available, score, -1)))
        chosen.append(j)
        available[j] = False
    return all_perms[chosen].astype(np.int64)


def hamming_distances(perms: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances (number of positions that differ), ``(P, P)``."""
    return (perms[:, None, :] != perms[None, :, :]).sum(axis=2)


def load_or_create_permutations(
    path: str | None, num_tiles: int, num_permutations: int, seed: int = 0, method: str = "max_avg"
) -> np.ndarray:
    """Loads a permutation set from ``path`` (``.npy``), or generates it (and saves it there if given).

    A file holding 1-indexed permutations (Noroozi's MATLAB files) is shifted to 0-indexed, as VISSL
    does. The loaded set is checked: every row must be a permutation of ``range(num_tiles)``.
    """
    if path and PathManager.exists(path):
        with PathManager.open(path, "rb") as f:
            perms = np.load(f)
        if perms.min() == 1:
            perms = perms - 1
        validate_permutations(perms, num_tiles, source=path)
        if num_permutations and len(perms) != num_permutations:
            raise ValueError(
                f"permutation file {path!r} holds {len(perms)} permutations but num_permutations="
                f"{num_permutations}; delete the file or set num_permutations={len(perms)}"
            )
        return perms.astype(np.int64)
    perms = generate_permutations(num_tiles, num_permutations, seed=seed, method=method)
    if path:
        local = PathManager.get_local_path(os.path.dirname(path) or ".")
        os.makedirs(local, exist_ok=True)
        with PathManager.open(path + ".tmp", "wb") as f:
            np.save(f, perms)
        PathManager.mv(path + ".tmp", path)
        logger.info("saved %d permutations of %d tiles to %s", len(perms), num_tiles, path)
    return perms


def validate_permutations(perms: np.ndarray, num_tiles: int, source: str = "permutation set") -> None:
    if perms.ndim != 2 or perms.shape[1] != num_tiles:
        raise ValueError(f"{source}: expected shape (P, {num_tiles}), got {perms.shape}")
    if not (np.sort(perms, axis=1) == np.arange(num_tiles)).all():
        raise ValueError(f"{source}: some rows are not permutations of range({num_tiles})")
    if len(np.unique(perms, axis=0)) != len(perms):
        raise ValueError(f"{source}: contains duplicate permutations")


def cut_tiles(
    image: torch.Tensor, grid: int, tile_size: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Cuts a ``(C, S, S)`` image into ``grid x grid`` cells of ``S // grid`` pixels and takes a random
    ``tile_size`` crop in each (VISSL's ``ImgPatchesFromTensor``: 255 px, 3x3 cells of 85, 64 px tiles,
    so up to 21 px of jitter; the gap stops the network from matching tile borders).

    Tiles come in row-major order: tile ``r * grid + c`` is from row ``r``, column ``c``. (VISSL
    enumerates column-major; the order only relabels positions.)

    Returns:
        ``(grid * grid, C, tile_size, tile_size)``.
    """
    _, height, width = image.shape
    cell = min(height, width) // grid
    if tile_size > cell:
        raise ValueError(
            f"tile_size={tile_size} does not fit a {grid}x{grid} grid on a {height}x{width} crop "
            f"(cells of {cell} px); use crop_size >= {grid * tile_size} or a smaller tile_size"
        )
    jitter = torch.randint(0, cell - tile_size + 1, (grid, grid, 2), generator=generator).tolist()
    tiles = []
    for r in range(grid):
        for c in range(grid):
            y, x = r * cell + jitter[r][c][0], c * cell + jitter[r][c][1]
            tiles.append(image[:, y : y + tile_size, x : x + tile_size])
    return torch.stack(tiles)


def normalize_per_tile(tiles: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Standardises each tile by its own mean and std over all pixels (Noroozi & Favaro's trick
    against low-level shortcuts such as chromatic aberration). ``(T, C, H, W)``."""
    flat = tiles.flatten(1)
    mean = flat.mean(dim=1).view(-1, 1, 1, 1)
    std = flat.std(dim=1).view(-1, 1, 1, 1)
    return (tiles - mean) / (std + eps)


@contextlib.contextmanager
def torch_rng_from(generator: torch.Generator) -> Iterator[None]:
    """Runs torchvision transforms (which draw from torch's global RNG) from ``generator``.

    The global RNG is forked, seeded from ``generator`` and restored on exit, so a mapper's views are
    a pure function of the generator and the training process's own random state is untouched.
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def to_normalized_tensor(image, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """PIL RGB image -> float ``(3, H, W)`` normalised with ``mean``/``std`` (on [0, 1])."""
    return F.normalize(F.to_tensor(image), mean, std)


def color_augmentation(
    color_jitter: tuple[float, float, float, float] | None = (0.4, 0.4, 0.4, 0.1),
    color_jitter_prob: float = 0.8,
    grayscale_prob: float = 0.2,
    gaussian_blur_prob: float = 0.0,
    blur_sigma: tuple[float, float] = (0.1, 2.0),
    horizontal_flip: bool = True,
    photometric_prob: float = 0.0,
):
    """The photometric recipe shared by the methods (torchvision transforms on PIL images).

    Defaults are MoCo-v2/JigClu's (jitter 0.4/0.4/0.4/0.1 with p 0.8, grayscale p 0.2); the
    ``gaussian_blur_prob=0.5`` variant is VISSL's ``photo_gblur`` / SimCLR blur with sigma in [0.1, 2].
    ``photometric_prob=0.66`` adds PIRL's ``ImgPilRandomPhotometric`` after the jitter.
    """
    ops = []
    if color_jitter is not None:
        ops.append(T.RandomApply([T.ColorJitter(*color_jitter)], p=color_jitter_prob))
    if photometric_prob > 0:
        ops.append(T.RandomApply([RandomPhotometric()], p=photometric_prob))
    if grayscale_prob > 0:
        ops.append(T.RandomGrayscale(p=grayscale_prob))
    if gaussian_blur_prob > 0:
        # kernel 23 covers 3 sigma of the largest sigma at 224 px, as in SimCLR's 10%-of-side kernel.
        ops.append(T.RandomApply([T.GaussianBlur(kernel_size=23, sigma=blur_sigma)], p=gaussian_blur_prob))
    if horizontal_flip:
        ops.append(T.RandomHorizontalFlip())
    return T.Compose(ops)


def photo_gblur_augmentation(strength: float = 1.0):
    """VISSL's ``transforms/photo_gblur.yaml`` (the recommended PIRL recipe, SimCLR's colour
    distortion): jitter ``(0.8, 0.8, 0.8, 0.2) * strength`` with p 0.8, grayscale p 0.2, Gaussian
    blur with p 0.5 (sigma in [0.1, 2]), horizontal flip."""
    jitter = (0.8 * strength, 0.8 * strength, 0.8 * strength, 0.2 * strength)
    return color_augmentation(
        color_jitter=jitter, color_jitter_prob=0.8, grayscale_prob=0.2, gaussian_blur_prob=0.5
    )


class RandomPhotometric:
    """PIRL's photometric transform (VISSL's ``ImgPilRandomPhotometric`` without its own p): posterize
    to 4-8 bits, sharpness factor in [0.1, 1.9), solarize above a threshold in 0-256, autocontrast, all
    applied in turn to a PIL image. Values are drawn from torch's RNG, so ``torch_rng_from`` seeds them."""

    def __call__(self, image):
        bits = int(torch.randint(4, 9, (1,)))
        sharpness = 0.1 + 1.8 * float(torch.rand(1))
        threshold = int(torch.randint(0, 257, (1,)))
        image = ImageOps.posterize(image, bits)
        image = ImageEnhance.Sharpness(image).enhance(sharpness)
        image = ImageOps.solarize(image, threshold)
        return ImageOps.autocontrast(image)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(bits 4-8, sharpness 0.1-1.9, solarize 0-256, autocontrast)"
