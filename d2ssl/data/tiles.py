"""Tiles of a square crop: a grid of jittered squares (Jigsaw, PIRL), stacked in PIL's layout."""

from __future__ import annotations

from collections.abc import Sequence

import torch


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
    return tiles_at(image, tile_corners(height, width, grid, tile_size, generator), tile_size)


def tiles_at(image: torch.Tensor, corners: Sequence[tuple[int, int]], tile_size: int) -> torch.Tensor:
    """The ``tile_size`` squares of a ``(C, S, S)`` image at ``corners`` (``(top, left)``), in that
    order: ``(len(corners), C, tile_size, tile_size)`` in channels-last layout
    (:func:`stack_channels_last`)."""
    return stack_channels_last([image[:, y : y + tile_size, x : x + tile_size] for y, x in corners])


def stack_channels_last(views: Sequence[torch.Tensor]) -> torch.Tensor:
    """``(C, h, w)`` views stacked as ``(n, C, h, w)`` with PIL's interleaved (channels-last) layout, so
    that each view converts to a PIL image (:func:`uint8_to_pil`) without a transpose copy."""
    return torch.stack([view.permute(1, 2, 0) for view in views]).permute(0, 3, 1, 2)


def tile_corners(
    height: int, width: int, grid: int, tile_size: int, generator: torch.Generator | None = None
) -> list[tuple[int, int]]:
    """The ``(top, left)`` corners of :func:`cut_tiles`'s tiles, row-major (the same draws)."""
    cell = min(height, width) // grid
    if tile_size > cell:
        raise ValueError(
            f"tile_size={tile_size} does not fit a {grid}x{grid} grid on a {height}x{width} crop "
            f"(cells of {cell} px); use crop_size >= {grid * tile_size} or a smaller tile_size"
        )
    # VISSL's ImgPatchesFromTensor (and PIRL's tiles, which use it) draws each offset with
    # np.random.randint(0, cell - tile): 0..cell-tile-1, so neighbouring tiles never touch (a 255 crop:
    # offsets 0..20 in 85 px cells). A tile as large as its cell has the one offset 0.
    jitter = torch.randint(0, max(cell - tile_size, 1), (grid, grid, 2), generator=generator).tolist()
    return [
        (r * cell + jitter[r][c][0], c * cell + jitter[r][c][1]) for r in range(grid) for c in range(grid)
    ]


def normalize_per_tile(tiles: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Standardises each tile by its own mean and std over all pixels (Noroozi & Favaro's trick
    against low-level shortcuts such as chromatic aberration). ``(T, C, H, W)``."""
    flat = tiles.flatten(1)
    mean = flat.mean(dim=1).view(-1, 1, 1, 1)
    std = flat.std(dim=1).view(-1, 1, 1, 1)
    return (tiles - mean) / (std + eps)
