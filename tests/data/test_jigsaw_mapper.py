import numpy as np
import pytest
import torch
from tolerances import U32, assert_within_bound, gamma

from d2ssl.data.mappers import JigsawMapper
from d2ssl.data.permutations import generate_permutations
from d2ssl.data.resize import IMAGENET_MEAN, IMAGENET_STD
from d2ssl.data.tiles import cut_tiles, tile_corners


def _mapper(**kw):
    args = dict(permutations=generate_permutations(4, 24, seed=0), grid=2, resize_size=64, crop_size=64,
                tile_size=32, grayscale_prob=0.0)
    args.update(kw)
    return JigsawMapper(**args)


def test_cut_tiles_without_jitter_reassembles_the_crop():
    image = torch.arange(3 * 6 * 6, dtype=torch.float32).view(3, 6, 6)
    tiles = cut_tiles(image, grid=3, tile_size=2, generator=torch.Generator().manual_seed(0))
    assert tiles.shape == (9, 3, 2, 2)
    rows = [torch.cat(list(tiles[r * 3 : r * 3 + 3]), dim=2) for r in range(3)]
    torch.testing.assert_close(torch.cat(rows, dim=1), image)


def test_jittered_tiles_lie_inside_their_cells():
    image = torch.arange(255 * 255, dtype=torch.float32).view(1, 255, 255)
    tiles = cut_tiles(image, grid=3, tile_size=64, generator=torch.Generator().manual_seed(1))
    for k, tile in enumerate(tiles):
        top_left = int(tile[0, 0, 0])
        y, x = divmod(top_left, 255)
        r, c = divmod(k, 3)
        assert r * 85 <= y <= r * 85 + 20 and c * 85 <= x <= c * 85 + 20
        torch.testing.assert_close(tile, image[:, y : y + 64, x : x + 64])


def test_tile_offsets_are_drawn_as_vissl_draws_them():
    # VISSL 09270ed vissl/data/ssl_transforms/img_patches_tensor.py: each tile's offset in its 85 px cell
    # of a 255 crop is np.random.randint(0, 21) for 64 px tiles, i.e. 0..20: neighbouring tiles never touch.
    g = torch.Generator().manual_seed(0)
    offsets = set()
    for _ in range(200):
        for k, (top, left) in enumerate(tile_corners(255, 255, 3, 64, g)):
            r, c = divmod(k, 3)
            offsets.update((top - r * 85, left - c * 85))
    assert offsets == set(range(21))


def test_shuffled_tiles_undo_to_the_crop(fashion_mnist_small):
    mapper = _mapper()
    out = mapper(dict(fashion_mnist_small[3]), torch.Generator().manual_seed(7))
    assert out["tiles"].shape == (4, 3, 32, 32)
    perm = mapper.permutations[out["perm_index"]]
    # slot s holds original tile perm[s]; with tile_size == cell size the tiles tile the crop exactly.
    original = torch.empty_like(out["tiles"])
    original[perm] = out["tiles"]
    crop = torch.cat([torch.cat([original[0], original[1]], 2), torch.cat([original[2], original[3]], 2)], 1)
    # Resize 28 -> 64 and a 64 crop leave only the flip random: the reassembled crop is the
    # resized image, flipped or not.
    from PIL import Image
    from torchvision.transforms import functional as F

    resized = F.resize(Image.fromarray(fashion_mnist_small[3]["image"]).convert("RGB"), 64)
    expected = F.normalize(F.to_tensor(resized), IMAGENET_MEAN, IMAGENET_STD)
    # The same uint8 pixels, normalised two ways in float32: ours rounds -m/s, 1/(255 s), a product and
    # a sum (<= 14u with m/s <= 2.12, 1/s <= 4.45, |y| <= 2.64); torchvision x/255, m, s, the
    # difference and the quotient (<= 17u).
    atol = 31 * U32
    flipped = expected.flip(2)
    assert torch.allclose(crop, expected, atol=atol, rtol=0) or torch.allclose(crop, flipped, atol=atol,
                                                                              rtol=0)


def test_same_generator_seed_gives_same_views_and_labels(fashion_mnist_small):
    mapper = _mapper(grayscale_prob=0.5)
    a = mapper(dict(fashion_mnist_small[0]), torch.Generator().manual_seed(11))
    b = mapper(dict(fashion_mnist_small[0]), torch.Generator().manual_seed(11))
    c = mapper(dict(fashion_mnist_small[0]), torch.Generator().manual_seed(12))
    torch.testing.assert_close(a["tiles"], b["tiles"])
    assert a["perm_index"] == b["perm_index"]
    assert a["image_id"] == 0
    assert not torch.equal(a["tiles"], c["tiles"])


def test_labels_cover_the_permutation_set_uniformly(fashion_mnist_small):
    mapper = _mapper()
    image = fashion_mnist_small[0]
    labels = [mapper(dict(image), torch.Generator().manual_seed(s))["perm_index"] for s in range(480)]
    counts = np.bincount(labels, minlength=24)
    assert counts.min() > 5 and counts.max() < 40  # expectation 20 each


def test_per_tile_normalization_standardises_each_tile(fashion_mnist_small):
    # 8 px tiles: n = 192 values per tile keeps the rounding bound (~gamma_n) far below the 1 / (2n)
    # that an unbiased and a biased std differ by.
    small = dict(resize_size=16, crop_size=16, tile_size=8)
    image = fashion_mnist_small[1]
    out = _mapper(per_tile_normalization=True, **small)(dict(image), torch.Generator().manual_seed(0))
    plain = _mapper(**small)(dict(image), torch.Generator().manual_seed(0))["tiles"]  # the same draws
    # Written here in float64: each tile minus the mean of all its values (channels together), over
    # their unbiased std + 1e-5 (Noroozi & Favaro's per-tile standardisation).
    x = plain.double().flatten(1)
    mean, std = x.mean(1, keepdim=True), x.std(1, keepdim=True)
    want = ((x - mean) / (std + 1e-5)).view_as(plain)
    # float32: the mean of n values is off by gamma_n mean|x|, the std by gamma_{n+4} relative (the
    # mean's error enters it at second order), then a subtraction and a division (2u |y|).
    n = x.shape[1]
    bound = (gamma(n) * x.abs().mean(1, keepdim=True) + U32 * (x - mean).abs()) / (std + 1e-5) + (
        gamma(n + 4) + 2 * U32) * ((x - mean) / (std + 1e-5)).abs()
    assert_within_bound(out["tiles"], want, 2 * bound.view_as(plain), name="per-tile standardised tiles",
                        what="twice the float32 rounding bound")
    assert (std > 0.1).all()  # real contrast in every tile: the test is not about the eps


def test_grid_that_does_not_fit_the_crop_is_rejected():
    with pytest.raises(ValueError, match="tile_size=64 does not fit a 3x3 grid on crop_size=96"):
        JigsawMapper(generate_permutations(9, 5), grid=3, crop_size=96, tile_size=64)
