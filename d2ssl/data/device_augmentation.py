"""Photometric augmentation on the model's device: the loader decodes, crops and draws; the model augments.

With ``augment_on_device=True``, a mapper (``PIRLMapper``, ``JigsawClusteringMapper``, ``ImageMapper``)
reads and crops its views as usual and draws every random parameter from its generator in exactly the
order of its loader path (so one generator state describes the same views on both paths, and the data
order, resume and parameter laws are unchanged), but returns the views as uint8 and, under
:data:`DEFERRED_AUGMENTATION`, one :class:`DeferredAugmentation` per view key holding the drawn
parameters. ``SSLMetaArch.stack`` then calls :func:`augment_on_device`: the batch's uint8 views go to the
model's device, :class:`ColorAugmentation`'s batch kernels run there once per operation for the whole
batch (the samples' parameters concatenated), and the views are normalised with the mapper's mean/std.

The views equal the loader path's (PIL operations per view) within the batch kernels' tolerance: at
most 1 grey level apart on under 1% of the values (float32 sums of sharpness and blur rounding a .5
the other way); hue and PIL's Gaussian blur are exact. It pays off when the model runs on a GPU: the
loader's CPU time per image then drops to decoding and cropping.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from d2ssl.data.color import ColorAugmentation
from d2ssl.data.resize import IMAGENET_MEAN, IMAGENET_STD, normalize_uint8

# The key of a mapped dict holding {view key: DeferredAugmentation}.
DEFERRED_AUGMENTATION = "deferred_augmentation"


@dataclass
class DeferredAugmentation:
    """The colour augmentation and normalisation left for the model, for one view key of one sample.

    ``steps``: ``(recipe, params, contrast_means)`` applied in order to the key's ``n`` views, with
    ``params`` as :meth:`ColorAugmentation.draw` returned them (each ``(n,)``, or ``(n, 4)`` for the
    jitter order) and ``contrast_means`` ``(1,)`` or ``(n,)`` or ``None`` (see
    :meth:`ColorAugmentation.apply`). The recipe travels with the parameters so that the model needs
    no configuration of its own.
    """

    steps: list[tuple[ColorAugmentation, dict[str, torch.Tensor], torch.Tensor | None]] = field(
        default_factory=list
    )
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD


def defer_augmentation(
    num_views: int,
    recipes: Sequence[tuple[ColorAugmentation, torch.Tensor | None]],
    generator: torch.Generator,
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN,
    pixel_std: tuple[float, float, float] = IMAGENET_STD,
) -> DeferredAugmentation:
    """Draws the parameters of ``num_views`` views for each ``(recipe, contrast_means)`` in turn, as
    :meth:`ColorAugmentation.apply` would (one ``draw`` per recipe, in order), and keeps them with the
    normalisation for :func:`augment_on_device`."""
    steps = [(recipe, recipe.draw(num_views, generator), means) for recipe, means in recipes]
    return DeferredAugmentation(steps, tuple(pixel_mean), tuple(pixel_std))


def augment_on_device(batched_inputs: Sequence[dict], key: str, device: torch.device | str) -> torch.Tensor:
    """The deferred views of ``key`` of a batch, augmented and normalised on ``device``.

    Args:
        batched_inputs: mapped dicts whose ``key`` holds uint8 views ``(..., 3, H, W)`` (the same shape
            in every sample: ``(3, H, W)`` for one view, ``(T, 3, h, w)`` for several) and whose
            :data:`DEFERRED_AUGMENTATION` maps ``key`` to a :class:`DeferredAugmentation`.

    Returns:
        float32 ``(N, ..., 3, H, W)`` on ``device``: each sample's views as its mapper's loader path
        gives them (within the tolerance of the module docstring).
    """
    views = torch.stack([x[key] for x in batched_inputs])
    if views.dtype != torch.uint8:
        raise ValueError(f"augment_on_device: {key!r} must hold uint8 views, got {views.dtype}")
    flat = views.to(device, non_blocking=True).reshape(-1, *views.shape[-3:])
    # The kernels' arithmetic is PIL's: no autocast (the trainer's AMP would run the blur's matrix
    # products in half precision), no TF32 matrix products, no autograd.
    with torch.no_grad(), torch.autocast(flat.device.type, enabled=False), _full_float32_matmul():
        flat = _augment(flat, [x[DEFERRED_AUGMENTATION][key] for x in batched_inputs], key)
    return flat.view(views.shape)


def stack_views(batched_inputs: Sequence[dict], key: str, device: torch.device | str) -> torch.Tensor:
    """``batched_inputs[i][key]`` stacked on ``device``; views a mapper left un-augmented (its
    ``augment_on_device=True``) are augmented and normalised there (:func:`augment_on_device`)."""
    if key in batched_inputs[0].get(DEFERRED_AUGMENTATION, {}):
        return augment_on_device(batched_inputs, key, device)
    return torch.stack([x[key] for x in batched_inputs]).to(device, non_blocking=True)


@contextlib.contextmanager
def _full_float32_matmul() -> Iterator[None]:
    # torch.set_float32_matmul_precision("high") (TF32 on a GPU) would leave the blur's float32
    # matrix products a few grey levels off.
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)


def _augment(flat: torch.Tensor, deferred: list[DeferredAugmentation], key: str) -> torch.Tensor:
    per_sample = flat.shape[0] // len(deferred)
    first = deferred[0]
    if any(len(d.steps) != len(first.steps) for d in deferred):
        raise ValueError(f"augment_on_device: the samples of {key!r} come from different recipes")
    for j, (recipe, params, means) in enumerate(first.steps):
        # One kernel per operation for the whole batch: the samples' parameters, concatenated in the
        # order of the flattened views (sample-major).
        batch_params = {name: torch.cat([d.steps[j][1][name] for d in deferred]) for name in params}
        if any(len(value) != len(flat) for value in batch_params.values()):
            raise ValueError(
                f"augment_on_device: {key!r} holds {len(flat)} views but the samples' parameters describe "
                f"{[len(v) for v in batch_params.values()][0]}"
            )
        batch_means = None
        if means is not None:
            batch_means = torch.cat([d.steps[j][2].expand(per_sample) for d in deferred])
        flat = recipe.apply_params_torch(flat, batch_params, batch_means)
    return normalize_uint8(flat, first.pixel_mean, first.pixel_std)
