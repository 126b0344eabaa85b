import pytest
import skimage.data
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as F

from d2ssl.data.mappers import PIRLMapper
from d2ssl.data.resize import to_normalized_tensor

GRID, CROP, TILE, IMAGE = 3, 255, 64, 224


@pytest.fixture(scope="module")
def astronaut() -> dict:
    return {"image": skimage.data.astronaut(), "image_id": 41}  # 512 x 512 RGB photo


def test_tiles_come_from_their_cells_of_the_patch_crop(astronaut):
    # scale (1, 1) on a square photo: the patch crop is the whole photo resized to 255, so every tile
    # can be looked up in it. No colour augmentation: pixels within 1 grey level (each tile is
    # resampled on its own, d2ssl.data.resize.resized_crop).
    mapper = PIRLMapper(
        augmentation=None, image_size=IMAGE, patch_crop_size=CROP, patch_crop_scale=(1.0, 1.0), grid=GRID,
        tile_size=TILE,
    )
    crop = to_normalized_tensor(F.resize(Image.fromarray(astronaut["image"]), [CROP, CROP]))
    cell = CROP // GRID
    one_level = 1.001 / (255 * torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1))  # normalised units
    for seed in range(3):
        out = mapper(dict(astronaut), torch.Generator().manual_seed(seed))
        assert out["image"].shape == (3, IMAGE, IMAGE)
        assert out["tiles"].shape == (GRID * GRID, 3, TILE, TILE)
        assert sorted(out["tile_order"].tolist()) == list(range(GRID * GRID))
        for slot, tile in enumerate(out["tiles"]):
            row, col = divmod(int(out["tile_order"][slot]), GRID)
            y0, x0 = row * cell, col * cell
            matches = [
                (dy, dx)
                for dy in range(cell - TILE + 1)
                for dx in range(cell - TILE + 1)
                if bool(((crop[:, y0 + dy :, x0 + dx :][:, :TILE, :TILE] - tile).abs() <= one_level).all())
            ]
            assert len(matches) == 1, (seed, slot, matches)


def test_tiles_are_shuffled_uniformly(astronaut):
    mapper = PIRLMapper(image_size=32, patch_crop_size=48, grid=GRID, tile_size=14)
    small = {"image": astronaut["image"][::8, ::8], "image_id": 0}
    first_slot = torch.zeros(GRID * GRID)
    for seed in range(90):
        first_slot[mapper(dict(small), torch.Generator().manual_seed(seed))["tile_order"][0]] += 1
    assert (first_slot >= 3).all() and first_slot.max() <= 20  # 10 expected per cell


def test_image_id_is_carried_and_views_are_reproducible(astronaut):
    mapper = PIRLMapper(augmentation=T.ColorJitter(0.4, 0.4, 0.4, 0.2), image_size=32, patch_crop_size=48,
                        tile_size=14)
    a = mapper(dict(astronaut), torch.Generator().manual_seed(5))
    b = mapper(dict(astronaut), torch.Generator().manual_seed(5))
    c = mapper(dict(astronaut), torch.Generator().manual_seed(6))
    assert a["image_id"] == 41
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["tiles"], b["tiles"])
    assert not torch.equal(a["tiles"], c["tiles"])


def test_each_view_is_augmented_on_its_own(astronaut):
    # VISSL applies the colour transforms to the image and to every tile independently.
    gray_or_not = T.RandomGrayscale(p=0.5)
    mapper = PIRLMapper(augmentation=gray_or_not, image_size=32, patch_crop_size=48, tile_size=14)
    out = mapper(dict(astronaut), torch.Generator().manual_seed(0))
    views = torch.cat([out["image"][None, :, :14, :14], out["tiles"]])
    # Grey views: channels equal up to the normalisation's float32 rounding (~1e-6); coloured ones
    # differ by at least one grey level (1/255 = 4e-3) somewhere: 1e-5 separates the two.
    gray = [bool(torch.allclose(v[0] * 0.229 + 0.485, v[1] * 0.224 + 0.456, atol=1e-5)) for v in views]
    assert any(gray) and not all(gray)


def test_tiles_that_do_not_fit_the_grid_are_refused():
    with pytest.raises(ValueError, match="tile_size=20 does not fit a 3x3 grid"):
        PIRLMapper(patch_crop_size=48, grid=3, tile_size=20)


def test_tiny_config_mapper_on_fashion_mnist(tiny_config, fashion_mnist_small):
    from detectron2.config import instantiate

    mapper = instantiate(tiny_config("pirl").dataloader.train.mapper)
    out = mapper(dict(fashion_mnist_small[7]), torch.Generator().manual_seed(0))
    assert out["image"].shape == (3, 32, 32) and out["tiles"].shape == (9, 3, 14, 14)
    assert out["image_id"] == 7
