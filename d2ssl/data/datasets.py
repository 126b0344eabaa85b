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
import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import TypeVar

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


_F = TypeVar("_F", bound=Callable)
WRAPPED_DATASET_ATTRIBUTE = "wrapped_dataset_argument"


def wraps_dataset(argument: str) -> Callable[[_F], _F]:
    """Declares that a data set function derives its data set from its argument ``argument`` (another
    data set): pseudo-labels attached, a subset, a split part. A command-line shorthand
    (``dataloader.train.dataset=folder:PATH``, ``d2ssl.config.dataset_shorthand``) then replaces that
    argument, not the node, so what the node adds (ClusterFit's pseudo-labels, a 1 % subset) stays."""

    def mark(function: _F) -> _F:
        setattr(function, WRAPPED_DATASET_ATTRIBUTE, argument)
        return function

    return mark


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


def read_list_file(list_file: str, what: str = "list file") -> list[str]:
    """The non-empty, stripped lines of ``list_file`` (image lists, subset lists such as SimCLR's
    ``1percent.txt``); a missing or empty file is a ``DatasetError`` naming it as ``what``."""
    if not PathManager.isfile(list_file):
        raise DatasetError(f"{what} {list_file!r} does not exist")
    with PathManager.open(list_file) as f:
        lines = [line.strip() for line in f if line.strip()]
    if not lines:
        raise DatasetError(f"{what} {list_file!r} is empty")
    return lines


# Written beside the list files by tools/split_dataset.py (d2ssl.data.splits.write_dataset_split): the
# root the paths are relative to and the class names of the labels, so ``list:FILE`` needs nothing else.
SPLIT_RECORD = "split.json"


def parse_list_line(line: str) -> tuple[str, int | None]:
    """``(path, label)`` of a list-file line: ``PATH`` (label None) or ``PATH LABEL`` (an integer after
    the last blank, the format tools/split_dataset.py writes; paths may hold blanks)."""
    fields = line.rsplit(None, 1)
    head, tail = (fields[0], fields[1]) if len(fields) == 2 else ("", line)
    if head.strip() and tail.lstrip("-").isdigit():
        return head.strip(), int(tail)
    return line, None


def split_record(list_file: str) -> dict | None:
    """The ``split.json`` tools/split_dataset.py wrote beside ``list_file`` if it lists that file, else
    None."""
    path = os.path.join(os.path.dirname(list_file), SPLIT_RECORD)
    if not PathManager.isfile(path):
        return None
    with PathManager.open(path) as f:
        record = json.load(f)
    return record if os.path.basename(list_file) in record.get("lists", []) else None


def load_image_list(list_file: str, root: str = "", labels_file: str | None = None) -> list[dict]:
    """Reads a list file: one image a line, ``PATH`` or ``PATH LABEL`` (an integer class index; every
    line alike), paths relative to ``root``.

    ``root`` empty: the root recorded in the ``split.json`` that tools/split_dataset.py writes beside
    its lists, else the paths as written. ``labels_file`` is a ``.npy`` array with one integer per line
    of ``list_file`` (e.g. ClusterFit pseudo-labels); it replaces the labels of the lines.
    """
    lines = read_list_file(list_file, "image list file")
    entries = [parse_list_line(line) for line in lines]
    labelled = [label is not None for _, label in entries]
    if any(labelled) and not all(labelled):
        first = lines[labelled.index(not labelled[0])]
        raise DatasetError(
            f"image list file {list_file!r}: some lines end with an integer label and some do not (first "
            f"odd line: {first!r}); write 'PATH LABEL' on every line or 'PATH' on every line"
        )
    if not root:
        record = split_record(list_file)
        root = record["root"] if record else ""
        if root:
            logger.info("%s: paths relative to %s (%s beside it)", list_file, root, SPLIT_RECORD)
    dicts = []
    for i, (path, label) in enumerate(entries):
        d = {"file_name": os.path.join(root, path) if root else path, "image_id": i}
        if label is not None:
            if label < 0:
                raise DatasetError(f"image list file {list_file!r}: line {lines[i]!r} has a negative label")
            d["label"] = label
        dicts.append(d)
    if labels_file:
        dicts = attach_labels(dicts, labels_file, dataset_name=repr(list_file))
    return dicts


def labels_record_path(labels_file: str) -> str:
    """The record beside a labels file (``x_lbls.npy`` -> ``x_lbls.json``): which data set it labels."""
    return os.path.splitext(labels_file)[0] + ".json"


