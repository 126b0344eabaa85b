"""The fast view paths against the plain PIL/torchvision recipe: each deterministic operation gives the
reference's pixels (tolerances stated per test), and each random parameter follows the reference's law
(statistics of many draws against the recipe)."""

import math

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from tolerances import assert_close_sum_order
from torchvision import transforms as T
from torchvision.transforms import functional as F

from d2ssl.data import color as X
from d2ssl.data.image_io import read_rgb_image
from d2ssl.data.mappers import ImageMapper, JigsawMapper
from d2ssl.data.mappers.image import fast_plan
from d2ssl.data.permutations import generate_permutations
from d2ssl.data.resize import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    normalize_uint8,
    pil_to_uint8,
    pil_to_uint8_hwc,
    random_resized_crop_box,
    resize_uint8,
    resized_crop,
    to_normalized_tensor,
    uint8_to_pil,
)
from d2ssl.data.tiles import cut_tiles, tile_corners


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.fromarray(skimage.data.chelsea()).resize((96, 80))  # real photo, small for speed


def as_batch(image: Image.Image) -> torch.Tensor:
    return pil_to_uint8(image)[None].float()


def pixels(image: Image.Image) -> torch.Tensor:
    return pil_to_uint8(image).float()


def one(value) -> torch.Tensor:
    return torch.tensor([value])


def assert_levels_close(
    ours: torch.Tensor, reference: torch.Tensor, max_levels: int, max_fraction: float = 0.01
):
    """At most ``max_levels`` grey levels apart anywhere, on at most ``max_fraction`` of the values."""
    diff = (ours.float() - reference.float()).abs()
    assert diff.max() <= max_levels, diff.max()
    assert (diff > 0).float().mean() <= max_fraction, (diff > 0).float().mean()


# --- deterministic operations: equal to the PIL operation torchvision / VISSL / JigClu apply -------


@pytest.mark.parametrize(
    "ours, reference",
    [
        (lambda x: X.adjust_brightness(x, one(1.3)), lambda im: F.adjust_brightness(im, 1.3)),
        (lambda x: X.adjust_brightness(x, one(0.45)), lambda im: F.adjust_brightness(im, 0.45)),
        (lambda x: X.adjust_contrast(x, one(0.7)), lambda im: F.adjust_contrast(im, 0.7)),
        (lambda x: X.adjust_contrast(x, one(1.6)), lambda im: F.adjust_contrast(im, 1.6)),
        (lambda x: X.adjust_saturation(x, one(1.35)), lambda im: F.adjust_saturation(im, 1.35)),
        (lambda x: X.adjust_saturation(x, one(0.2)), lambda im: F.adjust_saturation(im, 0.2)),
        (lambda x: X.adjust_hue(x, one(0.1)), lambda im: F.adjust_hue(im, 0.1)),
        (lambda x: X.adjust_hue(x, one(-0.37)), lambda im: F.adjust_hue(im, -0.37)),
        (lambda x: X.adjust_hue(x, one(0.5)), lambda im: F.adjust_hue(im, 0.5)),
        (lambda x: X.grayscale(x), lambda im: F.rgb_to_grayscale(im, 3)),
        (lambda x: X.posterize(x, one(5)), lambda im: ImageOps.posterize(im, 5)),
        (lambda x: X.posterize(x, one(8)), lambda im: ImageOps.posterize(im, 8)),
        (lambda x: X.adjust_sharpness(x, one(1.6)), lambda im: ImageEnhance.Sharpness(im).enhance(1.6)),
        (lambda x: X.adjust_sharpness(x, one(0.1)), lambda im: ImageEnhance.Sharpness(im).enhance(0.1)),
        (lambda x: X.solarize(x, one(100)), lambda im: ImageOps.solarize(im, 100)),
        (lambda x: X.solarize(x, one(256)), lambda im: ImageOps.solarize(im, 256)),
        (lambda x: X.autocontrast(x), lambda im: ImageOps.autocontrast(im)),
        (lambda x: X.pil_gaussian_blur(x, one(1.5)), lambda im: im.filter(ImageFilter.GaussianBlur(1.5))),
    ],
)
def test_uint8_operation_equals_the_pil_operation_exactly(photo, ours, reference):
    # Tolerance 0: same integer arithmetic, same rounding (hue through PIL's own 8-bit HSV).
    assert torch.equal(ours(as_batch(photo))[0], pixels(reference(photo)))


