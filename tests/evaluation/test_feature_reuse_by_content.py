"""Feature caches are reused by content: the weights in the trunk, the data, the view, layers and
pooling; never because a checkpoint path, a data set length or a seed-less name matches."""

from __future__ import annotations

import copy
import errno
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from tolerances import assert_features_close

from d2ssl.data.mappers.classification import ClassificationMapper
from d2ssl.engine.train_loop import setup_config
from d2ssl.evaluation import features as features_module
from d2ssl.evaluation.features import (
    dataset_digest,
    extract_features,
    extract_from_config,
    load_features,
    preallocate_npy,
    view_description,
    weights_digest,
)
from d2ssl.modeling.backbone import build_resnet_trunk
from d2ssl.utils.errors import describe_error

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY_EXTRACTION = CONFIGS / "eval" / "tiny" / "extract_features.py"
MAPPER = ClassificationMapper(train=False, resize_size=32, crop_size=32)


@pytest.fixture(scope="module")
def images(fashion_mnist_train) -> list[dict]:
    return [dict(d, image_id=i) for i, d in enumerate(fashion_mnist_train[2000:2016])]


@pytest.fixture
def trunk():
    torch.manual_seed(0)
    return build_resnet_trunk(depth=18, base_channels=8, out_features=("res5",)).eval()


