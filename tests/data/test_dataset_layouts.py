"""Tiny ImageNet and Places365 layouts, built from real Fashion-MNIST photos written as JPEG/PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog
from PIL import Image

from d2ssl.data.datasets import (
    DatasetError,
    get_dataset_dicts,
    load_places365,
    load_tiny_imagenet,
    register_places365,
    register_tiny_imagenet,
)
from d2ssl.data.image_io import read_rgb_image

WNIDS = ["n01443537", "n01629819", "n01641577"]  # deliberately not the sorted order of their classes


def _save(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


@pytest.fixture(scope="module")
def photos(fashion_mnist_train):
    # Three photos of each of the classes 0, 1, 2.
    return {c: [d["image"] for d in fashion_mnist_train[:200] if d["label"] == c][:3] for c in range(3)}


def _tiny_imagenet(root: Path, photos) -> Path:
    (root / "wnids.txt").parent.mkdir(parents=True, exist_ok=True)
    order = [2, 0, 1]  # wnids.txt line i holds the photos of Fashion-MNIST class order[i]
    (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    lines = []
    for label, cls in enumerate(order):
        for j, image in enumerate(photos[cls][:2]):
            _save(image, root / "train" / WNIDS[label] / "images" / f"{WNIDS[label]}_{j}.JPEG")
        _save(photos[cls][2], root / "val" / "images" / f"val_{label}.JPEG")
        lines.append(f"val_{label}.JPEG\t{WNIDS[label]}\t0\t0\t27\t27")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


def _places365(root: Path, photos) -> Path:
    val, train = [], []
    for cls in range(3):
        _save(photos[cls][0], root / "val_256" / f"Places365_val_{cls:08d}.jpg")
        val.append(f"Places365_val_{cls:08d}.jpg {cls}")
        _save(photos[cls][1], root / "data_256" / "a" / f"class{cls}" / "00000001.png")
        train.append(f"/a/class{cls}/00000001.png {cls}")
    (root / "places365_val.txt").write_text("\n".join(val) + "\n")
    (root / "places365_train_standard.txt").write_text("\n".join(train) + "\n")
    return root


def test_tiny_imagenet_layout(tmp_path, photos):
    root = _tiny_imagenet(tmp_path / "tiny-imagenet-200", photos)
    train = load_tiny_imagenet(str(root), "train")
    val = load_tiny_imagenet(str(root), "val")
    assert [d["label"] for d in train] == [0, 0, 1, 1, 2, 2] and [d["label"] for d in val] == [0, 1, 2]
    assert [d["image_id"] for d in train] == list(range(6))
    # The images read back are the photos written (JPEG: close, not equal), in wnids.txt order.
    for d, cls in zip(val, [2, 0, 1]):
        pixels = np.asarray(read_rgb_image(d))[..., 0].astype(float)
        assert np.abs(pixels - photos[cls][2]).mean() < 8
    register_tiny_imagenet(str(root), prefix="test_tiny_imagenet")
    try:
        assert len(get_dataset_dicts(["test_tiny_imagenet_train", "test_tiny_imagenet_val"])) == 9
    finally:
        for split in ("train", "val"):
            DatasetCatalog.remove(f"test_tiny_imagenet_{split}")


def test_tiny_imagenet_errors_name_file_and_line(tmp_path, photos):
    root = _tiny_imagenet(tmp_path / "t", photos)
    annotations = root / "val" / "val_annotations.txt"
    lines = annotations.read_text().splitlines()
    annotations.write_text("\n".join([lines[0], "val_1.JPEG n01629819 0 0 27 27", lines[2]]) + "\n")
    with pytest.raises(DatasetError, match=r"val_annotations.txt:2: expected"):
        load_tiny_imagenet(str(root), "val")
    annotations.write_text("\n".join([lines[0], lines[1], lines[2].replace("n01641577", "n99999999")]) + "\n")
    with pytest.raises(DatasetError, match=r"val_annotations.txt:3: expected"):
        load_tiny_imagenet(str(root), "val")
    annotations.write_text("\n".join(lines) + "\n")
    (root / "val" / "images" / "val_1.JPEG").unlink()
    with pytest.raises(DatasetError, match=r"val_annotations.txt:2: image .*val_1.JPEG.* does not exist"):
        load_tiny_imagenet(str(root), "val")
    (root / "wnids.txt").write_text("\n".join(WNIDS + ["n00000001"]) + "\n")
    with pytest.raises(DatasetError, match=r"wnids.txt:4: class folder .*n00000001"):
        load_tiny_imagenet(str(root), "train")


def test_places365_layout_and_errors(tmp_path, photos):
    root = _places365(tmp_path / "places365", photos)
    val = load_places365(str(root), "val")
    train = load_places365(str(root), "train")
    assert [d["label"] for d in val] == [0, 1, 2] and [d["label"] for d in train] == [0, 1, 2]
    assert train[1]["file_name"].endswith("data_256/a/class1/00000001.png")
    np.testing.assert_array_equal(np.asarray(read_rgb_image(train[1]))[..., 0], photos[1][1])  # PNG: exact
    register_places365(str(root), prefix="test_places365")
    try:
        assert len(get_dataset_dicts("test_places365_val")) == 3
    finally:
        for split in ("train", "val"):
            DatasetCatalog.remove(f"test_places365_{split}")
    list_file = root / "places365_val.txt"
    good = list_file.read_text().splitlines()
    list_file.write_text("\n".join([good[0], "Places365_val_00000001.jpg", good[2]]) + "\n")
    with pytest.raises(DatasetError, match=r"places365_val.txt:2: expected '<image> <class index>'"):
        load_places365(str(root), "val")
    list_file.write_text("\n".join(good[:2] + ["Places365_val_00000009.jpg 2"]) + "\n")
    with pytest.raises(DatasetError, match=r"places365_val.txt:3: image .*00000009.jpg.* does not exist"):
        load_places365(str(root), "val")
    with pytest.raises(DatasetError, match="split must be one of"):
        load_places365(str(root), "test")
