import os

import numpy as np
import pytest
from PIL import Image

from d2ssl.data.datasets import (
    DatasetError,
    get_dataset_dicts,
    load_fashion_mnist,
    load_image_folder,
    register_image_folder,
)


def test_fashion_mnist_official_split_is_read_from_the_debian_files(fashion_mnist_train):
    test = get_dataset_dicts("fashion_mnist_test")
    assert (len(fashion_mnist_train), len(test)) == (60000, 10000)
    first = fashion_mnist_train[0]["image"]
    assert first.shape == (28, 28) and first.dtype == np.uint8
    # 10 balanced classes: 6,000 training and 1,000 test photos each.
    assert np.bincount([d["label"] for d in fashion_mnist_train]).tolist() == [6000] * 10
    assert np.bincount([d["label"] for d in test]).tolist() == [1000] * 10
    # Real photos, not blank or constant arrays.
    assert 50 < np.mean([d["image"].mean() for d in test[:100]]) < 120


def test_missing_fashion_mnist_names_the_file_and_the_install_command(tmp_path):
    expected = r"train-images-idx3-ubyte\.gz.*apt-get install -y dataset-fashion-mnist"
    with pytest.raises(DatasetError, match=expected):
        load_fashion_mnist(str(tmp_path), "train")


def test_image_ids_are_positions_after_concatenation_and_limit_keeps_the_first():
    both = get_dataset_dicts(["digits_train", "digits_test"])
    assert [d["image_id"] for d in both] == list(range(1797))
    first = get_dataset_dicts("fashion_mnist_test", limit=100)
    assert len(first) == 100 and first[-1]["image_id"] == 99
    with pytest.raises(DatasetError, match="limit"):
        get_dataset_dicts("digits_train", limit=0)


def test_unregistered_name_lists_what_is_registered():
    with pytest.raises(DatasetError, match=r"'imagenet_trian' is not registered.*fashion_mnist_train"):
        get_dataset_dicts("imagenet_trian")


def test_folder_with_class_subfolders_gets_sorted_class_labels(tmp_path):
    for cls, n in (("cat", 2), ("ant", 3)):
        os.makedirs(tmp_path / cls)
        for i in range(n):
            Image.new("RGB", (8, 8)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    dicts = load_image_folder(str(tmp_path))
    assert [d["label"] for d in dicts] == [0, 0, 0, 1, 1]  # ant=0, cat=1
    assert dicts[0]["file_name"].endswith(os.path.join("ant", "0.png"))
    register_image_folder("test_folder_two_classes", str(tmp_path))
    assert len(get_dataset_dicts("test_folder_two_classes")) == 5


def test_missing_and_empty_folders_are_named(tmp_path):
    with pytest.raises(DatasetError, match=f"{tmp_path / 'nope'}.*does not exist"):
        load_image_folder(str(tmp_path / "nope"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(DatasetError, match=f"{tmp_path / 'empty'}.*contains no images"):
        load_image_folder(str(tmp_path / "empty"))
