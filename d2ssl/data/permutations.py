"""Jigsaw permutation sets: chosen far apart in Hamming distance (Noroozi & Favaro), loaded, checked."""

from __future__ import annotations

import itertools
import json
import logging
import os

import numpy as np
from detectron2.utils.file_io import PathManager

logger = logging.getLogger(__name__)


def generate_permutations(
    num_tiles: int, num_permutations: int, seed: int = 0, method: str = "max_avg"
) -> np.ndarray:
    """Selects ``num_permutations`` permutations of ``num_tiles`` tiles far apart in Hamming distance.

    Algorithm 1 of Noroozi & Favaro (2016) as VISSL's ``extra_scripts/generate_jigsaw_permutations.py``
    runs it: start from all ``num_tiles!`` permutations in lexicographic order, pick the first one at
    random (here from ``seed``, so a set is reproducible), then repeatedly add the remaining
    permutation whose mean (``max_avg``, VISSL's default) or minimum (``max_min``) Hamming distance to
    those already chosen is largest; ties go to the lexicographically first.

    Returns:
        int64 array ``(num_permutations, num_tiles)``, 0-indexed, rows distinct.
    """
    if method not in ("max_avg", "max_min"):
        raise ValueError(f"permutation method must be 'max_avg' or 'max_min', got {method!r}")
    total = int(np.prod(np.arange(1, num_tiles + 1)))
    if not 1 <= num_permutations <= total:
        raise ValueError(
            f"num_permutations={num_permutations} must be between 1 and {num_tiles}! = {total} for "
            f"{num_tiles} tiles"
        )
    all_perms = np.array(list(itertools.permutations(range(num_tiles))), dtype=np.int8)
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(total))]
    available = np.ones(total, dtype=bool)
    available[chosen[0]] = False
    # Running sum (or min) of distances to the chosen set: each step adds one row instead of
    # recomputing the full |chosen| x |remaining| matrix as VISSL does; the selection is the same.
    score = np.zeros(total, dtype=np.float64) if method == "max_avg" else np.full(total, np.inf)
    for _ in range(num_permutations - 1):
        dist = (all_perms != all_perms[chosen[-1]]).sum(axis=1)
        score = score + dist if method == "max_avg" else np.minimum(score, dist)
        j = int(np.argmax(np.where(available, score, -1)))
        chosen.append(j)
        available[j] = False
    return all_perms[chosen].astype(np.int64)


def hamming_distances(perms: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances (number of positions that differ), ``(P, P)``."""
    return (perms[:, None, :] != perms[None, :, :]).sum(axis=2)


def load_or_create_permutations(
    path: str | None, num_tiles: int, num_permutations: int, seed: int = 0, method: str = "max_avg"
) -> np.ndarray:
    """Loads a permutation set from ``path`` (``.npy``), or generates it (and saves it there if given).

    A file holding 1-indexed permutations (Noroozi's MATLAB files) is shifted to 0-indexed, as VISSL
    does. The loaded set is checked: every row must be a permutation of ``range(num_tiles)``.

    A set d2ssl generated is saved with ``<path>.json`` beside it (tiles, count, seed, method): it is
    reused only for the same four values, never because the path matches (a config with another seed
    or method is refused, naming what differs). A file without that record is one the user supplied
    (VISSL's ``hamming_perms_2000_patches_9_max_avg.npy``): it is used as given, and the log says so.
    """
    settings = {"num_tiles": num_tiles, "num_permutations": num_permutations, "seed": seed, "method": method}
    if path and PathManager.exists(path):
        with PathManager.open(path, "rb") as f:
            perms = np.load(f)
        if perms.min() == 1:
            perms = perms - 1
        validate_permutations(perms, num_tiles, source=path)
        if num_permutations and len(perms) != num_permutations:
            raise ValueError(
                f"permutation file {path!r} holds {len(perms)} permutations but num_permutations="
                f"{num_permutations}; delete the file or set num_permutations={len(perms)}"
            )
        record = _read_record(path)
        if record is None:
            logger.info("using the permutation set %s as given (%d permutations; no record of how it was "
                        "made)", path, len(perms))
        else:
            differs = {k: (record.get(k), v) for k, v in settings.items() if record.get(k) != v}
            if differs:
                raise ValueError(
                    f"permutation file {path!r} was generated with "
                    + ", ".join(f"{k}={old!r}" for k, (old, _) in differs.items())
                    + ", but the config asks for "
                    + ", ".join(f"{k}={new!r}" for k, (_, new) in differs.items())
                    + "; point the permutations' path to another file, or delete this one to regenerate it"
                )
        return perms.astype(np.int64)
    perms = generate_permutations(num_tiles, num_permutations, seed=seed, method=method)
    if path:
        local = PathManager.get_local_path(os.path.dirname(path) or ".")
        os.makedirs(local, exist_ok=True)
        with PathManager.open(path + ".json.tmp", "w") as f:
            json.dump(settings, f)
        with PathManager.open(path + ".tmp", "wb") as f:
            np.save(f, perms)
        # The record first: a kill between the two renames leaves a record without a file (regenerated),
        # never a generated file without its record (which would be taken as user-supplied).
        PathManager.mv(path + ".json.tmp", path + ".json")
        PathManager.mv(path + ".tmp", path)
        logger.info("saved %d permutations of %d tiles to %s", len(perms), num_tiles, path)
    return perms


def _read_record(path: str) -> dict | None:
    if not PathManager.exists(path + ".json"):
        return None
    with PathManager.open(path + ".json") as f:
        return json.load(f)


def validate_permutations(perms: np.ndarray, num_tiles: int, source: str = "permutation set") -> None:
    if perms.ndim != 2 or perms.shape[1] != num_tiles:
        raise ValueError(f"{source}: expected shape (P, {num_tiles}), got {perms.shape}")
    if not (np.sort(perms, axis=1) == np.arange(num_tiles)).all():
        raise ValueError(f"{source}: some rows are not permutations of range({num_tiles})")
    if len(np.unique(perms, axis=0)) != len(perms):
        raise ValueError(f"{source}: contains duplicate permutations")