def write_labels_record(labels_file: str, dataset_digest: str, num_images: int, num_classes: int,
                        dataset_name: str) -> None:
    """Records beside ``labels_file`` the digest of the data set it labels (``dataset_digest`` of
    ``d2ssl.evaluation.features``) and its class count, which ``attach_labels`` and
    ``num_classes_of_labels`` read back."""
    from d2ssl.utils.safe_io import atomic_write

    record = {"dataset_digest": dataset_digest, "num_images": int(num_images),
              "num_classes": int(num_classes), "dataset_name": dataset_name}
    atomic_write(labels_record_path(labels_file), lambda f: json.dump(record, f, indent=2), mode="w")


def _labels_record(labels_file: str) -> dict | None:
    path = labels_record_path(labels_file)
    if not PathManager.isfile(path):
        return None
    with PathManager.open(path) as f:
        return json.load(f)


def num_classes_of_labels(labels_file: str, default: int | None = None) -> int:
    """The class (cluster) count of a labels file: its record's (k-means may leave the last clusters
    empty), else the largest label + 1. ``default`` is returned only when the file does not exist yet,
    so a model can be built before step 1 ran; training then stops at ``attach_labels``, which needs
    the file."""
    record = _labels_record(labels_file)
    if record is not None:
        return int(record["num_classes"])
    if not PathManager.isfile(labels_file):
        if default is None:
            raise DatasetError(f"labels file {labels_file!r} does not exist: cannot read its class count")
        return int(default)
    with PathManager.open(labels_file, "rb") as f:
        labels = np.load(f, allow_pickle=False)
    return int(labels.max()) + 1 if labels.size else 0


@wraps_dataset("dataset")
def attach_labels(dataset: list[dict], labels_file: str, dataset_name: str = "the data set") -> list[dict]:
    """VISSL's ``LABEL_PATHS``: ``dataset`` with the ``label`` of image ``i`` set to entry ``i`` of
    ``labels_file``, a ``.npy`` array of ``(N,)`` integers in data set order (ClusterFit's pseudo-labels
    from ``tools/cluster_features.py``); -1 marks an image without a label (VISSL's ``ignore_index``).

    The file is read without unpickling. Its length must equal the data set's, else a ``DatasetError``
    names both numbers and the file. Where a record beside the file (``write_labels_record``, written by
    ``tools/cluster_features.py``) names the data set it labels, ``dataset`` must be that data set (same
    digest: file names, pixels, order), else a ``DatasetError`` names both: labels of other images would
    train without complaint. A file without a record is checked by its length only (a warning says so).
    """
    try:
        with PathManager.open(labels_file, "rb") as f:
            labels = np.load(f, allow_pickle=False)
    except FileNotFoundError as e:
        raise DatasetError(f"labels file {labels_file!r} does not exist") from e
    except ValueError as e:  # not a .npy file, or an object array that would need unpickling
        raise DatasetError(f"labels file {labels_file!r} is not a .npy array of integers: {e}") from e
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(
            f"labels file {labels_file!r} holds {labels.shape} labels of type {labels.dtype}: need one "
            f"integer label per image, shape (N,)"
        )
    if len(labels) != len(dataset):
        raise DatasetError(
            f"labels file {labels_file!r} holds {labels.shape} labels, but {dataset_name} lists "
            f"{len(dataset)} images: need one label per image, in data set order"
        )
    _check_labelled_dataset(dataset, labels_file, dataset_name)
    return [dict(d, label=int(y)) for d, y in zip(dataset, labels)]


def _check_labelled_dataset(dataset: list[dict], labels_file: str, dataset_name: str) -> None:
    record = _labels_record(labels_file)
    if record is None:
        logger.warning("labels file %s has no record of the data set it labels (%s): checked by its length "
                       "only", labels_file, os.path.basename(labels_record_path(labels_file)))
        return
    from d2ssl.evaluation.features import dataset_digest  # the digest feature caches key on

    digest = dataset_digest(dataset)
    if digest != record["dataset_digest"]:
        raise DatasetError(
            f"labels file {labels_file!r} labels the data set {record.get('dataset_name', '?')!r} (digest "
            f"{record['dataset_digest'][:12]}, {labels_record_path(labels_file)}), but {dataset_name} is "
            f"another one (digest {digest[:12]}: other images, pixels or order). Cluster this data set "
            f"(tools/cluster_features.py with the same dataloader.train.dataset) and set labels_file to "
            f"the _lbls.npy it writes"
        )


def _read_lines(path: str) -> list[tuple[int, str]]:
    """``(line number, stripped line)`` of the non-empty lines of a text file."""
    if not PathManager.isfile(path):
        raise DatasetError(f"{path!r} does not exist")
    with PathManager.open(path) as f:
        return [(n, line.strip()) for n, line in enumerate(f, start=1) if line.strip()]


def _check_image(path: str, list_file: str, line_number: int) -> None:
    if not PathManager.isfile(path):
        raise DatasetError(f"{list_file}:{line_number}: image {path!r} does not exist")