@pytest.mark.parametrize("sigma", [0.1, 0.7, 1.3, 2.0])
def test_gaussian_blur_equals_torchvisions_to_one_level(photo, sigma):
    # Banded matrix products instead of a convolution: float32 sums in another order can move a value
    # that lands on .5 by one level when rounded back to uint8.
    ours = X.gaussian_blur(as_batch(photo), one(sigma))[0]
    assert_levels_close(ours, pixels(F.gaussian_blur(photo, [23, 23], [sigma, sigma])), max_levels=1)


def test_batched_operations_apply_each_views_own_parameter(photo):
    other = photo.transpose(Image.ROTATE_180)
    batch = torch.cat([as_batch(photo), as_batch(other)])
    out = X.adjust_hue(X.adjust_contrast(batch, torch.tensor([0.5, 1.5])), torch.tensor([0.2, -0.1]))
    assert torch.equal(out[0], pixels(F.adjust_hue(F.adjust_contrast(photo, 0.5), 0.2)))
    assert torch.equal(out[1], pixels(F.adjust_hue(F.adjust_contrast(other, 1.5), -0.1)))


def reference_with_params(image: Image.Image, aug: X.ColorAugmentation, params: dict, i: int) -> Image.Image:
    """torchvision's ops on PIL, in the recipe's order, with view ``i``'s drawn parameters."""
    if "jitter" in params and params["jitter"][i]:
        for op in params["jitter_order"][i].tolist():
            name = ("brightness", "contrast", "saturation", "hue")[op]
            value = float(params[name][i])
            image = getattr(F, f"adjust_{name}")(image, value)
    if "photometric" in params and params["photometric"][i]:
        image = ImageOps.posterize(image, int(params["bits"][i]))
        image = ImageEnhance.Sharpness(image).enhance(float(params["sharpness"][i]))
        image = ImageOps.solarize(image, int(params["threshold"][i]))
        image = ImageOps.autocontrast(image)
    if "grayscale" in params and params["grayscale"][i]:
        image = F.rgb_to_grayscale(image, 3)
    if "blur" in params and params["blur"][i]:
        s = float(params["sigma"][i])
        if aug.blur_impl == "pil":
            image = image.filter(ImageFilter.GaussianBlur(radius=s))
        else:
            image = F.gaussian_blur(image, [aug.blur_kernel_size] * 2, [s, s])
    if "flip" in params and params["flip"][i]:
        image = F.hflip(image)
    return image


@pytest.mark.parametrize(
    "aug",
    [
        X.color_augmentation((0.4, 0.4, 0.4, 0.2), 1.0, 0.2, photometric_prob=0.66),  # PIRL
        X.photo_gblur_augmentation(),  # PIRL gblur / NPID gblur
        X.color_augmentation((0.4, 0.4, 0.4, 0.1), 0.8, 0.2, gaussian_blur_prob=0.5),  # JigClu / MoCo v2
    ],
)
def test_whole_recipe_on_a_batch_equals_the_pil_ops_with_the_same_parameters(photo, aug):
    views = torch.stack([pil_to_uint8(photo.rotate(angle)) for angle in range(0, 360, 30)])
    params = aug.draw(len(views), torch.Generator().manual_seed(3))
    out = aug.apply_params_torch(views, params)
    for i in range(len(views)):
        expected = reference_with_params(uint8_to_pil(views[i]), aug, params, i)
        # Blur and sharpness sum in float32 in another order than PIL / torchvision: a value on a .5
        # boundary can round the other way (and autocontrast can then stretch that one level).
        assert_levels_close(out[i], pixels(expected), max_levels=2)


RECIPES = [
    X.color_augmentation((0.4, 0.4, 0.4, 0.2), 1.0, 0.2, photometric_prob=0.66),  # PIRL
    X.photo_gblur_augmentation(),  # PIRL gblur / NPID gblur
    X.color_augmentation((0.4, 0.4, 0.4, 0.1), 0.8, 0.2, gaussian_blur_prob=0.5, blur_impl="pil"),  # JigClu
]


