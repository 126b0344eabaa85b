"""Photometric augmentation on the model's device (mappers' ``augment_on_device=True``), on CPU tensors:
the same draws as the loader path, the same views within the batch kernels' tolerance, the same losses,
and kernels that create their tensors on the views' device (so they run unchanged on a GPU)."""

import copy
import pickle
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from detectron2.config import instantiate
from PIL import Image, ImageEnhance, ImageFilter
from torchvision import transforms as T

from d2ssl.data import color as X
from d2ssl.data.build import SeededMapDataset
from d2ssl.data.device_augmentation import DEFERRED_AUGMENTATION, augment_on_device
from d2ssl.data.mappers import ImageMapper, JigsawClusteringMapper, PIRLMapper
from d2ssl.data.mappers.montage import default_jigclu_augmentation
from d2ssl.data.resize import IMAGENET_STD, normalize_uint8, pil_to_uint8, uint8_to_pil
from d2ssl.engine.train_loop import setup_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# Real photos, made small for speed; different sizes and contents so a batch mixes them.
PHOTOS = [
    skimage.data.astronaut()[::4, ::4],
    skimage.data.chelsea()[::3, ::3],
    skimage.data.coffee()[::4, ::4],
]

PIRL_RECIPE = dict(color_jitter=(0.4, 0.4, 0.4, 0.2), color_jitter_prob=1.0, photometric_prob=0.66,
                   grayscale_prob=0.2)  # configs/pirl_R50.py
SMALL_PIRL = dict(image_size=48, patch_crop_size=63, tile_size=20)

MAPPERS = {
    "pirl": lambda on: PIRLMapper(X.color_augmentation(**PIRL_RECIPE), augment_on_device=on, **SMALL_PIRL),
    "pirl_gblur": lambda on: PIRLMapper(X.photo_gblur_augmentation(), augment_on_device=on, **SMALL_PIRL),
    "jigclu": lambda on: JigsawClusteringMapper(patch_size=40, augment_on_device=on),  # PIL blur
    "npid": lambda on: ImageMapper(  # jitter of the whole photo, crop, flip (configs/npid_R50.py)
        [T.ColorJitter(0.4, 0.4, 0.4, 0.4), T.RandomResizedCrop(48), T.RandomHorizontalFlip()],
        augment_on_device=on,
    ),
    "npid_gblur": lambda on: ImageMapper([T.RandomResizedCrop(48), X.photo_gblur_augmentation()],
                                         augment_on_device=on),
}
VIEW_KEYS = {"pirl": ("image", "tiles"), "pirl_gblur": ("image", "tiles"), "jigclu": ("patches",),
             "npid": ("image",), "npid_gblur": ("image",)}
LEVELS = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255  # normalised value -> grey levels


def assert_levels_close(ours: torch.Tensor, reference: torch.Tensor, max_levels: float, max_fraction: float):
    diff = (ours - reference).abs()
    assert diff.max() <= max_levels, diff.max()
    assert (diff > 1e-3).float().mean() <= max_fraction, (diff > 1e-3).float().mean()


@pytest.fixture(params=["native", "tensor"])
def kernels(request, monkeypatch):
    """``native``: hue and PIL's blur as on the CPU (PIL's C code); ``tensor``: the tensor versions
    that every other device runs, so that the CPU tests cover the GPU's code path end to end."""
    if request.param == "tensor":
        monkeypatch.setattr(X, "adjust_hue", X.adjust_hue_tensor)
        monkeypatch.setattr(X, "pil_gaussian_blur", X.pil_gaussian_blur_tensor)
    return request.param


# --- the tensor versions of PIL's HSV conversions and Gaussian blur: PIL's pixels exactly ----------


def colour_sample() -> np.ndarray:
    """A lattice of the RGB cube (every 5th level, both ends included) and 2^16 random colours."""
    levels = np.arange(0, 256, 5, dtype=np.uint8)
    lattice = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)
    random = np.random.default_rng(0).integers(0, 256, (2**16, 3), dtype=np.uint8)
    return np.concatenate([lattice, random])


def as_image(colours: np.ndarray, mode: str) -> Image.Image:
    return Image.frombuffer(mode, (len(colours), 1), colours.tobytes(), "raw", mode, 0, 1)


