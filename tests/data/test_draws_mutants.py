"""The random draws of the views, checked against values computed here (benchmarks/mutation.py): tile
jitter (VISSL's ``randint(0, cell - tile)``), torchvision's random-resized-crop law replayed from the
generator's uniforms, the permutation set's bounds, and the rotation labels."""

import json
import math

import numpy as np
import pytest
import torch

from d2ssl.data.color import color_augmentation
from d2ssl.data.mappers.rotation import RotationMapper, rotate
from d2ssl.data.permutations import (
    generate_permutations,
    hamming_distances,
    load_or_create_permutations,
    validate_permutations,
)
from d2ssl.data.resize import random_resized_crop_box
from d2ssl.data.tiles import cut_tiles, normalize_per_tile, tile_corners


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- tiles ------------------------------------------------------------------------------------------


def test_tile_corners_are_cell_origins_plus_vissl_jitter_row_major():
    # 17x23 crop, 3x3 grid: cells of min(17, 23) // 3 = 5 px, tiles of 3: offsets randint(0, 2) = 0 or 1.
    for seed in range(20):
        corners = tile_corners(17, 23, 3, 3, seeded(seed))
        jitter = torch.randint(0, 2, (3, 3, 2), generator=seeded(seed))
        expected = [(5 * r + int(jitter[r, c, 0]), 5 * c + int(jitter[r, c, 1]))
                    for r in range(3) for c in range(3)]
        assert corners == expected


def test_tile_offsets_cover_zero_to_cell_minus_tile_minus_one():
    # cells of 10 px, tiles of 6: VISSL's offsets 0..3 (never 4, where neighbours would touch).
    offsets = set()
    for seed in range(30):
        for r, (y, x) in enumerate(tile_corners(20, 20, 2, 6, seeded(seed))):
            offsets.update({y - 10 * (r // 2), x - 10 * (r % 2)})
    assert offsets == {0, 1, 2, 3}


def test_tile_as_large_as_its_cell_has_offset_zero_and_a_larger_one_is_refused():
    assert tile_corners(6, 6, 2, 3, seeded(0)) == [(0, 0), (0, 3), (3, 0), (3, 3)]
    message = r"tile_size=4 does not fit a 2x2 grid on a 6x7 crop \(cells of 3 px\); use crop_size >= 8 or a"
    with pytest.raises(ValueError, match=message + " smaller tile_size"):
        tile_corners(6, 7, 2, 4, seeded(0))


def test_cut_tiles_are_the_pixels_at_the_corners_in_channels_last_layout():
    image = torch.arange(3 * 12 * 12, dtype=torch.float32).view(3, 12, 12)
    tiles = cut_tiles(image, 2, 4, seeded(7))
    corners = tile_corners(12, 12, 2, 4, seeded(7))
    assert tiles.shape == (4, 3, 4, 4)
    for t, (y, x) in enumerate(corners):
        assert torch.equal(tiles[t], image[:, y : y + 4, x : x + 4])
    assert tiles.permute(0, 2, 3, 1).is_contiguous()


def test_normalize_per_tile_uses_each_tiles_mean_and_unbiased_std():
    tiles = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]]], [[[0.0, 0.0], [0.0, 8.0]]]])  # (2, 1, 2, 2)
    out = normalize_per_tile(tiles, eps=0.5)
    for t, values in enumerate(([1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 0.0, 8.0])):
        mean = sum(values) / 4
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
        expected = torch.tensor([(v - mean) / (std + 0.5) for v in values]).view(1, 2, 2)
        torch.testing.assert_close(out[t], expected, rtol=1e-6, atol=1e-6)  # float32 rounding
    # The default eps, 1e-5, is what keeps a flat tile finite; a unit-std tile is divided by 1 + 1e-5.
    flat = normalize_per_tile(torch.zeros(1, 1, 2, 2))
    assert torch.equal(flat, torch.zeros(1, 1, 2, 2))
    unit = torch.tensor([-1.0, 1.0, -1.0, 1.0]).view(1, 1, 2, 2) * math.sqrt(3 / 4)  # unbiased std 1
    torch.testing.assert_close(normalize_per_tile(unit), unit / (1 + 1e-5), rtol=1e-6, atol=0)


# --- random resized crop ----------------------------------------------------------------------------


def _torchvision_law(width, height, scale, ratio, uniforms):
    """RandomResizedCrop.get_params written from torchvision's docs, fed the given uniforms."""
    for u_area, u_ratio, u_top, u_left in uniforms:
        target = width * height * (scale[0] + (scale[1] - scale[0]) * u_area)
        aspect = math.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u_ratio)
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return math.floor(u_top * (height - h + 1)), math.floor(u_left * (width - w + 1)), h, w
    return None