@pytest.mark.parametrize("aug", RECIPES)
def test_per_view_pil_path_equals_the_pil_ops_with_the_same_parameters(photo, aug):
    views = [photo.rotate(angle) for angle in range(0, 360, 15)]
    params = aug.draw(len(views), torch.Generator().manual_seed(4))
    out = aug.apply_params_pil(views, params)
    assert out.dtype == torch.uint8 and out.shape == (len(views), 3, photo.height, photo.width)
    for i in range(len(views)):
        expected = pixels(reference_with_params(views[i], aug, params, i))
        if aug.blur_impl == "torchvision" and "blur" in params and params["blur"][i]:
            # torchvision's blur as banded float32 matrix products (see the batch test): 1 level.
            assert_levels_close(out[i], expected, max_levels=1)
        else:
            # The same PIL operations, tables holding PIL's own float32/float64 arithmetic: exact.
            assert torch.equal(out[i].float(), expected), i


def test_per_view_pil_path_uses_the_given_contrast_grey(photo):
    aug = X.color_augmentation((0.0, 0.5, 0.0, 0.0), 1.0, 0.0, horizontal_flip=False)
    params = aug.draw(3, torch.Generator().manual_seed(0))
    out = aug.apply_params_pil([photo] * 3, params, contrast_means=torch.tensor([200.0]))
    for i in range(3):
        grey = Image.new("RGB", photo.size, (200, 200, 200))
        assert torch.equal(out[i].float(), pixels(Image.blend(grey, photo, float(params["contrast"][i]))))


@pytest.mark.parametrize("aug", RECIPES)
def test_pil_and_torch_backends_draw_the_same_parameters_and_agree(photo, aug):
    # Same draws from the generator (so the same views, resume included), pixels within 1 level on
    # < 1% of the values (the batch kernels' float32 sums for sharpness / blur).
    views = torch.stack([pil_to_uint8(photo.rotate(angle)) for angle in range(0, 360, 20)])
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = aug.apply_pil([uint8_to_pil(v) for v in views], g1)
    b = aug.apply_params_torch(views, aug.draw(len(views), g2))
    assert torch.equal(g1.get_state(), g2.get_state())
    assert_levels_close(a, b, max_levels=1)


def test_pirl_and_jigclu_mappers_give_the_same_views_on_both_backends():
    from d2ssl.data.mappers import JigsawClusteringMapper, PIRLMapper

    image = {"image": skimage.data.astronaut()[::2, ::2], "image_id": 3}
    for make in (
        lambda b: PIRLMapper(augmentation=X.color_augmentation(
            (0.4, 0.4, 0.4, 0.2), 1.0, 0.2, photometric_prob=0.66, backend=b)),
        lambda b: JigsawClusteringMapper(augmentation=X.color_augmentation(
            (0.4, 0.4, 0.4, 0.1), 0.8, 0.2, gaussian_blur_prob=0.5, blur_impl="pil", backend=b)),
    ):
        for seed in range(3):
            a = make("pil")(dict(image), torch.Generator().manual_seed(seed))
            b = make("torch")(dict(image), torch.Generator().manual_seed(seed))
            levels = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255  # normalised -> grey levels
            for key in ("image", "tiles", "patches"):
                if key in a:
                    assert_levels_close(a[key] * levels, b[key] * levels, max_levels=1.001)
            if "tile_order" in a:
                assert torch.equal(a["tile_order"], b["tile_order"])


@pytest.mark.parametrize(
    "box, size", [((30, 40, 300, 250), 64), ((0, 0, 512, 512), 224), ((100, 7, 51, 60), 112)]
)
def test_resized_crop_equals_pils_crop_then_resize(box, size):
    # torch's antialiased uint8 kernel against F.resized_crop on PIL (RandomResizedCrop's op): down-
    # and upscaling, border pixels included (both crop first, then resize).
    image = Image.fromarray(skimage.data.astronaut())
    ours = resized_crop(pil_to_uint8_hwc(image), box, size)
    assert ours.dtype == torch.uint8 and ours.shape == (3, size, size)
    assert ours.permute(1, 2, 0).is_contiguous()  # channels-last: PIL's layout, no transpose to convert
    ref = pixels(F.resized_crop(image, *box, [size, size]))
    # Both kernels are fixed-point integer arithmetic, so the count is the same on any CPU. Measured
    # off by one level: 0.106%, 0.000% (no resize), 0.143% of the values; the README says "about 0.1%".
    assert_levels_close(ours, ref, max_levels=1, max_fraction=0.003)


