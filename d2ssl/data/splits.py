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
    write_dataset_split("folder:/data/images", "splits/", seed=0)         # tools/split_dataset.py
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from detectron2.utils.file_io import PathManager

from d2ssl.config import dataset_shorthand, instantiate_dataset
from d2ssl.data.datasets import DatasetError, read_list_file


def sample_name(d: dict) -> str:
    """The name of ``d`` in a list file: ``file_name``'s base name, or ``image_id`` for in-memory images."""
    if "file_name" in d:
        return os.path.basename(str(d["file_name"]))
    return str(d["image_id"])


def _indices_per_class(dataset: Sequence[dict]) -> dict[int, list[int]]:
    per_class: dict[int, list[int]] = defaultdict(list)
    for i, d in enumerate(dataset):
        if "label" not in d:
            raise DatasetError(
                f"image {i} ({sample_name(d)}) has no label: stratified subsets need a labelled data set"
            )
        per_class[int(d["label"])].append(i)
    if not per_class:
        raise DatasetError("cannot take a subset of an empty data set")
    return dict(sorted(per_class.items()))


def _class_rng(seed: int, label: int) -> np.random.Generator:
    # One stream per (seed, class): a class's draw does not depend on the other classes' sizes.
    return np.random.default_rng([int(seed), int(label)])


def stratified_split(
    dataset: Sequence[dict], ratios: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0
) -> list[list[dict]]:
    """Splits every class by ``ratios`` (summing to 1), drawn from ``seed``.

    Class ``k`` of ``n_k`` images is shuffled and cut at ``round(n_k * cumsum(ratios))``, so each
    part holds its ratio of every class up to one image, the parts are disjoint and cover the data.

    Returns:
        one list of dicts per ratio, each in data set order.
    """
    ratios = [float(r) for r in ratios]
    if not ratios or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise ValueError(f"split ratios must be non-negative and sum to 1, got {ratios}")
    chosen: list[list[int]] = [[] for _ in ratios]
    bounds = np.cumsum(ratios)
    for label, indices in _indices_per_class(dataset).items():
        order = _class_rng(seed, label).permutation(len(indices))
        cuts = [0] + [int(round(b * len(indices))) for b in bounds[:-1]] + [len(indices)]
        for part, (start, stop) in enumerate(zip(cuts[:-1], cuts[1:])):
            chosen[part].extend(indices[j] for j in order[start:stop])
    return [[dict(dataset[i]) for i in sorted(part)] for part in chosen]


def class_balanced_subset(dataset: Sequence[dict], fraction: float, seed: int = 0) -> list[dict]:
    """``round(fraction * n_k)`` images of every class ``k`` (at least one), drawn from ``seed``.

    The same seed gives the same subset; the draw of each class is a prefix of a fixed per-class
    permutation, so a larger fraction with the same seed contains a smaller one.
    """
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"subset fraction must be in (0, 1], got {fraction!r}")
    chosen: list[int] = []
    for label, indices in _indices_per_class(dataset).items():
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
    names = read_list_file(list_file, "subset list file")
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
    and writes each part to ``output_dir/<name>.txt`` (``write_split_lists``); returns the file paths.

    ``dataset``: ``folder:PATH`` (class sub-folders), ``list:FILE`` (``load_image_list``),
    ``catalog:NAME[,NAME...]`` or a registered name (``fashion_mnist_train``), as the ``dataset=``
    shorthands of the command line. ``names``: default ``train, val, test`` (``train, val`` for two
    ratios, ``part0, part1, ...`` otherwise).
    """
    node = dataset_shorthand(dataset) or dataset_shorthand(f"catalog:{dataset}")
    if node is None:
        raise ValueError(
            f"data set {dataset!r}: expected folder:PATH, list:FILE, catalog:NAME or a registered name"
        )
    if names is None:
        defaults = {3: ("train", "val", "test"), 2: ("train", "val")}
        names = defaults.get(len(ratios), tuple(f"part{i}" for i in range(len(ratios))))
    parts = stratified_split(instantiate_dataset(node, "dataset"), ratios, seed)
    return write_split_lists(parts, output_dir, names)


def split_part(
    dataset: Sequence[dict], part: int, ratios: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0
) -> list[dict]:
    """Part ``part`` of ``stratified_split(dataset, ratios, seed)``: a config can name a split's
    train or validation part directly (``L(split_part)(dataset=..., part=1)``)."""
    parts = stratified_split(dataset, ratios, seed)
    if not 0 <= part < len(parts):
        raise ValueError(f"split part must be in [0, {len(parts)}), got {part}")
    return parts[part]