@pytest.mark.parametrize("width,height,scale,ratio", [
    (64, 48, (0.08, 1.0), (3 / 4, 4 / 3)),
    (30, 90, (0.3, 0.9), (0.5, 2.0)),
    (40, 40, (0.6, 1.0), (3 / 4, 4 / 3)),
])
def test_crop_box_follows_torchvisions_law_on_the_generators_uniforms(width, height, scale, ratio):
    for seed in range(40):
        uniforms = torch.rand(10, 4, generator=seeded(seed), dtype=torch.float64).tolist()
        expected = _torchvision_law(width, height, scale, ratio, uniforms)
        if expected is not None:
            assert random_resized_crop_box(width, height, scale, seeded(seed), ratio) == expected


def test_crop_box_may_span_the_full_width_or_height():
    # Square crops of half the area of a 20x40 image are 20 wide: the full width is allowed (w <= width),
    # with the top drawn in 0..20; and the same for the full height of a 40x20 image.
    for seed in range(10):
        (u_top, u_left), = torch.rand(10, 4, generator=seeded(seed), dtype=torch.float64)[:1, 2:].tolist()
        top, left, h, w = random_resized_crop_box(20, 40, (0.5, 0.5), seeded(seed), (1.0, 1.0))
        assert (top, left, h, w) == (math.floor(u_top * 21), 0, 20, 20)
        top, left, h, w = random_resized_crop_box(40, 20, (0.5, 0.5), seeded(seed), (1.0, 1.0))
        assert (top, left, h, w) == (0, math.floor(u_left * 21), 20, 20)


@pytest.mark.parametrize("width,height,scale,ratio", [
    (10, 100, (0.01, 0.01), (0.1, 0.1)),    # a crop 1 px wide, 10 high: the smallest accepted
    (100, 10, (0.01, 0.01), (10.0, 10.0)),  # 10 wide, 1 high
])
def test_crop_box_of_one_pixel_side_is_accepted(width, height, scale, ratio):
    for seed in range(5):
        uniforms = torch.rand(10, 4, generator=seeded(seed), dtype=torch.float64).tolist()
        expected = _torchvision_law(width, height, scale, ratio, uniforms)
        assert expected is not None and min(expected[2:]) == 1
        assert random_resized_crop_box(width, height, scale, seeded(seed), ratio) == expected


@pytest.mark.parametrize("width,height,ratio,expected", [
    (10, 100, (0.001, 0.001), (0, 5, 100, 0)),  # every try is 0 px wide: refused, the fallback instead
    (100, 10, (1000.0, 1000.0), (5, 0, 0, 100)),  # every try is 0 px high
])
def test_crop_box_of_zero_width_or_height_is_never_drawn(width, height, ratio, expected):
    assert random_resized_crop_box(width, height, (0.001, 0.001), seeded(3), ratio) == expected


@pytest.mark.parametrize("width,height,expected", [
    (100, 10, (0, 43, 10, 13)),   # wider than 4/3: full height, width round(10 * 4/3) = 13, centred
    (10, 100, (43, 0, 13, 10)),   # taller than 3/4: full width, height round(10 / 0.75) = 13, centred
    (30, 25, (0, 0, 25, 30)),     # within the ratios: the whole image
])
def test_crop_box_falls_back_to_the_central_crop_clamped_to_the_ratio(width, height, expected):
    # An area fraction of 2 never fits: all ten tries fail.
    assert random_resized_crop_box(width, height, (2.0, 2.0), seeded(0)) == expected


# --- permutations -----------------------------------------------------------------------------------


def test_permutation_count_bounds_are_one_and_n_factorial():
    everything = generate_permutations(3, 6, seed=1)
    assert sorted(map(tuple, everything)) == sorted(
        [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)])
    assert generate_permutations(3, 1, seed=1).shape == (1, 3)
    for bad in (0, 7):
        with pytest.raises(ValueError, match=rf"num_permutations={bad} must be between 1 and 3! = 6"):
            generate_permutations(3, bad)
    with pytest.raises(ValueError, match="permutation method must be 'max_avg' or 'max_min', got 'max'"):
        generate_permutations(3, 2, method="max")


def test_first_permutation_is_the_seeds_draw_in_lexicographic_order():
    import itertools

    lexicographic = list(itertools.permutations(range(4)))
    for seed in (0, 5, 11):
        first = int(np.random.default_rng(seed).integers(24))
        assert tuple(generate_permutations(4, 3, seed=seed)[0]) == lexicographic[first]


@pytest.mark.parametrize("method", ["max_avg", "max_min"])
def test_the_first_permutation_is_never_chosen_again(method):
    # With 5 tiles and seed 0, max_avg's running sum makes the first permutation (distance 0 to itself)
    # the best scored at the 71st pick: only marking it taken keeps the rows distinct.
    for count in (71, 120):
        perms = generate_permutations(5, count, seed=0, method=method)
        assert len({tuple(p) for p in perms}) == count