def test_resize_uint8_equals_pils_resize_of_a_photo():
    photo = Image.fromarray(skimage.data.coffee()).resize((500, 375), Image.BICUBIC)
    for size in [(256, 341), (188, 250), (480, 640)]:
        ours = resize_uint8(pil_to_uint8_hwc(photo), size)
        ref = pixels(photo.resize(size[::-1], Image.BILINEAR))
        # Measured off by one level: 0.137%, 0.022%, 0.000% (integer kernels: the same on any CPU).
        assert_levels_close(ours, ref, max_levels=1, max_fraction=0.003)


def test_normalize_uint8_equals_to_tensor_then_normalize(photo):
    ours = normalize_uint8(pil_to_uint8(photo))
    # (x / 255 - mean) / std: at most 3 float32 roundings each way, of operands of at most
    # (1 + max mean) / min std in magnitude (tests/tolerances.py).
    scale = (1 + max(IMAGENET_MEAN)) / min(IMAGENET_STD)
    assert_close_sum_order(ours, to_normalized_tensor(photo), terms=3, scale=scale, name="normalised photo")


def test_jigsaw_tiles_are_cut_from_the_resized_photo():
    # VISSL's Resize(256), flip, RandomCrop(255), grayscale, then tiles of a 3x3 grid: ours against
    # that recipe done with PIL from the same draws, in the same order.
    image = Image.fromarray(skimage.data.chelsea())  # 451 x 300
    perms = generate_permutations(9, 10)
    mapper = JigsawMapper(perms, resize_size=64, crop_size=60, tile_size=16, grayscale_prob=0.5)
    levels = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255  # normalised -> grey levels
    for seed in range(6):
        ours = mapper({"image": np.asarray(image), "image_id": 0}, torch.Generator().manual_seed(seed))
        g = torch.Generator().manual_seed(seed)
        top = int(torch.randint(0, 64 - 60 + 1, (1,), generator=g))
        left = int(torch.randint(0, int(64 * 451 / 300) - 60 + 1, (1,), generator=g))
        grey, flip = (bool(x) for x in (torch.rand(1, generator=g) < 0.5, torch.rand(1, generator=g) < 0.5))
        crop = F.resize(image, 64).crop((left, top, left + 60, top + 60))
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else crop
        crop = crop.convert("L").convert("RGB") if grey else crop
        corners = tile_corners(60, 60, 3, 16, g)
        assert int(torch.randint(10, (1,), generator=g)) == ours["perm_index"]
        ref = torch.stack([pixels(crop)[:, y : y + 16, x : x + 16] for y, x in corners])
        ref = normalize_uint8(ref[torch.as_tensor(perms[ours["perm_index"]])])
        assert_levels_close(ours["tiles"] * levels, ref * levels, max_levels=1.001, max_fraction=0.01)


# --- random parameters: the reference's laws -------------------------------------------------------


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    grid = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


