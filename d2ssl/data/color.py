"""The photometric recipe shared by the methods (colour jitter, PIRL's photometric ops, grayscale,
blur, flip), drawn from a ``torch.Generator`` so a view is a pure function of its seed, with PIL
and batched torch kernels that give PIL's pixels."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from torchvision import transforms as T

from d2ssl.data.resize import pil_to_uint8, uint8_to_pil


def uniform(generator: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    """``(n,)`` float32 draws from U[low, high)."""
    return torch.rand(n, generator=generator) * (high - low) + low


@contextlib.contextmanager
def torch_rng_from(generator: torch.Generator) -> Iterator[None]:
    """Runs torchvision transforms (which draw from torch's global RNG) from ``generator``.

    The global RNG is forked, seeded from ``generator`` and restored on exit, so a mapper's views are
    a pure function of the generator and the training process's own random state is untouched. Only
    the fallback for arbitrary PIL transforms uses it (it costs ~0.2 ms per call); the fast paths
    draw from ``generator`` directly.
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# --- photometric operations on uint8 batches -----------------------------------------------------
# Each takes a float32 (n, 3, H, W) batch holding uint8 values and per-view parameters of shape (n,),
# and returns uint8 values again (floored and clipped as PIL stores them), so each equals the PIL
# operation torchvision applies to a PIL image (tests state the tolerance).


def _per_view(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


def _blend(degenerate: torch.Tensor, image: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    # PIL's Image.blend on uint8: truncate toward zero, clip to [0, 255].
    return (degenerate + _per_view(factor) * (image - degenerate)).clamp_(0, 255).floor_()


def luma(images: torch.Tensor) -> torch.Tensor:
    """PIL's ``convert("L")``: ``(19595 R + 38470 G + 7471 B + 2^15) >> 16``, float ``(n, 1, H, W)``."""
    r, g, b = images.to(torch.int32).unbind(dim=1)
    return ((r * 19595 + g * 38470 + b * 7471 + 32768) >> 16).unsqueeze(1).to(torch.float32)


def rounded_mean(grey: torch.Tensor) -> torch.Tensor:
    """PIL/torchvision's contrast grey level, ``int(mean + 0.5)`` of each ``(n, 1, H, W)`` L view, float32
    ``(n,)``. The sum of integer levels in float64 is exact in any order (a GPU's reduction order
    included) and the division is in double, as PIL's ``ImageStat``."""
    total = grey.sum(dim=(1, 2, 3), dtype=torch.float64)
    return torch.floor(total / (grey.shape[2] * grey.shape[3]) + 0.5).to(torch.float32)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (images * _per_view(factor)).clamp_(0, 255).floor_()


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor, means: torch.Tensor | None = None):
    """``means``: the grey level to blend with, per view; by default the rounded mean luma of each view
    (PIL/torchvision). NPID's recipe passes the whole photo's when it jitters after cropping."""
    if means is None:
        means = rounded_mean(luma(images))
    return _blend(_per_view(means).expand(-1, 1, 1, 1), images, factor)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(luma(images), images, factor)


def adjust_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotates hue by ``shift`` turns (in [-0.5, 0.5]) exactly as torchvision does on PIL images (PIL's
    8-bit HSV, hue moved by ``int(shift * 255)`` levels modulo 256), for all views in one PIL
    conversion each way: the views are stacked into one tall image (HSV conversion is per pixel).
    Views on another device than the CPU stay there: :func:`adjust_hue_tensor` (the same pixels)."""
    if images.device.type != "cpu":
        return adjust_hue_tensor(images, shift)
    n, _, h, w = images.shape
    stacked = images.to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    hsv = Image.frombuffer("RGB", (w, n * h), stacked.tobytes(), "raw", "RGB", 0, 1).convert("HSV")
    hsv = np.frombuffer(hsv.tobytes(), dtype=np.uint8).reshape(n, h, w, 3).copy()
    levels = np.array([int(x * 255) % 256 for x in shift.tolist()], dtype=np.uint8)
    hsv[..., 0] += levels.reshape(n, 1, 1)  # uint8 arithmetic wraps around the hue circle
    rgb = Image.frombuffer("HSV", (w, n * h), hsv.tobytes(), "raw", "HSV", 0, 1).convert("RGB")
    rgb = np.frombuffer(rgb.tobytes(), dtype=np.uint8).reshape(n, h, w, 3)
    return torch.from_numpy(rgb.transpose(0, 3, 1, 2).astype(np.float32))


# PIL's 8-bit HSV conversions (libImaging/Convert.c, "following colorsys.py") as tensor operations, so
# that hue runs on the views' device. Each step keeps the C code's precision (float32 variables,
# double literals): equal to PIL on all 2^24 colours both ways; on the CPU, PIL's own conversion
# is several times faster, so adjust_hue uses these only on other devices.


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    # C's round() of a non-negative value (torch.round rounds half to even).
    down = torch.floor(x)
    return down + (x - down >= 0.5).to(x.dtype)


def rgb_to_pil_hsv(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(n, 3, H, W)`` RGB levels -> PIL's ``convert("HSV")`` levels, three float64 ``(n, H, W)``."""
    r, g, b = images.to(torch.float32).unbind(dim=1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    span = maxc - torch.minimum(torch.minimum(r, g), b)
    grey = span == 0
    span = torch.where(grey, torch.ones_like(span), span)
    saturation = span / torch.where(grey, torch.ones_like(maxc), maxc)
    rc, gc, bc = ((maxc - c) / span for c in (r, g, b))
    hue = torch.where(
        r == maxc,
        bc - gc,
        torch.where(
            g == maxc, (2.0 + rc.double() - bc.double()).float(), (4.0 + gc.double() - rc.double()).float()
        ),
    )
    hue = torch.fmod(hue.double() / 6.0 + 1.0, 1.0).float()
    hue = torch.where(grey, 0.0, torch.trunc(hue.double() * 255.0).clamp_(0, 255))
    saturation = torch.where(grey, 0.0, torch.trunc(saturation.double() * 255.0).clamp_(0, 255))
    return hue, saturation, maxc.double()


def pil_hsv_to_rgb(hue: torch.Tensor, saturation: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """PIL's ``convert("RGB")`` of HSV levels (three float64 ``(n, H, W)``) -> float32 ``(n, 3, H, W)``."""
    sector = torch.floor(hue * 6.0 / 255.0)
    f = (hue * 6.0 / 255.0 - sector).float()
    fs = (saturation / 255.0).float()
    p = _round_half_away(value * (1.0 - fs.double())).clamp_(0, 255)
    q = _round_half_away(value * (1.0 - (fs * f).double())).clamp_(0, 255)
    t = _round_half_away(value * (1.0 - fs.double() * (1.0 - f.double()))).clamp_(0, 255)
    # colorsys' six sectors: which of (v, p, q, t) each of R, G, B takes.
    table = torch.tensor([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]], device=hue.device)
    rgb = torch.gather(torch.stack([value, p, q, t]), 0, table[:, sector.long() % 6])
    rgb = torch.where(saturation == 0, value.expand_as(rgb), rgb)
    return rgb.movedim(0, 1).to(torch.float32)


def adjust_hue_tensor(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """:func:`adjust_hue` as tensor operations on the views' device (the same pixels)."""
    hue, saturation, value = rgb_to_pil_hsv(images)
    # torchvision: int(shift * 255) levels (truncated toward zero) modulo 256, on the hue band.
    levels = torch.remainder(torch.trunc(shift.to(images.device, torch.float64) * 255), 256)
    return pil_hsv_to_rgb(torch.remainder(hue + levels.view(-1, 1, 1), 256), saturation, value)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    return luma(images).expand(-1, 3, -1, -1).clone()


def posterize(images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    step = _per_view(torch.pow(2.0, 8 - bits.to(torch.float32)))
    return torch.floor(images / step) * step


def adjust_sharpness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageEnhance.Sharpness``: blend with ``ImageFilter.SMOOTH`` (3x3 kernel of ones with 5 in
    the centre, over 13; rounded; the 1-pixel border kept as is)."""
    smooth = images.clone()
    if images.shape[-1] > 2 and images.shape[-2] > 2:
        rows = images[..., :-2, :] + images[..., 1:-1, :] + images[..., 2:, :]
        box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]
        centre = images[..., 1:-1, 1:-1]
        smooth[..., 1:-1, 1:-1] = torch.floor((box + 4.0 * centre) / 13.0 + 0.5).clamp_(0, 255)
    return _blend(smooth, images, factor)


def solarize(images: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    return torch.where(images < _per_view(threshold.to(images.dtype)), images, 255.0 - images)


def autocontrast(images: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageOps.autocontrast`` (cutoff 0): each channel of each view stretched to [0, 255]."""
    lo = images.amin(dim=(2, 3), keepdim=True)
    hi = images.amax(dim=(2, 3), keepdim=True)
    flat = hi <= lo
    # PIL's arithmetic in float64: int(x * scale + offset), scale = 255 / (hi - lo), offset = -lo * scale.
    scale = 255.0 / torch.where(flat, torch.ones_like(hi), hi - lo).to(torch.float64)
    offset = -lo.to(torch.float64) * scale
    stretched = torch.floor(images.to(torch.float64) * scale + offset).clamp_(0, 255).to(images.dtype)
    return torch.where(flat, images, stretched)


def _reflect_blur_matrices(size: int, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """``(n, size, size)`` matrices ``M`` with ``M @ row`` = the 1-D Gaussian blur of ``row`` with
    reflect padding (torchvision's ``gaussian_blur``), one per sigma, on ``sigma``'s device."""
    device = sigma.device
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, kernel_size, device=device)
    kernel = torch.exp(-0.5 * (x.view(1, -1) / sigma.view(-1, 1).to(torch.float32)) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (n, k)
    offsets = torch.arange(kernel_size, device=device).view(1, -1) - kernel_size // 2
    source = torch.arange(size, device=device).view(-1, 1) + offsets
    source = source.abs()
    source = torch.where(source > size - 1, 2 * (size - 1) - source, source)  # reflect at both ends
    matrices = torch.zeros(sigma.numel(), size, size, device=device)
    n = sigma.numel()
    return matrices.scatter_add_(2, source.expand(n, -1, -1), kernel.view(n, 1, -1).expand(-1, size, -1))


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, kernel_size: int = 23) -> torch.Tensor:
    """torchvision's ``GaussianBlur(kernel_size)`` with one ``sigma`` per view (reflect padding, rounded
    back to uint8 levels), as two batched matrix products with banded blur matrices: a few times
    faster on CPU than a depthwise convolution, equal to float32 rounding."""
    n, c, h, w = images.shape
    if min(h, w) <= kernel_size // 2:
        raise ValueError(f"gaussian_blur: views of {h}x{w} px are too small for a {kernel_size}-tap kernel")
    sigma = sigma.to(images.device)
    rows = _reflect_blur_matrices(w, sigma, kernel_size)
    cols = rows if h == w else _reflect_blur_matrices(h, sigma, kernel_size)
    out = torch.matmul(images.to(torch.float32), rows.transpose(1, 2).unsqueeze(1))
    out = torch.matmul(cols.unsqueeze(1), out)
    return out.round_().clamp_(0, 255)


def pil_gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageFilter.GaussianBlur(radius=sigma)`` of each view (Jigsaw Clustering's and MoCo v2's
    blur: extended box blurs, not a truncated Gaussian kernel). Views on another device than the CPU
    stay there: :func:`pil_gaussian_blur_tensor` (the same pixels)."""
    if images.device.type != "cpu":
        return pil_gaussian_blur_tensor(images, sigma)
    out = [
        pil_to_uint8(uint8_to_pil(v.to(torch.uint8)).filter(ImageFilter.GaussianBlur(radius=float(r))))
        for v, r in zip(images, sigma.tolist())
    ]
    return torch.stack(out).to(torch.float32)


# PIL's GaussianBlur (libImaging/BoxBlur.c) as tensor operations: 3 passes of an "extended" box blur
# (Gwosdek et al. 2011) along rows, then 3 along columns, each rounded back to 8 bits; the box radius
# and its 24-bit fixed-point weights computed with the C code's float32 arithmetic. Equal to PIL (tests);
# several times slower than PIL on the CPU, so pil_gaussian_blur uses it only on other devices.


def _pil_box_blur_weights(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-view integer box radius, weight of the inner pixels and of the two fractional ends (of 2^24)."""
    passes = 3
    sigma2 = sigma.to(torch.float32) ** 2 / passes
    length = torch.sqrt(12.0 * sigma2.double() + 1.0).float()
    whole = torch.floor((length.double() - 1.0) / 2.0).float()
    fraction = (2 * whole + 1) * (whole * (whole + 1) - 3 * sigma2) / (6 * (sigma2 - (whole + 1) ** 2))
    box_radius = whole + fraction
    radius = box_radius.to(torch.int64)
    # float32 division, as C's (a Python number over a tensor would multiply by the reciprocal).
    inner = (torch.full_like(box_radius, 1 << 24) / (box_radius * 2 + 1)).to(torch.int64)
    ends = torch.div((1 << 24) - (radius * 2 + 1) * inner, 2, rounding_mode="floor")
    return radius, inner, ends


def _box_blur_rows(x: torch.Tensor, radius: torch.Tensor, inner: torch.Tensor, ends: torch.Tensor):
    """One pass along the last axis of int64 ``(n, C, H, W)``, edge pixels repeated beyond the border."""
    n, c, h, w = x.shape
    radius, inner, ends = (v.view(-1, 1, 1, 1) for v in (radius, inner, ends))
    pos = torch.arange(w, device=x.device).view(1, 1, 1, -1)

    def take(values, index):
        return torch.gather(values, 3, index.expand(n, c, h, w))

    prefix = torch.nn.functional.pad(x.cumsum(3), (1, 0))  # prefix[..., j] = x[..., :j].sum()
    window = take(prefix, (pos + radius).clamp(max=w - 1) + 1) - take(prefix, (pos - radius).clamp(min=0))
    window += x[..., :1] * (radius - pos).clamp(min=0) + x[..., -1:] * (pos + radius - (w - 1)).clamp(min=0)
    far = take(x, (pos - radius - 1).clamp(0, w - 1)) + take(x, (pos + radius + 1).clamp(0, w - 1))
    return (window * inner + far * ends + (1 << 23)) >> 24


def pil_gaussian_blur_tensor(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """:func:`pil_gaussian_blur` as tensor operations on the views' device (the same pixels)."""
    weights = _pil_box_blur_weights(sigma.to(images.device))
    x = images.to(torch.int64)
    for _ in range(3):
        x = _box_blur_rows(x, *weights)
    x = x.transpose(2, 3)
    for _ in range(3):
        x = _box_blur_rows(x, *weights)
    return x.transpose(2, 3).to(torch.float32)


# --- the same operations per view on PIL images, with lookup tables ----------------------------
# For small views (PIRL's 64 px tiles, a 224 px crop) one native PIL call per view and operation on
# uint8 beats the float32 batch kernels above, which make several passes over each value: brightness,
# contrast, posterize, solarize and autocontrast are one ``Image.point`` with a 256-entry table per
# band; saturation and sharpness are PIL's own blend; hue is PIL's HSV with the hue band shifted by a
# table. Same integer/float32 arithmetic as the PIL operations torchvision applies (tests: equal).

_LEVELS = np.arange(256, dtype=np.float32)
_IDENTITY = np.arange(256, dtype=np.int64)


def pil_grey_level(image: Image.Image) -> int:
    """The grey level PIL/torchvision's contrast blends with: the rounded mean of the L image (float64
    mean, as ``ImageStat``; :func:`rounded_mean` on tensors)."""
    return math.floor(float(np.asarray(image.convert("L")).mean()) + 0.5)


def _blend_table(grey: float, factor: float) -> list[int]:
    # PIL's Image.blend of a constant grey image: float32 grey + factor * (v - grey), truncated, clipped.
    values = np.float32(grey) + np.float32(factor) * (_LEVELS - np.float32(grey))
    return np.clip(values, 0, 255).astype(np.int64).tolist() * 3


def _point(image: Image.Image, table: list[int]) -> Image.Image:
    # Image.point rounds each of the 768 entries in Python (most of its cost on a 64 px tile); the
    # core call takes an int table as is.
    image.load()
    return image._new(image.im.point(table, None))


def _hue_table(shift: float) -> list[int]:
    level = int(shift * 255) % 256  # torchvision: hue moved by int(shift * 255) levels of PIL's 8-bit H
    return ((_IDENTITY + level) % 256).tolist() + _IDENTITY.tolist() * 2


def _posterize_table(bits: int) -> list[int]:
    return (_IDENTITY & ~(2 ** (8 - bits) - 1)).tolist() * 3


def _solarize_autocontrast_table(image: Image.Image, threshold: int) -> list[int]:
    """One table for ``autocontrast(solarize(image, threshold))``: the solarized histogram's range per
    band is the range of the solarized values present, so the image is read once (its histogram)."""
    solarized = np.where(_IDENTITY < threshold, _IDENTITY, 255 - _IDENTITY).astype(np.float64)
    present = np.asarray(image.histogram()).reshape(3, 256) > 0
    lo = np.where(present, solarized, 256.0).min(axis=1, keepdims=True)
    hi = np.where(present, solarized, -1.0).max(axis=1, keepdims=True)
    flat = hi <= lo  # one level only: PIL keeps the band as is
    # PIL's autocontrast arithmetic in float64: int(v * scale + offset), clipped.
    scale = 255.0 / np.where(flat, 1.0, hi - lo)
    stretched = np.clip(np.floor(solarized * scale - lo * scale), 0, 255)
    return np.where(flat, solarized, stretched).astype(np.int64).ravel().tolist()


BLUR_IMPLS = ("torchvision", "pil")
BACKENDS = ("pil", "torch")


class ColorAugmentation:
    """The photometric recipe shared by the methods, for uint8 views drawn from a ``torch.Generator``.

    Per view, in this order (torchvision's ``Compose`` of :func:`color_augmentation`): with
    ``color_jitter_prob``, colour jitter (brightness, contrast, saturation factors uniform in
    ``[max(0, 1 - x), 1 + x]``, hue shift uniform in ``[-h, h]``, the four applied in a uniformly
    random order, as ``T.ColorJitter``); with ``photometric_prob``, PIRL's posterize (4-8 bits),
    sharpness (``[0.1, 1.9)``), solarize (threshold 0-256) and autocontrast; with ``grayscale_prob``,
    grayscale; with ``gaussian_blur_prob``, a Gaussian blur of sigma uniform in ``blur_sigma``; a
    horizontal flip with p 0.5 if ``horizontal_flip``. ``blur_impl``: ``"torchvision"`` (a
    ``blur_kernel_size``-tap Gaussian, torchvision's ``GaussianBlur``, VISSL/SimCLR) or ``"pil"``
    (PIL's ``GaussianBlur(radius=sigma)``, as Jigsaw Clustering's and MoCo v2's loaders).

    ``backend``: ``"pil"`` (default) augments one PIL view at a time with native PIL calls and lookup
    tables on uint8 (:meth:`apply_params_pil`; torchvision's blur still batched); ``"torch"`` runs
    float32 batch kernels, one per operation for all views (:meth:`apply_params_torch`). Both draw the
    same parameters and give the PIL operations' pixels (tests state the tolerance); measured on one
    core, the PIL path was 1.4-2.7x faster for every recipe and view size tried (9x64 px, 4x112 px,
    1x224 px): the batch kernels make several float passes over each value.

    Calling the object on a PIL image (e.g. inside a ``T.Compose``)
    runs the same operations on that one image, drawing from torch's global RNG.
    """

    def __init__(
        self,
        color_jitter: tuple[float, float, float, float] | None = (0.4, 0.4, 0.4, 0.1),
        color_jitter_prob: float = 0.8,
        grayscale_prob: float = 0.2,
        gaussian_blur_prob: float = 0.0,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        horizontal_flip: bool = True,
        photometric_prob: float = 0.0,
        blur_kernel_size: int = 23,
        blur_impl: str = "torchvision",
        backend: str = "pil",
    ):
        if blur_impl not in BLUR_IMPLS:
            raise ValueError(f"blur_impl must be one of {BLUR_IMPLS}, got {blur_impl!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if color_jitter is not None:
            color_jitter = tuple(float(x) for x in color_jitter)
            if len(color_jitter) != 4 or min(color_jitter) < 0 or color_jitter[3] > 0.5:
                raise ValueError(
                    "color_jitter must be (brightness, contrast, saturation, hue) >= 0 with hue <= 0.5, "
                    f"got {color_jitter}"
                )
        for name, p in (("color_jitter_prob", color_jitter_prob), ("grayscale_prob", grayscale_prob),
                        ("gaussian_blur_prob", gaussian_blur_prob), ("photometric_prob", photometric_prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        self.color_jitter = color_jitter
        self.color_jitter_prob = color_jitter_prob if color_jitter is not None else 0.0
        self.grayscale_prob = grayscale_prob
        self.gaussian_blur_prob = gaussian_blur_prob
        self.blur_sigma = tuple(blur_sigma)
        self.horizontal_flip = horizontal_flip
        self.photometric_prob = photometric_prob
        self.blur_kernel_size = blur_kernel_size
        self.blur_impl = blur_impl
        self.backend = backend

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(color_jitter={self.color_jitter}, "
            f"color_jitter_prob={self.color_jitter_prob}, "
            f"photometric_prob={self.photometric_prob}, grayscale_prob={self.grayscale_prob}, "
            f"gaussian_blur_prob={self.gaussian_blur_prob}, blur_sigma={self.blur_sigma}, "
            f"horizontal_flip={self.horizontal_flip})"
        )

    def draw(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The random parameters of ``n`` views (the distribution the class docstring states)."""
        params: dict[str, torch.Tensor] = {}
        if self.color_jitter_prob > 0:
            b, c, s, h = self.color_jitter
            params["jitter"] = torch.rand(n, generator=generator) < self.color_jitter_prob
            params["jitter_order"] = torch.rand(n, 4, generator=generator).argsort(dim=1)
            params["brightness"] = uniform(generator, n, max(0.0, 1 - b), 1 + b)
            params["contrast"] = uniform(generator, n, max(0.0, 1 - c), 1 + c)
            params["saturation"] = uniform(generator, n, max(0.0, 1 - s), 1 + s)
            params["hue"] = uniform(generator, n, -h, h)
        if self.photometric_prob > 0:
            params["photometric"] = torch.rand(n, generator=generator) < self.photometric_prob
            params["bits"] = torch.randint(4, 9, (n,), generator=generator)
            params["sharpness"] = uniform(generator, n, 0.1, 1.9)
            params["threshold"] = torch.randint(0, 257, (n,), generator=generator)
        if self.grayscale_prob > 0:
            params["grayscale"] = torch.rand(n, generator=generator) < self.grayscale_prob
        if self.gaussian_blur_prob > 0:
            params["blur"] = torch.rand(n, generator=generator) < self.gaussian_blur_prob
            params["sigma"] = uniform(generator, n, *self.blur_sigma)
        if self.horizontal_flip:
            params["flip"] = torch.rand(n, generator=generator) < 0.5
        return params

    def apply(
        self, views: torch.Tensor, generator: torch.Generator, contrast_means: torch.Tensor | None = None
    ) -> torch.Tensor:
        """uint8 ``(n, 3, H, W)`` -> augmented uint8 ``(n, 3, H, W)``; each view's parameters drawn
        from ``generator``. ``contrast_means`` ``(n,)``: the grey levels contrast blends with, when the
        recipe jitters the whole photo but the views are crops of it (NPID)."""
        return self.apply_params(views, self.draw(views.shape[0], generator), contrast_means)

    def apply_params(self, views: torch.Tensor, params: dict, contrast_means: torch.Tensor | None = None):
        """uint8 ``(n, 3, H, W)`` views and the parameters :meth:`draw` returned -> uint8 views."""
        if self.backend == "pil":
            return self.apply_params_pil([uint8_to_pil(v) for v in views], params, contrast_means)
        return self.apply_params_torch(views, params, contrast_means)

    def apply_pil(
        self, views: list[Image.Image], generator: torch.Generator, contrast_means: torch.Tensor | None = None
    ) -> torch.Tensor:
        """:meth:`apply` on a list of same-sized RGB PIL views (with the ``"pil"`` backend, no
        conversion to a tensor and back) -> uint8 ``(n, 3, H, W)``."""
        params = self.draw(len(views), generator)
        if self.backend == "pil":
            return self.apply_params_pil(views, params, contrast_means)
        return self.apply_params_torch(torch.stack([pil_to_uint8(v) for v in views]), params, contrast_means)

    def apply_params_pil(
        self, views: list[Image.Image], params: dict, contrast_means: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The recipe one PIL view at a time, with lookup tables (see ``_blend_table``): RGB PIL views
        and the parameters :meth:`draw` returned -> uint8 ``(n, 3, H, W)``, equal to
        :meth:`apply_params_torch` (tests state the tolerance)."""
        n = len(views)
        p = {k: v.tolist() for k, v in params.items()}
        torch_blur = "blur" in p and self.blur_impl == "torchvision" and any(p["blur"])
        if "jitter" in p:
            # As the batch path (and ColorJitter, which drops an op whose range is a single identity
            # value): an op no view can change is skipped, so hue's lossy HSV round trip too.
            active = [any(f != 1 for f in p[k]) for k in ("brightness", "contrast", "saturation")]
            active.append(any(h != 0 for h in p["hue"]))
        if contrast_means is not None:
            contrast_means = contrast_means.to(torch.float32).expand(n).tolist()
        out = []
        for i, view in enumerate(views):
            if "jitter" in p and p["jitter"][i]:
                for op in p["jitter_order"][i]:
                    if not active[op]:
                        continue
                    if op == 0:
                        view = _point(view, _blend_table(0.0, p["brightness"][i]))
                    elif op == 1:
                        if contrast_means is None:
                            grey = pil_grey_level(view)
                        else:
                            grey = contrast_means[i]
                        view = _point(view, _blend_table(grey, p["contrast"][i]))
                    elif op == 2:
                        view = Image.blend(view.convert("L").convert("RGB"), view, p["saturation"][i])
                    else:
                        view = _point(view.convert("HSV"), _hue_table(p["hue"][i])).convert("RGB")
            if "photometric" in p and p["photometric"][i]:
                view = _point(view, _posterize_table(p["bits"][i]))
                view = Image.blend(view.filter(ImageFilter.SMOOTH), view, p["sharpness"][i])
                view = _point(view, _solarize_autocontrast_table(view, p["threshold"][i]))
            if "grayscale" in p and p["grayscale"][i]:
                view = view.convert("L").convert("RGB")
            if "blur" in p and p["blur"][i] and not torch_blur:
                view = view.filter(ImageFilter.GaussianBlur(radius=p["sigma"][i]))
            if "flip" in p and p["flip"][i] and not torch_blur:
                view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            out.append(np.asarray(view))
        x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)  # channels-last, as resize_uint8
        if torch_blur:  # torchvision's 23-tap kernel, batched; the flip after it
            rest = {k: params[k] for k in ("blur", "sigma", "flip") if k in params}
            x = self.apply_params_torch(x, rest)
        return x

    def apply_params_torch(
        self, views: torch.Tensor, params: dict, contrast_means: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The recipe as float32 batch kernels, one per operation for all views: uint8 ``(n, 3, H, W)``
        views and the parameters :meth:`draw` returned -> uint8 views, on the views' device (CUDA
        included: :func:`d2ssl.data.device_augmentation.augment_on_device`). Which views an op touches
        is read from the parameters on the CPU, where :meth:`draw` makes them, so the device is not
        waited on; their values are copied to the device once."""
        x = views
        device = views.device
        masks = {k: v.cpu() for k, v in params.items()}
        values = {k: v.to(device, non_blocking=True) for k, v in params.items()}
        if contrast_means is not None:
            contrast_means = contrast_means.to(device, torch.float32)

        def on(mask: torch.Tensor, fn) -> None:
            # fn(selected views, their indices); a view stays uint8 until an op needs arithmetic.
            nonlocal x
            if bool(mask.all()):
                x = fn(x, slice(None))
            elif bool(mask.any()):
                selected = mask.nonzero()[:, 0].to(device)
                if not x.is_floating_point():
                    x = x.to(torch.float32)
                x[selected] = fn(x[selected], selected)

        if "jitter" in params:
            # Brightness, contrast and saturation are all blends with a per-view grey image (black,
            # the view's mean grey, its luma): at each of the 4 steps, one blend serves every view
            # whose op at that step is one of them (factor 1 is an exact identity); hue runs on its own.
            names = ("brightness", "contrast", "saturation")
            factor_of = [values[name] for name in names]
            active = [not bool((masks[name] == 1).all()) for name in names] + [
                not bool((masks["hue"] == 0).all())
            ]
            for step in range(4):
                op = torch.where(masks["jitter"], masks["jitter_order"][:, step], -1)
                chosen = [(op == k) & active[k] for k in range(4)]
                if bool((chosen[0] | chosen[1] | chosen[2]).any()):
                    x = x.to(torch.float32)
                    on_device = [c.to(device, non_blocking=True) for c in chosen[:3]]
                    factor = torch.ones(x.shape[0], device=device)
                    degenerate = torch.zeros(x.shape[0], 1, x.shape[2], x.shape[3], device=device)
                    for k in range(3):
                        factor = torch.where(on_device[k], factor_of[k], factor)
                    if bool((chosen[1] | chosen[2]).any()):
                        grey = luma(x)
                        means = rounded_mean(grey)
                        if contrast_means is not None:
                            means = contrast_means.expand(x.shape[0])
                        degenerate = torch.where(_per_view(on_device[1]), _per_view(means), degenerate)
                        degenerate = torch.where(_per_view(on_device[2]), grey, degenerate)
                    x = _blend(degenerate, x, factor)
                on(chosen[3], lambda v, i: adjust_hue(v, values["hue"][i]))
        if "photometric" in params:

            def photometric(v, i):
                v = posterize(v.to(torch.float32), values["bits"][i])
                v = adjust_sharpness(v, values["sharpness"][i])
                return autocontrast(solarize(v, values["threshold"][i]))

            on(masks["photometric"], photometric)
        if "grayscale" in params:
            on(masks["grayscale"], lambda v, i: grayscale(v))
        if "blur" in params:
            if self.blur_impl == "pil":
                on(masks["blur"], lambda v, i: pil_gaussian_blur(v, values["sigma"][i]))
            else:
                kernel_size = self.blur_kernel_size
                on(masks["blur"], lambda v, i: gaussian_blur(v.float(), values["sigma"][i], kernel_size))
        if "flip" in params:
            on(masks["flip"], lambda v, i: v.flip(-1))
        return x.to(torch.uint8)

    def __call__(self, image: Image.Image) -> Image.Image:
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))
        return uint8_to_pil(self.apply(pil_to_uint8(image)[None], generator)[0])


def color_augmentation(
    color_jitter: tuple[float, float, float, float] | None = (0.4, 0.4, 0.4, 0.1),
    color_jitter_prob: float = 0.8,
    grayscale_prob: float = 0.2,
    gaussian_blur_prob: float = 0.0,
    blur_sigma: tuple[float, float] = (0.1, 2.0),
    horizontal_flip: bool = True,
    photometric_prob: float = 0.0,
    blur_impl: str = "torchvision",
    backend: str = "pil",
) -> ColorAugmentation:
    """The photometric recipe shared by the methods (:class:`ColorAugmentation`).

    Defaults are MoCo-v2/JigClu's (jitter 0.4/0.4/0.4/0.1 with p 0.8, grayscale p 0.2); the
    ``gaussian_blur_prob=0.5`` variant is VISSL's ``photo_gblur`` / SimCLR blur with sigma in [0.1, 2]
    (kernel 23 covers 3 sigma of the largest sigma at 224 px, as in SimCLR's 10%-of-side kernel).
    ``photometric_prob=0.66`` adds PIRL's ``ImgPilRandomPhotometric`` after the jitter.
    """
    return ColorAugmentation(
        color_jitter=color_jitter, color_jitter_prob=color_jitter_prob, grayscale_prob=grayscale_prob,
        gaussian_blur_prob=gaussian_blur_prob, blur_sigma=blur_sigma, horizontal_flip=horizontal_flip,
        photometric_prob=photometric_prob, blur_impl=blur_impl, backend=backend,
    )


class _PILGaussianBlur:
    """Jigsaw Clustering's ``GaussianBlur`` (``JigClu/loader.py``): PIL's blur, sigma uniform in a range."""

    def __init__(self, sigma: tuple[float, float]):
        self.sigma = sigma

    def __call__(self, image: Image.Image) -> Image.Image:
        radius = self.sigma[0] + (self.sigma[1] - self.sigma[0]) * float(torch.rand(1))
        return image.filter(ImageFilter.GaussianBlur(radius=radius))


def reference_color_augmentation(augmentation: ColorAugmentation) -> T.Compose:
    """The same recipe as torchvision transforms on PIL images, op by op (the plain way, drawing from
    torch's global RNG): what the tests and the benchmark compare :class:`ColorAugmentation` with."""
    ops = []
    if augmentation.color_jitter_prob > 0:
        jitter = T.ColorJitter(*augmentation.color_jitter)
        ops.append(T.RandomApply([jitter], p=augmentation.color_jitter_prob))
    if augmentation.photometric_prob > 0:
        ops.append(T.RandomApply([RandomPhotometric()], p=augmentation.photometric_prob))
    if augmentation.grayscale_prob > 0:
        ops.append(T.RandomGrayscale(p=augmentation.grayscale_prob))
    if augmentation.gaussian_blur_prob > 0 and augmentation.blur_impl == "pil":
        blur = _PILGaussianBlur(augmentation.blur_sigma)
        ops.append(T.RandomApply([blur], p=augmentation.gaussian_blur_prob))
    elif augmentation.gaussian_blur_prob > 0:
        blur = T.GaussianBlur(kernel_size=augmentation.blur_kernel_size, sigma=augmentation.blur_sigma)
        ops.append(T.RandomApply([blur], p=augmentation.gaussian_blur_prob))
    if augmentation.horizontal_flip:
        ops.append(T.RandomHorizontalFlip())
    return T.Compose(ops)


def photo_gblur_augmentation(strength: float = 1.0) -> ColorAugmentation:
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
