from collections import Counter

import pytest
import torch
from torchvision.transforms import functional as TF

from d2ssl.data.mappers.rotation import RotationMapper, rotate


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_quarter_turn_is_counter_clockwise_and_exact():
    size = 5
    image = torch.arange(2 * size * size, dtype=torch.float32).view(2, size, size)
    turned = rotate(image, 1)
    # Counter-clockwise: the top-right corner becomes the top-left one; R[y, x] = I[x, S-1-y].
    for y in range(size):
        for x in range(size):
            assert torch.equal(turned[:, y, x], image[:, x, size - 1 - y])
    # Same direction as torchvision's rotate (VISSL's ImgRotatePil), which is exact at 90 degrees.
    assert torch.equal(TF.rotate(image, 90.0), turned)
    assert torch.equal(rotate(rotate(image, 1), 3), image)
    assert torch.equal(rotate(image, 2), image.flip(1).flip(2))


def test_all_four_rotations_of_one_crop(fashion_mnist_small):
    mapper = RotationMapper(crop_size=64, crop_scale=(0.5, 1.0))
    out = mapper(dict(fashion_mnist_small[3]), seeded(0))
    assert out["images"].shape == (4, 3, 64, 64)
    assert out["rotation_labels"].tolist() == [0, 1, 2, 3]
    assert out["image_id"] == 3
    upright = out["images"][0]
    for k in range(4):
        assert torch.equal(out["images"][k], torch.rot90(upright, k, dims=(1, 2)))
    # Not a degenerate crop: the four views differ.
    assert all(not torch.equal(out["images"][0], out["images"][k]) for k in (1, 2, 3))


def test_one_rotation_per_image_rotates_the_same_crop(fashion_mnist_small):
    d = fashion_mnist_small[7]
    all_four = RotationMapper(crop_size=48, rotations_per_image=4)
    one = RotationMapper(crop_size=48, rotations_per_image=1)
    labels = []
    for seed in range(200):
        out = one(dict(d), seeded(seed))
        assert out["images"].shape == (1, 3, 48, 48) and out["rotation_labels"].shape == (1,)
        label = int(out["rotation_labels"][0])
        labels.append(label)
        if seed < 10:
            # The crop is drawn before the rotation, so the 4-rotation mapper sees the same crop.
            assert torch.equal(out["images"][0], all_four(dict(d), seeded(seed))["images"][label])
    counts = Counter(labels)
    assert set(counts) == {0, 1, 2, 3} and min(counts.values()) > 30  # uniform: 50 each expected


def test_partial_rotation_sets_are_distinct(fashion_mnist_small):
    out = RotationMapper(crop_size=32, rotations_per_image=2)(dict(fashion_mnist_small[0]), seeded(1))
    assert len(set(out["rotation_labels"].tolist())) == 2
    first = out["images"][0]
    k = (int(out["rotation_labels"][1]) - int(out["rotation_labels"][0])) % 4
    assert torch.equal(out["images"][1], rotate(first, k))


def test_views_are_a_function_of_the_generator(fashion_mnist_small):
    mapper = RotationMapper(crop_size=32)
    d = fashion_mnist_small[11]
    assert torch.equal(mapper(dict(d), seeded(5))["images"], mapper(dict(d), seeded(5))["images"])
    assert not torch.equal(mapper(dict(d), seeded(5))["images"], mapper(dict(d), seeded(6))["images"])


def test_rejects_more_rotations_than_exist():
    with pytest.raises(ValueError, match="rotations_per_image must be between 1 and 4"):
        RotationMapper(rotations_per_image=5)