def binomial_ok(successes: float, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(successes - n * p) <= sigmas * math.sqrt(n * p * (1 - p)) + 1


@pytest.mark.parametrize(
    "width, height, scale", [(500, 375, (0.08, 1.0)), (400, 300, (0.2, 1.0)), (120, 500, (0.6, 1.0))]
)
def test_random_resized_crop_boxes_follow_torchvisions_law(width, height, scale):
    n = 3000
    g = torch.Generator().manual_seed(0)
    ours = np.array([random_resized_crop_box(width, height, scale, g) for _ in range(n)], dtype=float)
    torch.manual_seed(1)
    image = torch.empty(1, height, width)
    ref = np.array(
        [T.RandomResizedCrop.get_params(image, scale, (3 / 4, 4 / 3)) for _ in range(n)], dtype=float
    )
    # (top, left, h, w) -> area fraction, log aspect ratio, centre: two-sample KS at alpha ~ 1e-4
    critical = 2.15 * math.sqrt(2 / n)
    for f in (
        lambda b: b[:, 2] * b[:, 3] / (width * height),
        lambda b: np.log(b[:, 3] / b[:, 2]),
        lambda b: (b[:, 0] + b[:, 2] / 2) / height,
        lambda b: (b[:, 1] + b[:, 3] / 2) / width,
    ):
        assert ks_statistic(f(ours), f(ref)) < critical
    assert (ours[:, 0] + ours[:, 2] <= height).all() and (ours[:, 1] + ours[:, 3] <= width).all()


def test_colour_parameters_follow_the_recipe():
    n = 20000
    aug = X.ColorAugmentation((0.4, 0.3, 0.8, 0.1), 0.8, 0.2, 0.5, (0.1, 2.0), True, 0.66)
    p = aug.draw(n, torch.Generator().manual_seed(0))
    assert binomial_ok(p["jitter"].sum(), n, 0.8)
    assert binomial_ok(p["photometric"].sum(), n, 0.66)
    assert binomial_ok(p["grayscale"].sum(), n, 0.2)
    assert binomial_ok(p["blur"].sum(), n, 0.5)
    assert binomial_ok(p["flip"].sum(), n, 0.5)
    # ColorJitter: factors uniform on [max(0, 1 - x), 1 + x], hue uniform on [-h, h]
    for key, lo, hi in (
        ("brightness", 0.6, 1.4),
        ("contrast", 0.7, 1.3),
        ("saturation", 0.2, 1.8),
        ("hue", -0.1, 0.1),
        ("sharpness", 0.1, 1.9),
        ("sigma", 0.1, 2.0),
    ):
        v = p[key].numpy()
        assert (
            lo <= v.min()
            and v.max() <= hi
            and v.min() < lo + 0.01 * (hi - lo)
            and v.max() > hi - 0.01 * (hi - lo)
        )
        uniform = np.random.default_rng(0).uniform(lo, hi, n)
        assert ks_statistic(v, uniform) < 2.15 * math.sqrt(2 / n), key
    # ColorJitter's order: a uniform permutation, so each op is at each step 1/4 of the time
    order = p["jitter_order"]
    assert all(sorted(row) == [0, 1, 2, 3] for row in order[:100].tolist())
    for step in range(4):
        counts = torch.bincount(order[:, step], minlength=4)
        assert all(binomial_ok(c, n, 0.25) for c in counts.tolist())
    # RandomPhotometric: bits uniform on 4..8, solarize threshold uniform on 0..256
    assert torch.equal(torch.bincount(p["bits"])[:4], torch.zeros(4, dtype=torch.long))
    assert all(binomial_ok(c, n, 1 / 5) for c in torch.bincount(p["bits"])[4:].tolist())
    assert p["threshold"].min() == 0 and p["threshold"].max() == 256
    assert ks_statistic(p["threshold"].numpy(), np.random.default_rng(1).integers(0, 257, n)) < 0.03


class JigCluGaussianBlur:
    """JigClu/loader.py's GaussianBlur (l. 18-27 at 1490f3b; MoCo v2's): PIL's blur, radius uniform
    (drawn from torch's generator instead of ``random``, so that one seed fixes the whole reference)."""

    def __init__(self, sigma):
        self.sigma = sigma

    def __call__(self, image):
        return image.filter(ImageFilter.GaussianBlur(radius=float(torch.empty(1).uniform_(*self.sigma))))


# The recipes as their references wrote them (not d2ssl.data.color.reference_color_augmentation, which
# reads the recipe back from the object under test): JigClu main.py l. 216-221 (MoCo v2's aug_plus), and
# the same with torchvision's 23-tap blur (VISSL / SimCLR, d2ssl's default blur_impl).
def jigclu_reference(blur):
    return T.Compose([
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([blur], p=0.5),
        T.RandomHorizontalFlip(),
    ])


@pytest.mark.parametrize("blur_impl, reference", [
    ("pil", jigclu_reference(JigCluGaussianBlur((0.1, 2.0)))),
    ("torchvision", jigclu_reference(T.GaussianBlur(23, sigma=(0.1, 2.0)))),
])
def test_fast_recipe_and_torchvision_recipe_give_views_with_the_same_statistics(photo, blur_impl, reference):
    # End to end: per-view summary statistics (mean, std, colourfulness) over many draws agree.
    aug = X.color_augmentation((0.4, 0.4, 0.4, 0.1), 0.8, 0.2, gaussian_blur_prob=0.5, blur_impl=blur_impl)
    small = photo.resize((32, 28))
    n = 600
    fast = aug.apply(
        pil_to_uint8(small)[None].expand(n, -1, -1, -1).contiguous(), torch.Generator().manual_seed(0)
    )
    torch.manual_seed(0)
    ref = torch.stack([pil_to_uint8(reference(small)) for _ in range(n)])

    def stats(views):
        v = views.float()
        return [
            v.mean(dim=(1, 2, 3)),
            v.std(dim=(1, 2, 3)),
            (v - v.mean(dim=1, keepdim=True)).abs().mean(dim=(1, 2, 3)),
        ]

    for a, b in zip(stats(fast), stats(ref)):
        assert ks_statistic(a.numpy(), b.numpy()) < 2.15 * math.sqrt(2 / n)


def test_tile_jitter_is_uniform_over_the_cell():
    image = torch.zeros(3, 255, 255)
    g = torch.Generator().manual_seed(0)
    offsets = []
    for _ in range(300):
        # tile content = its position: mark each pixel with its column index
        marked = torch.arange(255.0).expand(3, 255, 255)
        tiles = cut_tiles(marked + image, 3, 64, g)
        offsets += (tiles[:, 0, 0, 0] - torch.tensor([0, 85, 170] * 3)).tolist()
    counts = np.bincount(np.array(offsets, dtype=int), minlength=21)
    # offsets 0..20: VISSL's patch jitter np.random.randint(0, 85 - 64) (img_patches_tensor.py)
    assert len(counts) == 21
    assert all(binomial_ok(c, len(offsets), 1 / 21) for c in counts)


def test_jigsaw_mapper_grayscale_and_flip_rates():
    image = skimage.data.chelsea()[::4, ::4]
    mapper = JigsawMapper(generate_permutations(9, 10), resize_size=64, crop_size=63, tile_size=16)
    gray = []
    for seed in range(400):
        t = mapper({"image": image, "image_id": 0}, torch.Generator().manual_seed(seed))["tiles"]
        raw = t * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(
            1, 3, 1, 1
        )
        gray.append(bool((raw[:, 0] - raw[:, 1]).abs().max() < 1e-4))
    assert binomial_ok(sum(gray), 400, 0.66)
    g = torch.Generator().manual_seed(0)
    flips = mapper.gray.draw(4000, g)["flip"]
    assert binomial_ok(flips.sum(), 4000, 0.5)


# --- NPID's list of transforms and the JPEG draft option ------------------------------------------


def test_npid_transform_list_takes_the_fast_path_and_other_lists_do_not():
    npid = [T.ColorJitter(0.4, 0.4, 0.4, 0.4), T.RandomResizedCrop(224), T.RandomHorizontalFlip()]
    before, crop, after = fast_plan(npid)
    assert before[0].color_jitter == pytest.approx((0.4, 0.4, 0.4, 0.4)) and before[0].color_jitter_prob == 1
    assert crop is npid[1] and after[0].horizontal_flip and not after[0].color_jitter_prob
    assert fast_plan([T.RandomResizedCrop(224), T.RandomRotation(10)]) is None
    assert fast_plan([T.Resize(256), T.CenterCrop(224)]) is None
    assert fast_plan([T.RandomHorizontalFlip(), T.RandomResizedCrop(224)]) is None  # flip before the crop


def test_npid_fast_view_uses_the_whole_photos_contrast_grey(photo, monkeypatch):
    # NPID jitters the whole photo, then crops; the fast path crops first and gives contrast the grey
    # level of the whole photo (PIL's rounded mean of its L image), not the crop's.
    mapper = ImageMapper([T.ColorJitter(contrast=0.9), T.RandomResizedCrop(16, scale=(0.05, 0.05))])
    jitter = mapper.plan[0][0]
    seen = []
    monkeypatch.setattr(  # the uint8 crop goes to apply
        jitter, "apply", lambda views, g, contrast_means=None: seen.append(contrast_means) or views
    )
    mapper({"image": np.asarray(photo), "image_id": 0}, torch.Generator().manual_seed(0))
    whole_grey = int(np.asarray(photo.convert("L"), dtype=float).mean() + 0.5)
    assert seen[0].tolist() == [whole_grey]
    grey = torch.full((1,), 90.0)
    views = pil_to_uint8(photo)[None].float()
    assert torch.equal(X.adjust_contrast(views, one(0.0), grey), torch.full_like(views, 90.0))


def test_color_jitter_ranges_without_a_fast_equivalent_keep_the_torchvision_path():
    assert fast_plan([T.ColorJitter(brightness=(0.2, 0.5)), T.RandomResizedCrop(8)]) is None
    assert fast_plan([T.ColorJitter(brightness=1.5), T.RandomResizedCrop(8)])[0][0].color_jitter[0] == 1.5


def test_jpeg_draft_decodes_at_the_smallest_scale_keeping_the_shorter_side(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.fromarray(skimage.data.chelsea()).resize((500, 375)).save(path, quality=90)
    full = read_rgb_image({"file_name": str(path)})
    assert full.size == (500, 375)
    assert read_rgb_image({"file_name": str(path)}, decode_min_side=140).size == (250, 188)
    assert read_rgb_image({"file_name": str(path)}, decode_min_side=90).size == (125, 94)
    assert read_rgb_image({"file_name": str(path)}, decode_min_side=200).size == (500, 375)
    png = tmp_path / "photo.png"
    full.save(png)
    assert read_rgb_image({"file_name": str(png)}, decode_min_side=90).size == (500, 375)  # JPEG only
    draft = read_rgb_image({"file_name": str(path)}, decode_min_side=140)
    down = np.asarray(full.resize(draft.size, Image.BILINEAR), dtype=float)
    assert np.abs(np.asarray(draft, dtype=float) - down).mean() < 4  # the DCT's downscale ~ a resize


def test_fast_mappers_are_pure_functions_of_the_generator_and_leave_the_global_rng_alone():
    from d2ssl.data.mappers import JigsawClusteringMapper, PIRLMapper, RotationMapper

    image = {"image": skimage.data.chelsea()[::2, ::2], "image_id": 7}
    mappers = [
        PIRLMapper(augmentation=X.color_augmentation((0.4, 0.4, 0.4, 0.2), 1.0, 0.2, photometric_prob=0.66)),
        PIRLMapper(
            augmentation=X.photo_gblur_augmentation(), image_size=64, patch_crop_size=96, tile_size=30
        ),
        JigsawMapper(generate_permutations(9, 10)),
        RotationMapper(crop_size=64),
        JigsawClusteringMapper(patch_size=48),
        ImageMapper([T.ColorJitter(0.4, 0.4, 0.4, 0.4), T.RandomResizedCrop(64), T.RandomHorizontalFlip()]),
    ]
    for mapper in mappers:
        torch.manual_seed(123)
        before = torch.random.get_rng_state()
        a = mapper(dict(image), torch.Generator().manual_seed(9))
        assert torch.equal(torch.random.get_rng_state(), before), type(mapper).__name__
        b = mapper(dict(image), torch.Generator().manual_seed(9))
        c = mapper(dict(image), torch.Generator().manual_seed(10))
        key = next(k for k in ("tiles", "patches", "images", "image") if k in a)
        assert torch.equal(a[key], b[key]) and not torch.equal(a[key], c[key]), type(mapper).__name__


def test_classification_training_views_are_image_mapper_views_on_its_fast_path():
    from d2ssl.data.mappers import ClassificationMapper

    image = {"image": skimage.data.chelsea()[::2, ::2], "image_id": 3, "label": 5}
    jitter = [T.ColorJitter(0.4, 0.4, 0.4, 0.2)]  # ClusterFit's recipe (configs/clusterfit)
    for extra in ([], jitter, [T.RandomRotation(10)]):
        mapper = ClassificationMapper(train=True, crop_size=48, crop_scale=(0.2, 1.0), extra_transforms=extra)
        assert (mapper.train_view.plan is None) == bool(extra and isinstance(extra[0], T.RandomRotation))
        reference = ImageMapper([T.RandomResizedCrop(48, scale=(0.2, 1.0)), T.RandomHorizontalFlip(), *extra])
        torch.manual_seed(0)
        before = torch.random.get_rng_state()
        a = mapper(dict(image), torch.Generator().manual_seed(4))
        assert torch.equal(torch.random.get_rng_state(), before)
        assert a["label"] == 5 and a["image_id"] == 3 and a["image"].shape == (3, 48, 48)
        assert torch.equal(a["image"], reference(dict(image), torch.Generator().manual_seed(4))["image"])
        assert not torch.equal(a["image"], mapper(dict(image), torch.Generator().manual_seed(5))["image"])
    with pytest.raises(ValueError, match="Generator"):
        ClassificationMapper(train=True)(dict(image))