def load_tiny_imagenet(root: str, split: str = "train") -> list[dict]:
    """Tiny ImageNet (200 classes, 64 px) as distributed in ``tiny-imagenet-200.zip``::

        root/wnids.txt                          one WordNet id per line: label = line order
        root/train/<wnid>/images/*.JPEG         500 per class
        root/val/images/*.JPEG                  10,000
        root/val/val_annotations.txt            "<file>\\t<wnid>\\t<x0>\\t<y0>\\t<x1>\\t<y1>" per image

    ``split``: ``train`` or ``val``. A malformed line, an unknown wnid or a missing image is a
    ``DatasetError`` naming the file and line.
    """
    if split not in ("train", "val"):
        raise DatasetError(f"Tiny ImageNet split must be 'train' or 'val', got {split!r}")
    wnids_file = os.path.join(root, "wnids.txt")
    wnids: dict[str, int] = {}
    for line_number, line in _read_lines(wnids_file):
        if len(line.split()) != 1 or line in wnids:
            raise DatasetError(f"{wnids_file}:{line_number}: expected one new WordNet id, got {line!r}")
        wnids[line] = len(wnids)
    entries: list[tuple[str, int]] = []
    if split == "train":
        for wnid, label in wnids.items():
            folder = os.path.join(root, "train", wnid, "images")
            if not PathManager.isdir(folder):
                raise DatasetError(f"{wnids_file}:{label + 1}: class folder {folder!r} does not exist")
            names = sorted(n for n in PathManager.ls(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
            entries.extend((os.path.join(folder, n), label) for n in names)
    else:
        annotations = os.path.join(root, "val", "val_annotations.txt")
        for line_number, line in _read_lines(annotations):
            fields = line.split("\t")
            if len(fields) != 6 or fields[1] not in wnids:
                raise DatasetError(
                    f"{annotations}:{line_number}: expected '<file>\\t<wnid from wnids.txt>\\t<4 box "
                    f"coordinates>', got {line!r}"
                )
            path = os.path.join(root, "val", "images", fields[0])
            _check_image(path, annotations, line_number)
            entries.append((path, wnids[fields[1]]))
    if not entries:
        raise DatasetError(f"Tiny ImageNet {split} split under {root!r} holds no images")
    return [{"file_name": p, "image_id": i, "label": y} for i, (p, y) in enumerate(entries)]


PLACES365_SPLITS = {
    # split: (list file, image folder), the names of the official file lists and 256 px archives
    "val": ("places365_val.txt", "val_256"),
    "train": ("places365_train_standard.txt", "data_256"),
}


def load_places365(root: str, split: str = "val") -> list[dict]:
    """Places365-Standard at 256 px as distributed (``filelist_places365-standard.tar``,
    ``val_256.tar``, ``train_256_places365standard.tar``)::

        root/places365_val.txt              "Places365_val_00000001.jpg 165" per line
        root/val_256/*.jpg
        root/places365_train_standard.txt   "/a/airfield/00000001.jpg 0" per line
        root/data_256/a/airfield/*.jpg

    Labels are the class indices of the list files (0..364). A malformed line or a missing image is
    a ``DatasetError`` naming the file and line.
    """
    if split not in PLACES365_SPLITS:
        raise DatasetError(f"Places365 split must be one of {sorted(PLACES365_SPLITS)}, got {split!r}")
    list_name, folder = PLACES365_SPLITS[split]
    list_file = os.path.join(root, list_name)
    dicts = []
    for line_number, line in _read_lines(list_file):
        fields = line.split()
        if len(fields) != 2 or not fields[1].isdigit():
            raise DatasetError(f"{list_file}:{line_number}: expected '<image> <class index>', got {line!r}")
        path = os.path.join(root, folder, fields[0].lstrip("/"))
        _check_image(path, list_file, line_number)
        dicts.append({"file_name": path, "image_id": len(dicts), "label": int(fields[1])})
    if not dicts:
        raise DatasetError(f"{list_file!r} lists no images")
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


def register_tiny_imagenet(root: str, prefix: str = "tiny_imagenet") -> None:
    """Registers ``{prefix}_train`` and ``{prefix}_val`` (``load_tiny_imagenet``)."""
    for split in ("train", "val"):
        DatasetCatalog.register(f"{prefix}_{split}", lambda split=split: load_tiny_imagenet(root, split))
        MetadataCatalog.get(f"{prefix}_{split}").set(image_root=root, evaluator_type="classification")


def register_places365(root: str, prefix: str = "places365") -> None:
    """Registers ``{prefix}_train`` and ``{prefix}_val`` (``load_places365``)."""
    for split in PLACES365_SPLITS:
        DatasetCatalog.register(f"{prefix}_{split}", lambda split=split: load_places365(root, split))
        MetadataCatalog.get(f"{prefix}_{split}").set(image_root=root, evaluator_type="classification")


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
