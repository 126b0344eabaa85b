"""Datasets for pretraining and evaluation, registered in detectron2's ``DatasetCatalog``.

A dataset is a list of dicts with detectron2's keys: ``file_name`` (any iopath URI) or, for data
sets shipped as arrays (Fashion-MNIST, scikit-learn digits), ``image`` (``HxW`` or ``HxWxC`` uint8);
``image_id`` (position in the data set, which NPID/PIRL use as the memory-bank index) and, where
known, ``label``.

Built-in registrations (data folder overridable with ``$D2SSL_DATASETS_FASHION_MNIST``):

    fashion_mnist_train, fashion_mnist_test   Debian package `dataset-fashion-mnist`
    digits_train, digits_test                 scikit-learn's 1,797 handwritten digits
"""

from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Sequence

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.file_io import PathManager

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
)


class DatasetError(ValueError):
    """A data set cannot be used: the message names the path, file or key at fault."""


def load_image_folder(root: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[dict]:
    """Lists the images under ``root``.

    With class sub-folders (``root/<class>/<image>``, the ImageNet layout) each dict gets ``label``,
    the index of its class in sorted order; images directly under ``root`` get no label.
    """
    if not PathManager.isdir(root):
        raise DatasetError(f"image folder {root!r} does not exist or is not a directory")
    exts = tuple(e.lower() for e in extensions)
    classes = sorted(e for e in PathManager.ls(root) if PathManager.isdir(os.path.join(root, e)))
    entries: list[tuple[str, int | None]] = []
    for name in sorted(PathManager.ls(root)):
        if name.lower().endswith(exts):
            entries.append((os.path.join(root, name), None))
    for label, cls in enumerate(classes):
        for dirpath, _, files in _walk(os.path.join(root, cls)):
            images = [os.path.join(dirpath, f) for f in sorted(files) if f.lower().endswith(exts)]
            entries.extend((path, label) for path in images)
    if not entries:
        raise DatasetError(f"image folder {root!r} contains no images with extensions {list(exts)}")
    dicts = []
    for image_id, (path, label) in enumerate(entries):
        d = {"file_name": path, "image_id": image_id}
        if label is not None:
            d["label"] = label
        dicts.append(d)
    return dicts


def _walk(top: str):
    # PathManager has no walk(); local folders use os.walk, other URIs a recursive ls.
    if os.path.isdir(top):
        for dirpath, dirnames, files in os.walk(top):
            dirnames.sort()
            yield dirpath, dirnames, files
        return
    names = sorted(PathManager.ls(top))
    dirs = [n for n in names if PathManager.isdir(os.path.join(top, n))]
    yield top, dirs, [n for n in names if n not in dirs]
    for d in dirs:
        yield from _walk(os.path.join(top, d))


def load_image_list(list_file: str, root: str = "", labels_file: str | None = None) -> list[dict]:
    """Reads a list file (one image path per line, relative to ``root``), with optional labels.

    ``labels_file`` is a ``.npy`` array with one integer per line of ``list_file`` (e.g. ClusterFit
    pseudo-labels).
    """
    if not PathManager.isfile(list_file):
        raise DatasetError(f"image list file {list_file!r} does not exist")
    with PathManager.open(list_file) as f:
        paths = [line.strip() for line in f if line.strip()]
    if not paths:
        raise DatasetError(f"image list file {list_file!r} is empty")
    dicts = [{"file_name": os.path.join(root, p) if root else p, "image_id": i} for i, p in enumerate(paths)]
    if labels_file:
        with PathManager.open(labels_file, "rb") as f:
            labels = np.load(f)
        if labels.ndim != 1 or len(labels) != len(dicts):
            raise DatasetError(
                f"labels file {labels_file!r} holds {labels.shape} labels, but {list_file!r} lists "
                f"{len(dicts)} images: need one label per image"
            )
        for d, y in zip(dicts, labels):
            d["label"] = int(y)
    return dicts


def _read_idx(path: str, header_bytes: int) -> np.ndarray:
    with PathManager.open(path, "rb") as f:
        raw = gzip.decompress(f.read()) if path.endswith(".gz") else f.read()
    return np.frombuffer(raw, dtype=np.uint8, offset=header_bytes)


def load_fashion_mnist(root: str, split: str) -> list[dict]:
    """Fashion-MNIST's official split (``train``: 60,000, ``test``: 10,000) as in-memory images.

    Reads the IDX files of the Debian package ``dataset-fashion-mnist`` (16-byte image header,
    8-byte label header).
    """
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise DatasetError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    images_path = os.path.join(root, f"{prefix}-images-idx3-ubyte.gz")
    labels_path = os.path.join(root, f"{prefix}-labels-idx1-ubyte.gz")
    for p in (images_path, labels_path):
        if not PathManager.exists(p):
            raise DatasetError(
                f"Fashion-MNIST file {p!r} not found. Install it with "
                f"`sudo apt-get install -y dataset-fashion-mnist`, or point $D2SSL_DATASETS_FASHION_MNIST "
                f"at a folder holding the four IDX files"
            )
    labels = _read_idx(labels_path, 8)
    images = _read_idx(images_path, 16)
    if images.size != len(labels) * 28 * 28:
        raise DatasetError(
            f"{images_path!r} holds {images.size} bytes of pixels, expected {len(labels)}x28x28"
        )
    images = images.reshape(len(labels), 28, 28)
    return [{"image": images[i], "image_id": i, "label": int(labels[i])} for i in range(len(labels))]


def load_sklearn_digits(split: str, test_fraction: float = 0.25) -> list[dict]:
    """scikit-learn's 8x8 digits as uint8 images; a fixed, stratified-by-order split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    n_test = int(round(len(images) * test_fraction))
    index = np.arange(len(images))
    chosen = index[-n_test:] if split == "test" else index[:-n_test]
    return [
        {"image": images[j], "image_id": i, "label": int(digits.target[j])} for i, j in enumerate(chosen)
    ]


def register_image_folder(name: str, root: str) -> None:
    """Registers ``root`` (class sub-folders or a flat folder of images) as data set ``name``."""
    DatasetCatalog.register(name, lambda: load_image_folder(root))
    MetadataCatalog.get(name).set(image_root=root, evaluator_type="classification")


def register_image_list(name: str, list_file: str, root: str = "", labels_file: str | None = None) -> None:
    """Registers a list file (and optional ``.npy`` labels) as data set ``name``."""
    DatasetCatalog.register(name, lambda: load_image_list(list_file, root, labels_file))
    MetadataCatalog.get(name).set(image_root=root, list_file=list_file)


def _register_builtin() -> None:
    root = os.environ.get("D2SSL_DATASETS_FASHION_MNIST", FASHION_MNIST_DIR)
    for split in ("train", "test"):
        name = f"fashion_mnist_{split}"
        if name not in DatasetCatalog:
            DatasetCatalog.register(name, lambda split=split: load_fashion_mnist(root, split))
            MetadataCatalog.get(name).set(thing_classes=list(FASHION_MNIST_CLASSES), image_root=root)
        name = f"digits_{split}"
        if name not in DatasetCatalog:
            DatasetCatalog.register(name, lambda split=split: load_sklearn_digits(split))
            MetadataCatalog.get(name).set(thing_classes=[str(i) for i in range(10)])


def get_dataset_dicts(names: str | Sequence[str], limit: int | None = None) -> list[dict]:
    """Concatenates registered data sets; ``image_id`` is renumbered to the position in the result,
    since NPID/PIRL index their memory bank with it.

    ``limit`` keeps the first ``limit`` images (VISSL's ``DATA_LIMIT``), e.g. for a short CPU run
    in which a memory bank must see each image several times.
    """
    if limit is not None and limit <= 0:
        raise DatasetError(f"limit must be a positive number of images or None, got {limit}")
    if isinstance(names, str):
        names = [names]
    dicts = []
    for name in names:
        if name not in DatasetCatalog:
            raise DatasetError(
                f"data set {name!r} is not registered; registered: {sorted(DatasetCatalog.list())}"
            )
        part = DatasetCatalog.get(name)
        if not part:
            raise DatasetError(f"data set {name!r} is empty")
        dicts.extend(part)
    return [dict(d, image_id=i) for i, d in enumerate(dicts[:limit])]


_register_builtin()
