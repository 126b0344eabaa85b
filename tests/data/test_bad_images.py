"""Bad image files: odd modes are converted, unreadable and too-small images are skipped and counted,
and a mostly-broken data set stops with an error naming examples."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from d2ssl.data.build import ResumableTrainingSampler, SeededMapDataset, build_ssl_train_loader
from d2ssl.data.datasets import get_dataset_dicts, load_image_folder, register_image_folder
from d2ssl.data.image_io import BadImageError, read_rgb_image
from d2ssl.data.mappers import JigsawMapper
from d2ssl.data.permutations import generate_permutations
from d2ssl.engine.train_loop import do_train


def _photo(size: int = 48) -> np.ndarray:
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).resize((size, size)))


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


def test_loader_replaces_broken_images_and_decodes_each_only_once(tmp_path, caplog):
    dataset = _folder_dataset(tmp_path, "mostly_good", num_good_copies=2)
    broken = {d["image_id"] for d in dataset if Path(d["file_name"]).name in BROKEN}
    assert len(dataset) == 18 and len(broken) == 4
    loader = build_ssl_train_loader(dataset, _jigsaw_mapper(), total_batch_size=9, max_bad_fraction=0.3)
    with caplog.at_level(logging.WARNING, logger="d2ssl.data.build"):
        batches = [b for _, b in zip(range(4), loader)]  # two epochs
    assert [len(b) for b in batches] == [9, 9, 9, 9]
    seen = [d["image_id"] for b in batches for d in b]
    assert not set(seen) & broken
    # Every good image is seen once per epoch; the 4 broken slots of each epoch go to random others.
    counts = np.bincount(seen, minlength=18)
    assert all(counts[i] >= 2 for i in set(range(18)) - broken) and sum(counts) == 36
    skips = [r.getMessage() for r in caplog.records if "skipped image" in r.getMessage()]
    assert len(skips) == 4  # a known-bad file is not decoded (nor logged) again in the second epoch
    assert re.search(r"\(4 of the \d+ distinct images read so far failed\)", skips[-1])
    assert (loader.dataset.num_bad, loader.dataset.num_read) == (4, 18)
    assert {name for name in BROKEN if any(name in s for s in skips)} == set(BROKEN)
    # The replacements depend on the stream position only: a fresh loader started at iteration 2
    # (a resumed run that has not met the broken files yet) continues with the same images and views.
    resumed = build_ssl_train_loader(dataset, _jigsaw_mapper(), total_batch_size=9, max_bad_fraction=0.3)
    resumed.batch_sampler.sampler.set_start_iter(2)
    for expected, got in zip(batches[2:], resumed):
        assert [d["image_id"] for d in got] == [d["image_id"] for d in expected]
        assert all(torch.equal(a["tiles"], b["tiles"]) for a, b in zip(got, expected))


def test_mostly_broken_data_set_stops_with_examples(tmp_path):
    dataset = _folder_dataset(tmp_path, "mostly_broken", num_good_copies=1)
    broken = [d for d in dataset if Path(d["file_name"]).name in BROKEN]
    mapped = SeededMapDataset(broken + dataset[1:2], _jigsaw_mapper(), max_bad_fraction=0.2)  # 4 of 5 broken
    # 2 bad files are more than 0.2 x 5 images: certain, whatever the order.
    message = (r"(?s)2 of the [2-5] distinct images read failed: more than max_bad_fraction=0\.2 of the data "
               r"set's 5 images.*Examples:.*b_truncated")
    with pytest.raises(BadImageError, match=message):
        for i in range(len(mapped)):
            mapped[i, i]


def _arrays(num_bad: int, num_good: int) -> list[dict]:
    """In-memory images, the first ``num_bad`` of an unusable shape (2 channels)."""
    photo = _photo(32)
    return [{"image": photo[:, :, :2] if i < num_bad else photo, "image_id": i}
            for i in range(num_bad + num_good)]


def _in_sampler_order(mapped: SeededMapDataset, count: int) -> None:
    sampler = iter(ResumableTrainingSampler(len(mapped), total_batch_size=1, seed=0))
    for _ in range(count):
        mapped[next(sampler)]


def test_bad_fraction_below_the_bound_never_stops_and_a_broken_set_stops_early():
    # 8% bad, adjacent: read in the sampler's order the run goes through two epochs.
    mapped = SeededMapDataset(_arrays(8, 92), _jigsaw_mapper(), min_reads_before_check=5)
    _in_sampler_order(mapped, 200)
    assert (mapped.num_bad, mapped.num_read) == (8, 100)
    # 11 bad of 100: certain once the 11th is known.
    mapped = SeededMapDataset(_arrays(11, 89), _jigsaw_mapper(), max_bad_fraction=0.1)
    with pytest.raises(BadImageError, match=r"11 of the \d+ distinct images read failed: more than "
                                            r"max_bad_fraction=0\.1 of the data set's 100 images"):
        _in_sampler_order(mapped, 100)
    # Half of 1,000 bad: the reads show it long before 101 bad files are known.
    mapped = SeededMapDataset(_arrays(500, 500), _jigsaw_mapper(), max_bad_fraction=0.1)
    with pytest.raises(BadImageError, match=r"read failed: so many that, with 99\.9% confidence"):
        _in_sampler_order(mapped, 1000)
    assert mapped.num_read >= 50 and mapped.num_bad < 101


def test_data_set_with_no_usable_image_names_examples(tmp_path):
    dataset = _folder_dataset(tmp_path, "all_broken", num_good_copies=0)
    mapped = SeededMapDataset(dataset, _jigsaw_mapper(), max_bad_fraction=1.0)
    with pytest.raises(BadImageError, match=r"(?s)none of the 4 images.*q_one_pixel\.png"):
        mapped[0, 0]


def _fashion_folder(root: Path, images: list[dict], num_bad: int) -> list[str]:
    """Writes ``images`` as PNG files in class folders; the first ``num_bad`` files (in the order the
    loader lists them) of the largest class are made unreadable. Returns the unreadable files."""
    for i, d in enumerate(images):
        folder = root / f"class{d['label']}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(d["image"]).save(folder / f"{i:04d}.png")
    largest = max(root.iterdir(), key=lambda p: len(list(p.iterdir())))
    bad = sorted(largest.iterdir())[:num_bad]
    for path in bad:
        path.write_bytes(path.read_bytes()[:20])  # PNG signature and a cut-off header
    return [str(p) for p in bad]


def test_seventeen_adjacent_bad_files_train_to_the_end_and_resume_exactly(
    tmp_path, fashion_mnist_train, tiny_config, caplog
):
    root = tmp_path / "images"
    bad_files = _fashion_folder(root, fashion_mnist_train[:217], num_bad=17)
    # The folder is given as on the command line (the tiny config reads Fashion-MNIST from the catalog).
    overrides = [f"dataloader.train.dataset=folder:{root}", "train.max_iter=14",
                 "train.checkpointer.period=7"]
    straight = tiny_config("rotnet", *overrides)
    with caplog.at_level(logging.WARNING, logger="d2ssl.data.build"):
        do_train(straight)  # 14 x 16 samples: every image of the first epoch is read
    skips = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped image")]
    dataset = load_image_folder(str(root))
    skipped = [dataset[int(re.match(r"skipped image (\d+)", m).group(1))]["file_name"] for m in skips]
    assert sorted(skipped) == sorted(bad_files)  # each of the 17 decoded (and counted) once
    assert re.search(r"\(17 of the \d+ distinct images read so far failed\)", skips[-1])
    straight_out = Path(straight.train.output_dir)
    # Resume from the checkpoint after 7 iterations, in a fresh process state (no known bad files).
    resumed_out = tmp_path / "resumed"
    resumed_out.mkdir()
    for name in ("model_0000006.pth", "model_0000006.pth.sha256"):
        shutil.copy(straight_out / name, resumed_out / name)
    (resumed_out / "last_checkpoint").write_text("model_0000006.pth")
    resumed = tiny_config("rotnet", *overrides, f"train.output_dir={resumed_out}")
    do_train(resumed, resume=True)
    a = torch.load(straight_out / "model_final.pth", weights_only=True)["model"]
    b = torch.load(resumed_out / "model_final.pth", weights_only=True)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_jpeg_photos_read_as_decoded_and_exif_orientation_is_applied(tmp_path):
    import skimage.data

    photo = Image.fromarray(skimage.data.chelsea()).resize((60, 40))
    plain, rotated, grey = tmp_path / "plain.jpg", tmp_path / "rotated.jpg", tmp_path / "grey.jpg"
    photo.save(plain, quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was turned, show rotated 90 degrees clockwise
    photo.save(rotated, quality=90, exif=exif)
    photo.convert("L").save(grey, quality=90)

    def pixels(image):
        return np.asarray(image)

    image = read_rgb_image({"file_name": str(plain)})
    assert image.mode == "RGB" and np.array_equal(pixels(image), pixels(Image.open(plain).convert("RGB")))
    upright = read_rgb_image({"file_name": str(rotated)})
    assert upright.size == (40, 60)
    assert np.array_equal(pixels(upright), pixels(Image.open(rotated).transpose(Image.Transpose.ROTATE_270)))
    grey_rgb = read_rgb_image({"file_name": str(grey)})
    assert grey_rgb.mode == "RGB" and np.array_equal(pixels(grey_rgb)[..., 0], pixels(Image.open(grey)))
