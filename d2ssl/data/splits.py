"""Reproducible subsets of a labelled data set: stratified splits, class-balanced fractions, list files.

A data set is a list of dicts (``d2ssl.data.datasets``) with ``label``. Every function returns
shallow copies of the selected dicts in data set order (``image_id`` unchanged), so a subset of a
subset, or a list file written from it, still names the original images.

An image is named in list files by the base name of its ``file_name`` (the SimCLR / JigClu
``1percent.txt`` / ``10percent.txt`` format: ``n01440764_10026.JPEG``), or by a path suffix such as
``train/n01440764/n01440764_10026.JPEG`` when base names repeat; images held in memory
(Fashion-MNIST) are named by their ``image_id``.

    parts = stratified_split(dicts, ratios=(0.7, 0.15, 0.15), seed=0)   # 70/15/15 of every class
    write_split_lists(parts, "splits/", names=("train", "val", "test"))   # splits/train.txt, ...
    val = subset_from_list(dicts, "splits/val.txt")                      # the same images later
    one_percent = class_balanced_subset(dicts, fraction=0.01, seed=0)     # >= 1 image per class
    fit, val = holdout_split(dicts, fraction=0.1, seed=0)                 # model selection, never on test
    write_dataset_split("folder:/data/images", "splits/", seed=0)         # tools/split_dataset.py

``write_dataset_split`` (the tool) writes what ``list:FILE`` loads with its labels: ``PATH LABEL`` lines,
paths relative to the data set's root with their sub-folders (``n01/0001.jpg 0``), and beside them
``split.json`` (the root, which ``load_image_list`` reads) and ``classes.txt`` (line ``k``: class ``k``).
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from typing import Literal

import numpy as np
from detectron2.utils.file_io import PathManager

from d2ssl.config import dataset_shorthand, instantiate_dataset
from d2ssl.data.datasets import SPLIT_RECORD, DatasetError, parse_list_line, read_list_file, wraps_dataset

logger = logging.getLogger(__name__)


def sample_name(d: dict) -> str:
    """The name of ``d`` in a list file: ``file_name``'s base name, or ``image_id`` for in-memory images."""
    if "file_name" in d:
        return os.path.basename(str(d["file_name"]))
    return str(d["image_id"])


def _labels_of(dataset: Sequence[dict]) -> list[int]:
    labels = []
    for i, d in enumerate(dataset):
        if "label" not in d:
            raise DatasetError(
                f"image {i} ({sample_name(d)}) has no label: stratified subsets need a labelled data set"
            )
        labels.append(int(d["label"]))
    return labels