def test_tensor_hsv_conversions_equal_pils_both_ways():
    colours = colour_sample()
    as_tensor = torch.from_numpy(colours.T.copy()).view(1, 3, 1, -1)
    hsv = torch.stack(X.rgb_to_pil_hsv(as_tensor), dim=1)[0, :, 0].T.to(torch.uint8).numpy()
    assert np.array_equal(hsv, np.asarray(as_image(colours, "RGB").convert("HSV"))[0])
    # Every colour read as HSV levels -> RGB (covers every sector and the grey case s = 0).
    h, s, v = (torch.from_numpy(colours[:, k].astype(np.float64)).view(1, 1, -1) for k in range(3))
    rgb = X.pil_hsv_to_rgb(h, s, v)[0, :, 0].T.to(torch.uint8).numpy()
    assert np.array_equal(rgb, np.asarray(as_image(colours, "HSV").convert("RGB"))[0])


def test_tensor_hue_shift_equals_the_pil_one():
    photos = torch.stack([pil_to_uint8(Image.fromarray(p).resize((40, 32))) for p in PHOTOS]).float()
    for shift in ([0.1, -0.37, 0.5], [-0.5, 0.013, 0.25]):
        shift = torch.tensor(shift)
        assert torch.equal(X.adjust_hue_tensor(photos, shift), X.adjust_hue(photos, shift))


@pytest.mark.parametrize("size", [(45, 38), (7, 5), (3, 3), (1, 1)])
def test_tensor_pil_blur_equals_pils_gaussian_blur(size):
    # Sigmas of JigClu's range, a tiny one (box radius < 1) and ones wider than the image.
    photo = Image.fromarray(PHOTOS[1]).resize(size)
    sigma = torch.tensor([0.1, 0.37, 1.0, 1.55, 2.0, 0.003, 9.0, 40.0])
    views = pil_to_uint8(photo)[None].expand(len(sigma), -1, -1, -1).float()
    ours = X.pil_gaussian_blur_tensor(views, sigma)
    for view, s in zip(ours, sigma.tolist()):
        assert torch.equal(view, pil_to_uint8(photo.filter(ImageFilter.GaussianBlur(radius=s))).float()), s