@pytest.fixture
def extractions(monkeypatch) -> list[int]:
    """Grows by one entry per extraction actually run (a pass of the trunk over the data set)."""
    calls: list[int] = []
    original = features_module.compute_features
    monkeypatch.setattr(features_module, "compute_features",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


def _assert_features_close(got: np.ndarray, expected: np.ndarray, trunk) -> None:
    # Batched extraction vs one image at a time: another sum order, within the float32 bound of the
    # trunk's path (tests/tolerances.py); res5 of a 40 px view is at most 2 x 2 cells averaged.
    assert_features_close(torch.from_numpy(np.array(got)), torch.from_numpy(expected), trunk, pooled_cells=4,
                          name="res5 features")


def _expected(trunk, images, mapper=MAPPER) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([torch.flatten(torch.nn.functional.adaptive_avg_pool2d(
            trunk(mapper(d)["image"][None])["res5"], 1), 1) for d in images]).numpy()


# ------------------------------------------------------------------ the user's four reports, end to end


def _config(tmp_path: Path, *overrides: str):
    return setup_config(str(TINY_EXTRACTION), [
        f"train.output_dir={tmp_path}", f"extraction.output_dir={tmp_path / 'features'}",
        "extraction.splits=[train]", "dataloader.train.dataset.limit=6", *overrides,
    ])


def _save_model(cfg, path: Path, seed: int) -> None:
    from detectron2.config import instantiate

    torch.manual_seed(seed)
    trunk = instantiate(cfg.model)
    with torch.no_grad():
        for p in trunk.parameters():
            p.add_(0.1 * torch.randn_like(p))
    torch.save({"model": trunk.state_dict()}, path)


def test_checkpoint_overwritten_at_the_same_path_is_extracted_again(tmp_path, extractions):
    # evaluate model_final.pth, continue pretraining (--resume writes new weights there), evaluate again
    checkpoint = tmp_path / "model_final.pth"
    cfg = _config(tmp_path, f"train.init_checkpoint={checkpoint}")
    _save_model(cfg, checkpoint, seed=1)
    before = np.array(extract_from_config(cfg)["train"].features["res5"])
    _save_model(cfg, checkpoint, seed=2)
    after = np.array(extract_from_config(_config(tmp_path, f"train.init_checkpoint={checkpoint}"))["train"]
                     .features["res5"])
    assert extractions == [1, 1]
    assert np.abs(after - before).max() > 1e-3  # the new weights' features, not the old ones


def test_other_data_set_of_the_same_length_is_extracted_again(tmp_path, extractions):
    first = extract_from_config(_config(tmp_path))["train"]
    fashion_labels = np.array(first.labels)
    second = extract_from_config(_config(tmp_path, "dataloader.train.dataset.names=digits_train"))["train"]
    assert extractions == [1, 1]
    from d2ssl.data.datasets import get_dataset_dicts

    digits = get_dataset_dicts("digits_train")[:6]
    np.testing.assert_array_equal(second.labels, [d["label"] for d in digits])
    assert not np.array_equal(second.labels, fashion_labels)


def test_random_trunk_of_another_seed_is_extracted_again(tmp_path, extractions):
    seed0 = np.array(extract_from_config(_config(tmp_path, "train.seed=0"))["train"].features["res5"])
    seed1 = np.array(extract_from_config(_config(tmp_path, "train.seed=1"))["train"].features["res5"])
    assert extractions == [1, 1]
    assert np.abs(seed1 - seed0).max() > 1e-3
    extract_from_config(_config(tmp_path, "train.seed=1"))  # the same random trunk again: reused
    assert extractions == [1, 1]


def test_params_file_and_init_checkpoint_both_set_is_an_error_naming_both(tmp_path, extractions):
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    message = rf"train.weights_init.PARAMS_FILE='{a}' and train.init_checkpoint='{b}' are both set"
    with pytest.raises(ValueError, match=message):
        _config(tmp_path, f"train.weights_init.PARAMS_FILE={a}", f"train.init_checkpoint={b}")
    cfg = _config(tmp_path, f"train.weights_init.PARAMS_FILE={a}")
    cfg.train.init_checkpoint = str(b)  # set after the config was checked: the extraction refuses too
    with pytest.raises(ValueError, match=message):
        extract_from_config(cfg)
    assert extractions == [] and not (tmp_path / "features").exists()


# ------------------------------------------------------------------ each part of the key


def test_same_weights_data_and_view_are_reused_whatever_the_checkpoint_path(tmp_path, images, trunk,
                                                                             extractions):
    first = extract_features(trunk, images, MAPPER, str(tmp_path), checkpoint="a.pth")
    mtime = os.path.getmtime(tmp_path / "train_res5.npy")
    # A copy of the same weights, named by another path (e.g. model_final.pth copied elsewhere).
    again = extract_features(copy.deepcopy(trunk), [dict(d) for d in images], MAPPER, str(tmp_path),
                             checkpoint="elsewhere/a_copy.pth")
    assert extractions == [1]
    assert os.path.getmtime(tmp_path / "train_res5.npy") == mtime
    np.testing.assert_array_equal(again.features["res5"], first.features["res5"])
    meta = json.loads((tmp_path / "train_meta.json").read_text())
    assert meta["checkpoint"] == "a.pth"  # information only
    assert meta["weights_digest"] == weights_digest(trunk)
    assert meta["dataset_digest"] == dataset_digest(images)


def test_weights_changed_in_the_trunk_are_extracted_again_and_the_log_says_why(tmp_path, images, trunk,
                                                                                extractions, caplog):
    extract_features(trunk, images, MAPPER, str(tmp_path), checkpoint="model_final.pth")
    old = weights_digest(trunk)
    with torch.no_grad():  # only a BatchNorm statistic moves: it changes eval-mode features too
        trunk.stem.conv1.norm.running_mean.add_(0.5)
    new = weights_digest(trunk)
    caplog.clear()  # earlier tests may have left the logger at INFO: only this call's records
    with caplog.at_level(logging.INFO, logger=features_module.logger.name):
        result = extract_features(trunk, images, MAPPER, str(tmp_path), checkpoint="model_final.pth")
    assert extractions == [1, 1]
    _assert_features_close(result.features["res5"], _expected(trunk, images), trunk)
    lines = [r.getMessage() for r in caplog.records if "computing" in r.getMessage()]
    assert lines == [f"train features in {tmp_path}: weights digest {old[:12]}.. -> {new[:12]}..; computing"]


def test_other_images_of_the_same_length_and_labels_are_extracted_again(tmp_path, images, trunk, extractions):
    extract_features(trunk, images[:8], MAPPER, str(tmp_path))
    result = extract_features(trunk, images[8:16], MAPPER, str(tmp_path))
    assert extractions == [1, 1]
    np.testing.assert_array_equal(result.labels, [d["label"] for d in images[8:16]])
    _assert_features_close(result.features["res5"], _expected(trunk, images[8:16]), trunk)


@pytest.mark.parametrize("other_view", [
    ClassificationMapper(train=False, resize_size=40, crop_size=40),  # another image size
    ClassificationMapper(train=False, resize_size=32, crop_size=32, pixel_mean=(0.5, 0.5, 0.5)),
], ids=["size", "normalisation"])
def test_other_view_is_extracted_again(tmp_path, images, trunk, extractions, other_view):
    extract_features(trunk, images[:4], MAPPER, str(tmp_path))
    result = extract_features(trunk, images[:4], other_view, str(tmp_path))
    assert extractions == [1, 1]
    _assert_features_close(result.features["res5"], _expected(trunk, images[:4], other_view), trunk)


def test_other_pooling_is_extracted_again(tmp_path, images, trunk, extractions):
    extract_features(trunk, images[:4], MAPPER, str(tmp_path), layers=("res4",))
    result = extract_features(trunk, images[:4], MAPPER, str(tmp_path), layers=("res4",),
                              pooling={"res4": [[2, 2], 2, 0]})
    assert extractions == [1, 1]
    assert result.features["res4"].shape == (4, 32 * 1 * 1)  # 32 px -> res4 2 x 2 x 32, pooled 2x2/2


def test_extraction_of_an_older_version_is_extracted_again(tmp_path, images, trunk, extractions):
    extract_features(trunk, images[:4], MAPPER, str(tmp_path))
    meta_path = tmp_path / "train_meta.json"
    meta = json.loads(meta_path.read_text())
    meta["extraction_version"] = features_module.EXTRACTION_VERSION - 1
    meta_path.write_text(json.dumps(meta))
    extract_features(trunk, images[:4], MAPPER, str(tmp_path))
    assert extractions == [1, 1]
    assert json.loads(meta_path.read_text())["extraction_version"] == features_module.EXTRACTION_VERSION


def test_digests_see_every_field_and_the_order():
    a = [{"file_name": "x/1.png", "label": 0, "image_id": 0},
         {"file_name": "x/2.png", "label": 1, "image_id": 1}]
    assert dataset_digest(a) == dataset_digest([dict(d) for d in a])
    assert dataset_digest(a) != dataset_digest(a[::-1])
    assert dataset_digest(a) != dataset_digest([a[0], dict(a[1], label=2)])
    assert dataset_digest(a) != dataset_digest([a[0], dict(a[1], file_name="y/2.png")])
    pixels = np.zeros((3, 3), np.uint8)
    b = [{"image": pixels, "label": 0}]
    changed = pixels.copy()
    changed[1, 1] = 1
    assert dataset_digest(b) != dataset_digest([{"image": changed, "label": 0}])
    assert dataset_digest(b) != dataset_digest([{"image": pixels.astype(np.int16), "label": 0}])
    # The view: every parameter of the mapper, the same text for the same parameters.
    assert view_description(MAPPER) == view_description(ClassificationMapper(train=False, resize_size=32,
                                                                             crop_size=32))
    assert "0.485" in view_description(MAPPER) and "\n" not in view_description(MAPPER)
    train_view = view_description(ClassificationMapper(train=True, crop_size=32))
    assert train_view == view_description(ClassificationMapper(train=True, crop_size=32))
    other_crops = ClassificationMapper(train=True, crop_size=32, crop_scale=(0.2, 1.0))
    assert train_view != view_description(other_crops)
    # A mapper written as a closure: named by its code and the values it closes over.
    def scaled(factor):
        return lambda d: {"image": MAPPER(d)["image"] * factor}

    assert view_description(scaled(2.0)) == view_description(scaled(2.0))
    assert view_description(scaled(2.0)) != view_description(scaled(3.0))


# ------------------------------------------------------------------ a full disk: an error naming the file


def test_preallocated_npy_has_the_shape_and_zeros_with_and_without_fallocate(tmp_path, monkeypatch):
    preallocate_npy(str(tmp_path / "a.npy"), (5, 3))

    def unsupported(*args):
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    preallocate_npy(str(tmp_path / "b.npy"), (5, 3))  # written as zeros instead
    for name in ("a.npy", "b.npy"):
        array = np.lib.format.open_memmap(str(tmp_path / name), "r+")
        assert array.shape == (5, 3) and array.dtype == np.float32 and not array.any()
        array[2] = 7.0
        array.flush()
        del array
        assert np.load(tmp_path / name)[2].tolist() == [7.0] * 3
        # Blocks are allocated, not a sparse file whose pages could fail on write-back.
        assert os.stat(tmp_path / name).st_blocks * 512 >= 5 * 3 * 4


def _disk_full(f, offset, nbytes):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_raises_no_space_naming_the_feature_file(tmp_path, images, trunk, monkeypatch):
    extract_features(trunk, images[:4], MAPPER, str(tmp_path), layers=("res4",))  # an older extraction
    monkeypatch.setattr(features_module, "_reserve_space", _disk_full)
    path = tmp_path / "train_res5.npy"
    with pytest.raises(OSError) as raised:
        extract_features(trunk, images[:4], MAPPER, str(tmp_path), layers=("res5",))
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(path)
    assert describe_error(raised.value) == f"No space left on device: {path}"
    assert not path.exists()  # the partial file is removed
    assert not (tmp_path / "train_meta.json").exists()  # the older extraction is no longer finished
    with pytest.raises(FileNotFoundError):
        load_features(str(tmp_path), "train", ["res4"])