def _indices_per_class(labels: Sequence[int]) -> dict[int, list[int]]:
    per_class: dict[int, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        per_class[int(label)].append(i)
    if not per_class:
        raise DatasetError("cannot take a subset of an empty data set")
    return dict(sorted(per_class.items()))


def _class_rng(seed: int, label: int) -> np.random.Generator:
    # One stream per (seed, class): a class's draw does not depend on the other classes' sizes.
    return np.random.default_rng([int(seed), int(label)])


def stratified_indices(
    labels: Sequence[int], ratios: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0
) -> list[np.ndarray]:
    """The cut of ``stratified_split`` on a ``(N,)`` sequence of labels: one sorted index array per
    ratio. Cached features (``d2ssl.evaluation.linear_grid``) and data sets share this one draw, so
    the same labels, ratios and seed give the same rows whichever of the two is split."""
    ratios = [float(r) for r in ratios]
    if not ratios or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise ValueError(f"split ratios must be non-negative and sum to 1, got {ratios}")
    chosen: list[list[int]] = [[] for _ in ratios]
    bounds = np.cumsum(ratios)
    for label, indices in _indices_per_class(labels).items():
        order = _class_rng(seed, label).permutation(len(indices))
        cuts = [0] + [int(round(b * len(indices))) for b in bounds[:-1]] + [len(indices)]
        for part, (start, stop) in enumerate(zip(cuts[:-1], cuts[1:])):
            chosen[part].extend(indices[j] for j in order[start:stop])
    return [np.array(sorted(part), dtype=np.int64) for part in chosen]


def stratified_split(
    dataset: Sequence[dict], ratios: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0
) -> list[list[dict]]:
    """Splits every class by ``ratios`` (summing to 1), drawn from ``seed``.

    Class ``k`` of ``n_k`` images is shuffled and cut at ``round(n_k * cumsum(ratios))``, so each
    part holds its ratio of every class up to one image, the parts are disjoint and cover the data.

    Returns:
        one list of dicts per ratio, each in data set order.
    """
    parts = stratified_indices(_labels_of(dataset), ratios, seed)
    return [[dict(dataset[i]) for i in part] for part in parts]


def holdout_indices(labels: Sequence[int], fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(fit, val)`` row indices: ``fraction`` of every class held out for model selection, the rest to
    train on; ``stratified_indices(labels, (1 - fraction, fraction), seed)``.

    A class left with no row on either side is an error naming it: a validation split that misses a
    class, or a training split that cannot learn it, would select on something else than asked.
    """
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction!r}")
    fit, val = stratified_indices(labels, (1.0 - float(fraction), float(fraction)), seed)
    labels = np.asarray(labels)
    classes = np.unique(labels)
    empty = {name: sorted(set(classes.tolist()) - set(np.unique(labels[rows]).tolist()))
             for name, rows in (("validation", val), ("training", fit))}
    empty = {name: missing for name, missing in empty.items() if missing}
    if empty:
        raise DatasetError(
            "holding out a validation fraction of "
            f"{fraction} per class (seed {seed}) leaves classes without images: "
            + "; ".join(f"{name} part misses classes {missing[:10]}" for name, missing in empty.items())
            + ". Use a larger fraction, more images per class, or an explicit validation data set"
        )
    return fit, val


def holdout_split(dataset: Sequence[dict], fraction: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """``(fit, val)`` dicts of ``holdout_indices`` on ``dataset``'s labels, each in data set order."""
    fit, val = holdout_indices(_labels_of(dataset), fraction, seed)
    return [dict(dataset[i]) for i in fit], [dict(dataset[i]) for i in val]


@wraps_dataset("dataset")
def class_balanced_subset(dataset: Sequence[dict], fraction: float, seed: int = 0) -> list[dict]:
    """``round(fraction * n_k)`` images of every class ``k`` (at least one), drawn from ``seed``.

    The same seed gives the same subset; the draw of each class is a prefix of a fixed per-class
    permutation, so a larger fraction with the same seed contains a smaller one.
    """
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"subset fraction must be in (0, 1], got {fraction!r}")
    chosen: list[int] = []
    for label, indices in _indices_per_class(_labels_of(dataset)).items():
        count = max(1, int(round(fraction * len(indices))))
        order = _class_rng(seed, label).permutation(len(indices))
        chosen.extend(indices[j] for j in order[:count])
    return [dict(dataset[i]) for i in sorted(chosen)]


def subset_from_list(dataset: Sequence[dict], list_file: str) -> list[dict]:
    """The images named in ``list_file`` (one name per line, see the module docstring), in data set order.

    A name is matched against the base name of each ``file_name`` (or the ``image_id`` of in-memory
    images); a line with ``/`` must also match the end of the path. A name matching no image, or
    several, is a ``DatasetError`` naming the file and the first such names.
    """
    # A 'PATH LABEL' line (tools/split_dataset.py's lists) names the image by its path.
    names = [parse_list_line(line)[0] for line in read_list_file(list_file, "subset list file")]
    by_name: dict[str, list[int]] = defaultdict(list)
    for i, d in enumerate(dataset):
        by_name[sample_name(d)].append(i)
    chosen, missing, ambiguous = set(), [], []
    for name in names:
        candidates = by_name.get(os.path.basename(name), [])
        if "/" in name:
            suffix = "/" + name.lstrip("/")
            paths = {i: str(dataset[i]["file_name"]) for i in candidates}
            candidates = [i for i, path in paths.items() if path.endswith(suffix) or path == name]
        if not candidates:
            missing.append(name)
        elif len(candidates) > 1:
            ambiguous.append(name)
        else:
            chosen.add(candidates[0])
    if missing:
        raise DatasetError(
            f"{list_file}: {len(missing)} of {len(names)} listed images are not in the data set, "
            f"first: {missing[:5]}"
        )
    if ambiguous:
        raise DatasetError(
            f"{list_file}: names matching several images of the data set (write a longer path suffix, "
            f"e.g. class/name.jpg): {ambiguous[:5]}"
        )
    return [dict(dataset[i]) for i in sorted(chosen)]


def write_list_file(dataset: Sequence[dict], list_file: str) -> None:
    """Writes the names of ``dataset``'s images to ``list_file``, one per line (read back by
    ``subset_from_list``)."""
    names = [sample_name(d) for d in dataset]
    if len(set(names)) != len(names):
        raise DatasetError(f"cannot write {list_file}: several images share a base name; rename them")
    parent = os.path.dirname(list_file)
    if parent:
        PathManager.mkdirs(parent)
    with PathManager.open(list_file, "w") as f:
        f.write("".join(f"{n}\n" for n in names))


def write_split_lists(
    parts: Sequence[Sequence[dict]], output_dir: str, names: Sequence[str] = ("train", "val", "test")
) -> list[str]:
    """Writes each part of a split to ``output_dir/<name>.txt``; returns the file paths."""
    if len(parts) != len(names):
        raise ValueError(f"{len(parts)} parts but {len(names)} names {list(names)}")
    paths = [os.path.join(output_dir, f"{n}.txt") for n in names]
    for part, path in zip(parts, paths):
        write_list_file(part, path)
    return paths


def write_dataset_split(
    dataset: str, output_dir: str, ratios: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0,
    names: Sequence[str] | None = None,
) -> list[str]:
    """Splits the data set ``dataset`` names by ``ratios`` per class from ``seed`` (``stratified_split``)
    and writes each part to ``output_dir/<name>.txt``; returns the file paths.

    ``dataset``: ``folder:PATH`` (class sub-folders), ``list:FILE`` (``load_image_list``),
    ``catalog:NAME[,NAME...]`` or a registered name (``fashion_mnist_train``), as the ``dataset=``
    shorthands of the command line. ``names``: default ``train, val, test`` (``train, val`` for two
    ratios, ``part0, part1, ...`` otherwise).

    Images in files get ``PATH LABEL`` lines, paths relative to the data set's root (sub-folders kept,
    so ``0001.jpg`` in every class folder is no clash), with ``split.json`` (root, lists, classes, seed,
    ratios) and ``classes.txt`` beside them: ``dataloader.train.dataset=list:output_dir/train.txt`` then
    loads the part with its labels, nothing to add. Images held in memory (Fashion-MNIST) have no path:
    their lists name ``image_id`` (``write_split_lists``), for ``subset_from_list`` on that data set.
    """
    node = dataset_shorthand(dataset) or dataset_shorthand(f"catalog:{dataset}")
    if node is None:
        raise ValueError(
            f"data set {dataset!r}: expected folder:PATH, list:FILE, catalog:NAME or a registered name"
        )
    if names is None:
        defaults = {3: ("train", "val", "test"), 2: ("train", "val")}
        names = defaults.get(len(ratios), tuple(f"part{i}" for i in range(len(ratios))))
    dicts = instantiate_dataset(node, "dataset")
    parts = stratified_split(dicts, ratios, seed)
    if not all("file_name" in d for d in dicts):
        return write_split_lists(parts, output_dir, names)
    if len(parts) != len(names):
        raise ValueError(f"{len(parts)} parts but {len(names)} names {list(names)}")
    root = _root_of(node, dicts)
    paths = [os.path.join(output_dir, f"{n}.txt") for n in names]
    PathManager.mkdirs(output_dir)
    for part, path in zip(parts, paths):
        lines = [f"{os.path.relpath(str(d['file_name']), root)} {int(d['label'])}\n" for d in part]
        with PathManager.open(path, "w") as f:
            f.write("".join(lines))
    classes = _class_names(node, dicts)
    with PathManager.open(os.path.join(output_dir, "classes.txt"), "w") as f:
        f.write("".join(f"{c}\n" for c in classes))
    record = {"root": root, "lists": [os.path.basename(p) for p in paths], "classes": classes,
              "dataset": dataset, "ratios": [float(r) for r in ratios], "seed": int(seed)}
    with PathManager.open(os.path.join(output_dir, SPLIT_RECORD), "w") as f:
        json.dump(record, f, indent=2)
    return paths


def _root_of(node, dicts: Sequence[dict]) -> str:
    # The folder of folder:PATH; otherwise the deepest folder holding every image.
    if node.get("root"):
        return os.path.abspath(str(node.root))
    files = [os.path.abspath(str(d["file_name"])) for d in dicts]
    return os.path.commonpath([os.path.dirname(f) for f in files])


def _class_names(node, dicts: Sequence[dict]) -> list[str]:
    """Name of class ``k`` at position ``k``: the class folders in load_image_folder's (sorted) order,
    else the label itself."""
    count = max(int(d["label"]) for d in dicts) + 1
    if node.get("root") and str(node._target_).endswith("load_image_folder"):
        root = str(node.root)
        folders = sorted(e for e in PathManager.ls(root) if PathManager.isdir(os.path.join(root, e)))
        if len(folders) == count:
            return folders
    return [str(k) for k in range(count)]


def knn_monitor_part(
    dataset: Sequence[dict], part: Literal["memory", "queries"], limit: int, fraction: float = 0.5,
    seed: int = 0,
) -> list[dict] | None:
    """``limit`` images, drawn from ``seed``, of one side of ``holdout_split(dataset, fraction, seed)``'s cut:
    the kNN monitor's ``memory`` (the first side) or ``queries`` (the held-out side), so the two never
    share an image and both come from the data the config trains on (``"${dataloader.train.dataset}"``
    in configs/common/train.py: a ``folder:``/``list:`` swap carries through). None when an image has
    no label: the monitor is then off (``build_knn_monitor`` logs it)."""
    if part not in ("memory", "queries"):
        raise ValueError(f"knn_monitor_part part must be 'memory' or 'queries', got {part!r}")
    if limit < 1:
        raise ValueError(f"knn_monitor_part limit must be a positive number of images, got {limit}")
    if not dataset or any("label" not in d for d in dataset):
        return None
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"knn_monitor_part fraction must be in (0, 1), got {fraction!r}")
    # holdout_split's draw, without its refusal of a class left on one side only: a class of one image
    # may vote or be scored, not both, and a monitor should not stop a run over it.
    sides = stratified_indices(_labels_of(dataset), (1.0 - float(fraction), float(fraction)), seed)
    rows = sides[0] if part == "memory" else sides[1]
    order = np.random.default_rng([int(seed), ("memory", "queries").index(part)]).permutation(rows)
    # The training loader skips unreadable files; the monitor's loader would stop on one: draw past them.
    chosen, unreadable = [], []
    for i in order:
        if len(chosen) == limit:
            break
        (chosen if _decodes(dataset[i]) else unreadable).append(int(i))
    if unreadable:
        logger.warning("kNN monitor %s: %d unreadable images left out, first: %s", part, len(unreadable),
                       dataset[unreadable[0]].get("file_name"))
    return [dict(dataset[i]) for i in sorted(chosen)]


def _decodes(d: dict) -> bool:
    if "file_name" not in d:
        return True  # pixels held in memory
    from PIL import Image

    try:
        with PathManager.open(str(d["file_name"]), "rb") as f, Image.open(f) as image:
            image.load()
        return True
    except Exception:  # any reason a file cannot be decoded: PIL raises many types
        return False


@wraps_dataset("dataset")
def split_part(
    dataset: Sequence[dict], part: int, ratios: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0
) -> list[dict]:
    """Part ``part`` of ``stratified_split(dataset, ratios, seed)``: a config can name a split's
    train or validation part directly (``L(split_part)(dataset=..., part=1)``)."""
    parts = stratified_split(dataset, ratios, seed)
    if not 0 <= part < len(parts):
        raise ValueError(f"split part must be in [0, {len(parts)}), got {part}")
    return parts[part]
