import numpy as np
import pytest
import torch
from torchvision.transforms import functional as TF

from d2ssl.data.mappers.montage import (
    JigsawClusteringMapper,
    assemble_montages,
    overlapping_quadrant_boxes,
)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_quadrant_boxes_follow_jigclu_arithmetic():
    # Width 100, height 60, cross 0.3: the split is at 50 / 30, extended by 0.3 * 100 = 30 and
    # 0.3 * 60 = 18 across it, so each crop is 80 x 48 and neighbours overlap by 60 x 36.
    np.testing.assert_allclose(
        overlapping_quadrant_boxes(100, 60, 0.3),
        [(0, 0, 80, 48), (20, 0, 100, 48), (0, 12, 80, 60), (20, 12, 100, 60)],
    )
    # Odd sides: the split is floor(29 / 2) = 14 and 0.3 * 29 = 8.7 is kept fractional.
    np.testing.assert_allclose(overlapping_quadrant_boxes(29, 29, 0.3)[3], (5.3, 5.3, 29, 29))
    assert overlapping_quadrant_boxes(64, 64, 0.0) == [(0, 0, 32, 32), (32, 0, 64, 32), (0, 32, 32, 64),
                                                        (32, 32, 64, 64)]


def test_patches_are_the_overlapping_quadrants_in_row_major_order():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(100, 100, 3), dtype=np.uint8)
    # Full-area crops of a square region are the region itself, resized to its own size: identity.
    mapper = JigsawClusteringMapper(
        patch_size=80, crop_scale=(1.0, 1.0), cross_ratio=0.3, augmentation=lambda im: im,
        pixel_mean=(0.0, 0.0, 0.0), pixel_std=(1.0, 1.0, 1.0),
    )
    out = mapper({"image": image, "image_id": 9}, seeded(0))
    assert out["patches"].shape == (4, 3, 80, 80) and out["image_id"] == 9
    full = TF.to_tensor(image)
    top_left = {0: (0, 0), 1: (0, 20), 2: (20, 0), 3: (20, 20)}  # (row, column): TL, TR, BL, BR
    for k, (y, x) in top_left.items():
        assert torch.equal(out["patches"][k], full[:, y : y + 80, x : x + 80])


def test_each_patch_gets_its_own_augmentation(fashion_mnist_small):
    mapper = JigsawClusteringMapper(patch_size=32)
    d = fashion_mnist_small[5]
    out = mapper(dict(d), seeded(3))
    assert out["patches"].shape == (4, 3, 32, 32)
    assert torch.equal(out["patches"], mapper(dict(d), seeded(3))["patches"])
    assert not torch.equal(out["patches"], mapper(dict(d), seeded(4))["patches"])
    # On 0.2-1 area crops with colour jitter, no two patches of the image coincide.
    assert len({tuple(p.flatten()[:64].tolist()) for p in out["patches"]}) == 4


def test_montage_quadrants_are_the_permuted_source_patches():
    n, size = 5, 3
    patches = torch.randn(n, 4, 3, size, size, generator=seeded(0))
    permutation = torch.randperm(4 * n, generator=seeded(1))
    montages, cluster_labels, location_labels = assemble_montages(patches, permutation)
    assert montages.shape == (n, 3, 2 * size, 2 * size)
    seen = set()
    for m in range(n):
        for slot in range(4):
            row, col = divmod(slot, 2)  # slots are row-major: TL, TR, BL, BR
            quadrant = montages[m, :, row * size : (row + 1) * size, col * size : (col + 1) * size]
            # Flat patch index k * N + i is patch k of image i (JigClu's position-major order).
            source = int(permutation[slot * n + m])
            image, position = source % n, source // n
            assert torch.equal(quadrant, patches[image, position])
            # The labels name the patch that is really there (found by content, not by index).
            matches = [(i, k) for i in range(n) for k in range(4) if torch.equal(patches[i, k], quadrant)]
            assert matches == [(int(cluster_labels[slot * n + m]), int(location_labels[slot * n + m]))]
            seen.add(matches[0])
    assert len(seen) == 4 * n  # every patch of every image is used exactly once


def test_identity_permutation_rebuilds_each_image_from_its_own_patches():
    n, size = 3, 4
    patches = torch.randn(n, 4, 3, size, size, generator=seeded(2))
    montages, cluster_labels, location_labels = assemble_montages(patches, torch.arange(4 * n))
    for i in range(n):
        assert torch.equal(montages[i, :, :size, size:], patches[i, 1])
        assert torch.equal(montages[i, :, size:, :size], patches[i, 2])
    assert cluster_labels.tolist() == list(range(n)) * 4
    assert location_labels.tolist() == [k for k in range(4) for _ in range(n)]


def test_montage_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="permutation of 4N indices"):
        assemble_montages(torch.zeros(2, 4, 3, 2, 2), torch.arange(7))