def test_contrast_grey_level_is_pils_where_a_float32_mean_would_round_up():
    # A 448 px grey view whose mean level is 200.5 - 1/N: PIL (a double mean) blends with 200; a float32
    # mean rounds to 200.5, then to 201. Sums of levels in float64 are also exact in a GPU's order.
    side = 448
    levels = torch.full((side * side,), 200, dtype=torch.uint8)
    levels[: side * side // 2 - 1] = 201
    view = levels.view(1, 1, side, side).expand(1, 3, side, side)
    ours = X.adjust_contrast(view.float(), torch.tensor([0.5]))
    expected = pil_to_uint8(ImageEnhance.Contrast(uint8_to_pil(view[0])).enhance(0.5))
    assert torch.equal(ours[0], expected.float())
    assert X.rounded_mean(X.luma(view.float())).tolist() == [200.0]


# --- the kernels run where the views are ------------------------------------------------------------

ALL_OPS = [  # every op on, so every kernel runs; then a mixed draw
    X.ColorAugmentation((0.4, 0.4, 0.4, 0.2), 1.0, 1.0, 1.0, photometric_prob=1.0),
    X.ColorAugmentation((0.4, 0.4, 0.4, 0.2), 1.0, 1.0, 1.0, photometric_prob=1.0, blur_impl="pil"),
    X.ColorAugmentation((0.4, 0.4, 0.4, 0.1), 0.8, 0.2, 0.5, photometric_prob=0.5, blur_impl="pil"),
]


@pytest.mark.parametrize("aug", ALL_OPS)
def test_kernels_create_their_tensors_on_the_views_device(aug, monkeypatch):
    views = torch.stack([pil_to_uint8(Image.fromarray(p).resize((36, 30))) for p in PHOTOS] * 2)
    params = aug.draw(len(views), torch.Generator().manual_seed(0))
    # On the meta device (no data): a tensor made on a hard-coded CPU would meet the meta views and
    # raise; the parameters stay on the CPU, where draw() makes them.
    out = aug.apply_params_torch(views.to("meta"), params)
    assert out.device.type == "meta" and out.dtype == torch.uint8 and out.shape == views.shape
    assert normalize_uint8(out).device.type == "meta"
    # With the default device elsewhere, CPU views still give CPU views, the same pixels: no tensor
    # is made on the default device (the tensor kernels, as a GPU runs them).
    monkeypatch.setattr(X, "adjust_hue", X.adjust_hue_tensor)
    monkeypatch.setattr(X, "pil_gaussian_blur", X.pil_gaussian_blur_tensor)
    expected = aug.apply_params_torch(views, params)
    with torch.device("meta"):
        assert torch.equal(aug.apply_params_torch(views, params), expected)
        assert torch.equal(normalize_uint8(expected), normalize_uint8(expected.to("cpu")))


# --- mappers: the same draws and views on both paths ------------------------------------------------


CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("name", list(MAPPERS))
def test_device_path_gives_the_loader_paths_views(name, kernels, device):
    loader_mapper, device_mapper = MAPPERS[name](False), MAPPERS[name](True)
    loader, on_device = [], []
    for i, photo in enumerate(PHOTOS * 2):
        g1, g2 = torch.Generator().manual_seed(i), torch.Generator().manual_seed(i)
        loader.append(loader_mapper({"image": photo, "image_id": i}, g1))
        on_device.append(device_mapper({"image": photo, "image_id": i}, g2))
        # Same draws in the same order: the generators end in the same state.
        assert torch.equal(g1.get_state(), g2.get_state())
    for key in VIEW_KEYS[name]:
        assert all(d[key].dtype == torch.uint8 for d in on_device)
        # One call for the whole batch (each op once, the samples' parameters concatenated).
        ours = augment_on_device(on_device, key, device)
        assert ours.device.type == device
        ours = ours.cpu()
        reference = torch.stack([x[key] for x in loader])
        assert ours.dtype == torch.float32 and ours.shape == reference.shape
        # The batch kernels' tolerance (tests/data/test_view_distributions.py): 1 level, < 1% of values.
        assert_levels_close(ours * LEVELS, reference * LEVELS, max_levels=1.001, max_fraction=0.01)
    for a, b in zip(loader, on_device):
        assert a["image_id"] == b["image_id"] and set(a) == set(b) - {DEFERRED_AUGMENTATION}
        if "tile_order" in a:
            assert torch.equal(a["tile_order"], b["tile_order"])


def test_option_off_returns_the_normalised_views_as_before():
    # Off (the default): float views and no deferred parameters, the loader path unchanged.
    for name, make in MAPPERS.items():
        out = make(False)({"image": PHOTOS[0], "image_id": 0}, torch.Generator().manual_seed(0))
        assert DEFERRED_AUGMENTATION not in out and out[VIEW_KEYS[name][0]].dtype == torch.float32


def test_augmentation_is_exempt_from_autocast_and_reduced_precision_matmuls():
    mapper = MAPPERS["pirl_gblur"](True)
    batch = [mapper({"image": p, "image_id": i}, torch.Generator().manual_seed(i))
             for i, p in enumerate(PHOTOS)]
    plain = augment_on_device(batch, "tiles", "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what AMP on the CPU wraps the forward in
        assert torch.equal(augment_on_device(batch, "tiles", "cpu"), plain)
    precision = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")  # TF32 / bfloat16 products where supported
        assert torch.equal(augment_on_device(batch, "tiles", "cpu"), plain)
        assert torch.get_float32_matmul_precision() == "medium"  # the user's setting is restored
    finally:
        torch.set_float32_matmul_precision(precision)


def test_deferred_samples_cross_process_boundaries():
    # Loader workers pickle the mapped dicts: the parameters and the recipe travel with the views.
    mapper = MAPPERS["npid"](True)
    batch = [mapper({"image": p, "image_id": i}, torch.Generator().manual_seed(i))
             for i, p in enumerate(PHOTOS)]
    copied = pickle.loads(pickle.dumps(batch))
    assert torch.equal(augment_on_device(copied, "image", "cpu"), augment_on_device(batch, "image", "cpu"))


@pytest.mark.parametrize(
    "name", ["pirl_R50", "pirl_R50_mlp_gblur", "npid_R50", "npid_R50_gblur", "jigclu_R50"]
)
def test_full_scale_configs_have_the_switch_off(name):
    cfg = setup_config(str(CONFIGS / f"{name}.py"), [])
    assert cfg.dataloader.train.mapper.augment_on_device is False


def test_options_that_cannot_be_deferred_are_refused():
    with pytest.raises(ValueError, match="augment_on_device"):
        ImageMapper([T.RandomResizedCrop(32), T.RandomRotation(10)], augment_on_device=True)
    with pytest.raises(ValueError, match="augment_on_device"):
        PIRLMapper(T.ColorJitter(0.4), augment_on_device=True)
    with pytest.raises(ValueError, match="augment_on_device"):
        JigsawClusteringMapper(augmentation=T.ColorJitter(0.4), augment_on_device=True)
    assert isinstance(JigsawClusteringMapper(augmentation=default_jigclu_augmentation()).augmentation,
                      X.ColorAugmentation)


# --- the model: the switch is one config key --------------------------------------------------------


@pytest.mark.parametrize("name", ["pirl", "jigclu", "npid"])
def test_config_switch_gives_the_same_losses(name, tiny_config, fashion_mnist_small):
    images = fashion_mnist_small[:8]
    losses, batches = {}, {}
    for on in (False, True):
        cfg = tiny_config(name, f"dataloader.train.mapper.augment_on_device={on}")
        if "num_train_samples" in cfg.model.get("loss", {}):
            cfg.model.loss.num_train_samples = len(images)
            cfg.model.loss.negative_sampling_params.num_negatives = len(images) - 1
        torch.manual_seed(0)
        model = instantiate(cfg.model).train()
        dataset = SeededMapDataset(images, instantiate(cfg.dataloader.train.mapper), seed=0)
        batches[on] = [dataset[(i, i)] for i in range(len(images))]
        assert (DEFERRED_AUGMENTATION in batches[on][0]) == on
        untouched = copy.deepcopy(model)  # the forward updates the memory bank
        torch.manual_seed(1)  # the same negatives / montage shuffle
        losses[on] = {k: float(v.detach()) for k, v in model(batches[on]).items()}
    # The meta-architecture augments the deferred views in stack(): exactly the loss of a plain batch
    # of those views.
    views = {key: model.stack(batches[True], key) for key in VIEW_KEYS[name]}
    plain = [{k: v for k, v in x.items() if k != DEFERRED_AUGMENTATION} for x in batches[True]]
    for i, x in enumerate(plain):
        x.update({key: v[i] for key, v in views.items()})
    torch.manual_seed(1)
    assert {k: float(v.detach()) for k, v in untouched(plain).items()} == losses[True]
    for key in VIEW_KEYS[name]:
        off = torch.stack([x[key] for x in batches[False]])
        assert_levels_close(views[key] * LEVELS, off * LEVELS, max_levels=1.001, max_fraction=0.01)
    # Views within 1 grey level on < 1% of the values: the tiny random trunk (BatchNorm over 8 images)
    # moves the losses by up to ~0.2% (measured), other views of the same images by 5-20%.
    assert losses[True].keys() == losses[False].keys()
    for key in losses[False]:
        assert losses[True][key] == pytest.approx(losses[False][key], rel=1e-2), key


def test_classification_training_views_defer_to_the_linear_benchmark_and_clusterfit_models():
    from d2ssl.data.mappers import ClassificationMapper
    from d2ssl.evaluation.models import TrunkClassifier
    from d2ssl.modeling.backbone import build_resnet_trunk

    photo = skimage.data.chelsea()[::4, ::4]
    samples = [{"image": photo, "image_id": i, "label": i % 3} for i in range(4)]
    jitter = [T.ColorJitter(0.4, 0.4, 0.4, 0.2)]  # ClusterFit's recipe (configs/clusterfit)
    args = dict(train=True, crop_size=32, crop_scale=(0.2, 1.0), extra_transforms=jitter)
    loader, deferring = ClassificationMapper(**args), ClassificationMapper(**args, augment_on_device=True)
    off = [loader(dict(s), torch.Generator().manual_seed(i)) for i, s in enumerate(samples)]
    on = [deferring(dict(s), torch.Generator().manual_seed(i)) for i, s in enumerate(samples)]
    assert on[0]["image"].dtype == torch.uint8 and [x["label"] for x in on] == [x["label"] for x in off]
    views = augment_on_device(on, "image", "cpu")
    assert_levels_close(views * LEVELS, torch.stack([x["image"] for x in off]) * LEVELS,
                        max_levels=1.001, max_fraction=0.01)

    torch.manual_seed(0)
    trunk = build_resnet_trunk(18, base_channels=16, out_features=("res5",))
    model = TrunkClassifier(trunk, {"fc": {"feature": "res5"}}, num_classes=3, input_size=32).eval()
    plain = [{**{k: v for k, v in x.items() if k != DEFERRED_AUGMENTATION}, "image": views[i]}
             for i, x in enumerate(on)]
    assert torch.equal(model(on)["fc"], model(plain)["fc"])  # the model augments what the mapper deferred

    with pytest.raises(ValueError, match="training views"):
        ClassificationMapper(train=False, augment_on_device=True)
    cfg = setup_config(str(Path(__file__).resolve().parents[2] / "configs/clusterfit/clusterfit_R50.py"), [])
    assert cfg.dataloader.train.mapper.augment_on_device is False
