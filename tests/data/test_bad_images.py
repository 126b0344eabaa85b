"""Bad image files: odd modes are converted, unreadable and too-small images are skipped and counted,
and a mostly-broken data set stops with an error naming examples."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from d2ssl.data.build import SeededMapDataset, build_ssl_train_loader
from d2ssl.data.datasets import get_dataset_dicts, register_image_folder
from d2ssl.data.image_io import BadImageError, read_rgb_image
from d2ssl.data.mappers import JigsawMapper
from d2ssl.data.transforms import generate_permutations


def _photo(size: int = 48) -> np.ndarray:
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).resize((size, size)))


# Named so that, sorted among the good files, each is followed by a good one: the loader's
# replacement for a broken image is then always the next file, and each broken image fails once.
BROKEN = ("b_truncated.jpg", "f_empty.png", "n_noise.jpg", "q_one_pixel.png")


def _write_convertible(root: Path, prefix: str = "") -> dict[str, Path]:
    photo = _photo()
    gray16 = (np.arange(40 * 50, dtype=np.uint32).reshape(40, 50) * 32).astype(np.uint16)
    gray16[0, 0] = 65535
    rgba = np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)])
    rgba[:4, :4, 3] = 0  # transparent corner
    files = {
        "rgb.jpg": Image.fromarray(photo),
        "gray.png": Image.fromarray(photo[:, :, 0]),
        "gray16.png": Image.fromarray(gray16),  # mode I;16
        "rgba.png": Image.fromarray(rgba),
        "palette.png": Image.fromarray(photo).convert("P"),
        "cmyk.jpg": Image.fromarray(photo).convert("CMYK"),
        "small.png": Image.fromarray(photo[:3, :3]),  # bigger than a 2x2 grid: upscaled
    }
    for name, image in files.items():
        image.save(root / f"{prefix}{name}")
    return {name: root / f"{prefix}{name}" for name in files}


def _write_broken(root: Path) -> dict[str, Path]:
    truncated, empty, noise, one_pixel = (root / name for name in BROKEN)
    Image.fromarray(_photo()).save(truncated, quality=95)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    empty.write_bytes(b"")
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    Image.fromarray(_photo()[:1, :1]).save(one_pixel)  # smaller than the grid
    return {name: root / name for name in BROKEN}


def _jigsaw_mapper() -> JigsawMapper:
    return JigsawMapper(generate_permutations(4, 24, seed=0), grid=2, resize_size=32, crop_size=32,
                        tile_size=14, grayscale_prob=0.0)


def test_every_mode_becomes_8bit_rgb_keeping_intensities(tmp_path):
    paths = _write_convertible(tmp_path)
    images = {name: read_rgb_image({"file_name": str(p)}) for name, p in paths.items()}
    assert all(im.mode == "RGB" for im in images.values())
    assert images["gray16.png"].size == (50, 40) and images["small.png"].size == (3, 3)
    gray16 = np.asarray(images["gray16.png"])
    # 16 bits scale by 1/257 (65535 -> 255), not clipped to white as convert("RGB") would.
    written = np.asarray(Image.open(paths["gray16.png"]), dtype=np.float64)
    assert written.max() == 65535
    np.testing.assert_array_equal(gray16[:, :, 0], np.round(written / 257))
    assert (gray16[:, :, 0] == gray16[:, :, 1]).all()
    gray = np.asarray(images["gray.png"])
    np.testing.assert_array_equal(gray[:, :, 0], _photo()[:, :, 0])
    assert (gray[:, :, 0] == gray[:, :, 2]).all()
    rgba = np.asarray(images["rgba.png"])
    assert (rgba[:4, :4] == 0).all()  # transparent pixels on black
    np.testing.assert_array_equal(rgba[4:], _photo()[4:])


def test_in_memory_arrays_of_other_types_are_converted():
    base = _photo(8)
    as_u16 = base.astype(np.uint16) * 257
    as_float = base.astype(np.float32) / 255.0
    for arr in (as_u16, as_float, base[:, :, :1], base.astype(np.int64)):
        np.testing.assert_array_equal(np.asarray(read_rgb_image({"image": arr, "image_id": 0}))[:, :, 0],
                                      base[:, :, 0])
    with pytest.raises(BadImageError, match=r"image_id=7 is an array of shape \(8, 8, 2\)"):
        read_rgb_image({"image": base[:, :, :2], "image_id": 7})


@pytest.mark.parametrize("name", [*BROKEN[:3], "missing.png"])
def test_unreadable_file_raises_bad_image_error_naming_it(tmp_path, name):
    _write_broken(tmp_path)
    with pytest.raises(BadImageError, match=rf"cannot read image .*{name}"):
        read_rgb_image({"file_name": str(tmp_path / name)})


def test_image_smaller_than_the_grid_is_rejected_and_small_ones_upscaled(tmp_path):
    paths = {**_write_convertible(tmp_path), **_write_broken(tmp_path)}
    mapper = _jigsaw_mapper()
    with pytest.raises(BadImageError, match=r"one_pixel\.png.* is 1x1 px, smaller than the minimum of 2 px"):
        mapper({"file_name": str(paths["q_one_pixel.png"]), "image_id": 0}, torch.Generator().manual_seed(0))
    out = mapper({"file_name": str(paths["small.png"]), "image_id": 1}, torch.Generator().manual_seed(0))
    assert out["tiles"].shape == (4, 3, 14, 14) and torch.isfinite(out["tiles"]).all()
    # 3x3 px upscaled to 32: the four tiles do not all show the same pixels.
    assert len({t.sum().item() for t in out["tiles"]}) > 1


def _folder_dataset(tmp_path: Path, name: str, num_good_copies: int) -> list[dict]:
    root = tmp_path / name
    root.mkdir()
    for i in range(num_good_copies):
        _write_convertible(root, prefix="" if i == 0 else f"z{i}_")
    _write_broken(root)
    register_image_folder(f"test_bad_images_{name}", str(root))
    return get_dataset_dicts(f"test_bad_images_{name}")


def test_loader_skips_broken_images_with_a_logged_count(tmp_path, caplog):
    dataset = _folder_dataset(tmp_path, "mostly_good", num_good_copies=2)
    broken = {d["image_id"] for d in dataset if Path(d["file_name"]).name in BROKEN}
    assert len(dataset) == 18 and len(broken) == 4
    loader = build_ssl_train_loader(dataset, _jigsaw_mapper(), total_batch_size=9, max_bad_fraction=0.3)
    with caplog.at_level(logging.WARNING, logger="d2ssl.data.build"):
        batches = [b for _, b in zip(range(4), loader)]  # two epochs
    assert [len(b) for b in batches] == [9, 9, 9, 9]
    seen = [d["image_id"] for b in batches for d in b]
    assert not set(seen) & broken
    # A broken image's slot goes to the next file: those four good files are seen twice per epoch.
    assert sorted(np.bincount(seen, minlength=18)[sorted(set(range(18)) - broken)]) == [2] * 10 + [4] * 4
    skips = [r.getMessage() for r in caplog.records if "skipped image" in r.getMessage()]
    assert len(skips) == 8  # each broken image once per epoch, with a running count
    assert "(8 of " in skips[-1]
    assert (loader.dataset.num_bad, loader.dataset.num_reads) == (8, 36 + 8)
    assert {name for name in BROKEN if any(name in s for s in skips)} == set(BROKEN)


def test_mostly_broken_data_set_stops_with_examples(tmp_path):
    dataset = _folder_dataset(tmp_path, "mostly_broken", num_good_copies=1)
    broken = [d for d in dataset if Path(d["file_name"]).name in BROKEN]
    mapped = SeededMapDataset(broken + dataset[1:2], _jigsaw_mapper(), max_bad_fraction=0.2)  # 4 of 5 broken
    message = r"(?s)of \d+ images read failed, more than max_bad_fraction=0\.2.*Examples:.*b_trunc.*f_empty"
    with pytest.raises(BadImageError, match=message):
        for i in range(len(mapped)):
            mapped[i, i]


def test_data_set_with_no_usable_image_names_examples(tmp_path):
    dataset = _folder_dataset(tmp_path, "all_broken", num_good_copies=0)
    mapped = SeededMapDataset(dataset, _jigsaw_mapper(), max_bad_fraction=1.0)
    with pytest.raises(BadImageError, match=r"(?s)none of the 4 images.*q_one_pixel\.png"):
        mapped[0, 0]