def test_the_default_seed_is_zero():
    import itertools

    first = list(itertools.permutations(range(4)))[int(np.random.default_rng(0).integers(24))]
    assert tuple(generate_permutations(4, 5)[0]) == first
    assert tuple(load_or_create_permutations(None, 4, 5)[0]) == first


def test_a_file_of_another_count_is_refused_unless_the_count_is_left_open(tmp_path):
    path = str(tmp_path / "given.npy")
    np.save(path, np.array([[0, 1, 2], [2, 1, 0]]))
    with pytest.raises(ValueError, match=r"holds 2 permutations but num_permutations=3; delete the file or "
                                         r"set num_permutations=2"):
        load_or_create_permutations(path, 3, 3)
    np.testing.assert_array_equal(load_or_create_permutations(path, 3, 0), [[0, 1, 2], [2, 1, 0]])


def test_a_generated_set_is_saved_in_a_new_folder_or_the_working_directory(tmp_path, monkeypatch):
    nested = tmp_path / "new" / "deeper" / "perms.npy"
    perms = load_or_create_permutations(str(nested), 3, 4, seed=2)
    np.testing.assert_array_equal(np.load(nested), perms)
    assert json.loads((tmp_path / "new" / "deeper" / "perms.npy.json").read_text()) == {
        "num_tiles": 3, "num_permutations": 4, "seed": 2, "method": "max_avg"}
    monkeypatch.chdir(tmp_path)
    np.testing.assert_array_equal(load_or_create_permutations("bare.npy", 3, 4, seed=2), perms)
    np.testing.assert_array_equal(np.load(tmp_path / "bare.npy"), perms)


def test_hamming_distances_count_differing_positions():
    perms = np.array([[0, 1, 2, 3], [1, 0, 2, 3], [3, 2, 1, 0]])
    np.testing.assert_array_equal(hamming_distances(perms), [[0, 2, 4], [2, 0, 4], [4, 4, 0]])


def test_validate_permutations_names_each_fault():
    validate_permutations(np.array([[0, 1, 2], [2, 1, 0]]), 3)
    with pytest.raises(ValueError, match=r"f.npy: expected shape \(P, 3\), got \(2, 2\)"):
        validate_permutations(np.array([[0, 1], [1, 0]]), 3, source="f.npy")
    with pytest.raises(ValueError, match="not permutations of range"):
        validate_permutations(np.array([[0, 1, 1]]), 3)
    with pytest.raises(ValueError, match="duplicate"):
        validate_permutations(np.array([[0, 1, 2], [0, 1, 2]]), 3)


# --- rotation draws ---------------------------------------------------------------------------------


def _no_flip():
    return color_augmentation(color_jitter=None, grayscale_prob=0.0, horizontal_flip=False)


def _square_image(size: int = 16) -> dict:
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return {"image": pixels, "image_id": 9}


@pytest.mark.parametrize("k", [1, 2, 3])
def test_partial_rotation_labels_are_the_first_k_of_a_permutation_drawn_after_the_crop(k):
    mapper = RotationMapper(crop_size=16, crop_scale=(0.5, 1.0), augmentation=_no_flip(),
                            rotations_per_image=k)
    for seed in range(6):
        out = mapper(_square_image(), seeded(seed))
        replay = seeded(seed)
        torch.rand(10, 4, generator=replay, dtype=torch.float64)  # the crop's draws
        _no_flip().draw(1, replay)  # the augmentation's
        assert out["rotation_labels"].tolist() == torch.randperm(4, generator=replay)[:k].tolist()
        assert out["images"].shape == (k, 3, 16, 16)


def test_rotate_before_crop_rotates_the_whole_image_by_the_first_draw():
    # scale (1, 1) on a square image: no try fits the ratio range except aspect 1, so the crop is the
    # whole image, at its own size; the view is then the image rotated by 90 * label degrees. 96 px:
    # a label-2 or label-3 angle off by half a degree or more moves the corners by over half a pixel.
    image = _square_image(96)
    mapper = RotationMapper(crop_size=96, crop_scale=(1.0, 1.0), augmentation=_no_flip(),
                            rotations_per_image=1, rotate_before_crop=True, pixel_mean=(0.0, 0.0, 0.0),
                            pixel_std=(1 / 255, 1 / 255, 1 / 255))
    labels = set()
    for seed in range(12):
        out = mapper(dict(image), seeded(seed))
        label = int(torch.randint(4, (1,), generator=seeded(seed)))
        labels.add(label)
        assert out["rotation_labels"].tolist() == [label] and out["image_id"] == 9
        pixels = torch.from_numpy(image["image"]).permute(2, 0, 1).float()
        torch.testing.assert_close(out["images"][0], rotate(pixels, label), rtol=0, atol=1e-3)
    assert labels == {0, 1, 2, 3}
