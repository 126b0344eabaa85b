"""One augmented view per image, with its data set index: NPID's input, and any single-view recipe."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torchvision import transforms as T

from d2ssl.data.color import ColorAugmentation, pil_grey_level, torch_rng_from
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


def _as_color_augmentation(transform) -> ColorAugmentation | None:
    """The :class:`ColorAugmentation` doing what ``transform`` does, if there is one."""
    if isinstance(transform, ColorAugmentation):
        return transform
    if isinstance(transform, T.RandomHorizontalFlip) and transform.p == 0.5:
        return ColorAugmentation(color_jitter=None, grayscale_prob=0.0, horizontal_flip=True)
    if isinstance(transform, T.ColorJitter):
        spans = []
        for name, centre in (("brightness", 1.0), ("contrast", 1.0), ("saturation", 1.0), ("hue", 0.0)):
            bounds = getattr(transform, name)
            if bounds is None:
                spans.append(0.0)
                continue
            # torchvision stores x as [max(0, 1 - x), 1 + x] (hue: [-x, x]); other ranges have no equivalent.
            span = float(bounds[1]) - centre
            low = -span if centre == 0.0 else max(0.0, 1.0 - span)
            if span < 0 or abs(float(bounds[0]) - low) > 1e-9:
                return None
            spans.append(span)
        return ColorAugmentation(color_jitter=tuple(spans), color_jitter_prob=1.0, grayscale_prob=0.0,
                                 horizontal_flip=False)
    return None


def fast_plan(transforms: Sequence[Callable]) -> tuple[list, T.RandomResizedCrop, list] | None:
    """Splits ``[colour ops..., RandomResizedCrop, colour ops...]`` into the colour ops before and after
    the crop (as :class:`ColorAugmentation`); ``None`` for any other list."""
    crops = [i for i, t in enumerate(transforms) if isinstance(t, T.RandomResizedCrop)]
    if len(crops) != 1:
        return None
    crop = transforms[crops[0]]
    if crop.interpolation != T.InterpolationMode.BILINEAR or crop.size[0] != crop.size[1]:
        return None
    before = [_as_color_augmentation(t) for t in transforms[: crops[0]]]
    after = [_as_color_augmentation(t) for t in transforms[crops[0] + 1 :]]
    if any(a is None for a in before + after):
        return None
    if any(a.horizontal_flip or a.gaussian_blur_prob or a.photometric_prob for a in before):
        return None
    return before, crop, after


class ImageMapper:
    """Dataset dict -> ``{"image": (3, H, W), "image_id": int[, "label": int]}``.

    ``transforms`` (PIL -> PIL, e.g. torchvision's) run in the given order, then ImageNet
    normalisation. ``image_id`` is the image's position in the data set (NPID/PIRL's memory-bank row);
    ``label`` is carried when the dict has one (kNN monitoring, ClusterFit pseudo-labels).

    NPID's recipe (VISSL ``npid_8gpu_resnet.yaml``): ``[ColorJitter(0.4, 0.4, 0.4, 0.4),
    RandomResizedCrop(224), RandomHorizontalFlip()]``: the jitter sees the whole image.

    Fast path (when ``transforms`` is colour jitter / :class:`ColorAugmentation` around one square
    bilinear ``RandomResizedCrop``, as every d2ssl recipe): parameters drawn from the generator, the
    crop read in one resize, the colour ops on the uint8 crop. Jitter listed before the crop runs
    after it with the contrast grey level of the whole photo, as the reference computes it; the
    pointwise ops commute with the resize up to rounding and clipping (and hue, a pointwise but
    nonlinear map, at edges). Any other list runs as given on PIL images.

    ``augment_on_device=True`` (needs the fast path): the same crop and draws, but ``image`` stays
    uint8 and the colour ops and normalisation run on the model's device
    (``d2ssl.data.device_augmentation``); it pays off when that device is a GPU.
    """

    def __init__(
        self,
        transforms: Sequence[Callable],
        pixel_mean: tuple[float, float, float] = IMAGENET_MEAN,
        pixel_std: tuple[float, float, float] = IMAGENET_STD,
        augment_on_device: bool = False,
    ):
        self.augment = T.Compose(list(transforms))
        self.plan = fast_plan(list(transforms))
        self.pixel_mean, self.pixel_std = pixel_mean, pixel_std
        if augment_on_device and self.plan is None:
            raise ValueError(
                "ImageMapper: augment_on_device=True needs transforms of the fast path (colour jitter / "
                f"ColorAugmentation around one square bilinear RandomResizedCrop), got {list(transforms)}"
            )
        self.augment_on_device = augment_on_device

    def __call__(self, dataset_dict: dict, generator: torch.Generator) -> dict:
        image = read_rgb_image(dataset_dict)
        deferred = None
        if self.augment_on_device:
            tensor, deferred = self._deferred_view(image, generator)
        elif self.plan is not None:
            tensor = self._fast_view(image, generator)
        else:
            with torch_rng_from(generator):
                tensor = to_normalized_tensor(self.augment(image), self.pixel_mean, self.pixel_std)
        out = {
            "image": tensor,
            "image_id": dataset_dict["image_id"],
        }
        if "label" in dataset_dict:
            out["label"] = dataset_dict["label"]
        if deferred is not None:
            out[DEFERRED_AUGMENTATION] = {"image": deferred}
        return out

    def _whole_photo_grey(self, image: Image.Image) -> torch.Tensor | None:
        # Jitter before the crop: contrast blends with the whole photo's grey level (PIL: rounded mean of L).
        if not self.plan[0]:
            return None
        return torch.tensor([float(pil_grey_level(image))])

    def _crop_and_recipes(self, image, generator: torch.Generator):
        # The fast path's crop (uint8), then its colour ops in order, each with its contrast grey level.
        before, crop, after = self.plan
        means = self._whole_photo_grey(image)
        box = random_resized_crop_box(
            image.width, image.height, tuple(crop.scale), generator, tuple(crop.ratio)
        )
        recipes = [(op, means) for op in before] + [(op, None) for op in after]
        return resized_crop(pil_to_uint8_hwc(image), box, crop.size[0]), recipes

    def _deferred_view(self, image, generator: torch.Generator):
        # _fast_view's crop and draws (one per colour op, in order); the ops left for the model's device.
        view, recipes = self._crop_and_recipes(image, generator)
        return view, defer_augmentation(1, recipes, generator, self.pixel_mean, self.pixel_std)

    def _fast_view(self, image, generator: torch.Generator) -> torch.Tensor:
        view, recipes = self._crop_and_recipes(image, generator)
        view = view[None]
        for op, contrast_means in recipes:
            view = op.apply(view, generator, contrast_means=contrast_means)
        return normalize_uint8(view[0], self.pixel_mean, self.pixel_std)
