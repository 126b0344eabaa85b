"""The fast linear path: a grid of linear classifiers on cached features, trained as one layer.

Every cell of ``learning rates x weight decays x standardise`` is a linear classifier ``D -> C``;
all cells are held in one ``(G, D, C)`` weight and trained together in one pass over the data per
epoch: one shuffled batch order (from ``seed``), one batched matrix product for the logits of every
cell, the sum of the cells' mean cross-entropies as the loss (its gradient for a cell is that cell's
own), and SGD with momentum applied per cell with the cell's learning rate and weight decay. Each
cell is therefore exactly the classifier ``torch.optim.SGD`` would train alone with that seed and
data order (``tests/evaluation/test_linear_grid.py`` checks it), at the cost of about one.

Defaults follow the MoCo / Jigsaw Clustering ``main_lincls.py`` classifier: weights ~ normal(0, 0.01),
bias 0, SGD momentum 0.9, weight decay applied to weight and bias as ``torch.optim.SGD`` does, batch
256, learning rate stepped per epoch (cosine as MoCo's ``--cos``, or x``gamma`` at ``milestones``).
``standardize=True`` cells see features standardised with the training set's mean and std.

Model selection never looks at the split it reports: the cell with the highest top-1 on ``val`` is
selected, and its top-1 on ``test`` is the reported number (``selected_on`` / ``scored_on`` in
``linear_grid.json``). ``val`` is an explicit split, or (``linear_grid_on_cached_features``, the
default) a fraction of every class of the training features drawn from a seed
(``d2ssl.data.splits.holdout_indices``) that the cells do not train on. The selected cell is not
retrained on train + val: its reported test top-1 is that of the very classifier that was selected.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import tqdm
from detectron2.utils.file_io import PathManager
from tabulate import tabulate
from torch.nn import functional as F

from d2ssl.data.splits import holdout_indices
from d2ssl.evaluation.evaluator import topk_accuracy
from d2ssl.evaluation.features import FeatureSet, load_features

logger = logging.getLogger(__name__)

DEFAULT_LRS = (0.01, 0.1, 1.0, 10.0)
DEFAULT_WEIGHT_DECAYS = (0.0, 1e-5, 1e-4, 1e-3)
SCHEDULES = ("cosine", "step", "constant")


SELECTION_RULE = ("the cell with the highest val top-1 (the first of equals) is selected; its test top-1, "
                  "of the same classifier (trained on the training rows only), is reported")


@dataclass
class LinearGridResult:
    """``cells``: one dict per classifier: ``lr``, ``weight_decay``, ``standardize``, ``val_top1``,
    ``val_top5`` and, when a test split was given, ``test_top1``, ``test_top5``; ``weight``
    ``(G, D, C)``, ``bias`` ``(G, C)``; ``mean``/``std`` ``(D,)`` of the training rows;
    ``selection``: ``selected_on``, ``scored_on`` (split descriptions) and ``rule``."""

    cells: list[dict]
    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    settings: dict = field(default_factory=dict)
    selection: dict = field(default_factory=dict)

    @property
    def selected(self) -> dict:
        """The cell with the highest val top-1 (the first of equals): never chosen on the test split."""
        return max(self.cells, key=lambda c: c["val_top1"])


def lr_factor(
    schedule: str, epoch: int, epochs: int, milestones: Sequence[int] = (), gamma: float = 0.1
) -> float:
    """Multiplier of the base learning rate during ``epoch`` (0-based)."""
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    if schedule == "step":
        return gamma ** sum(epoch >= m for m in milestones)
    if schedule == "constant":
        return 1.0
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


def initial_classifier(dim: int, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(D, C)`` weight ~ normal(0, 0.01) drawn from ``seed`` and a zero ``(C,)`` bias."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(dim, num_classes, generator=generator) * 0.01, torch.zeros(num_classes)


def _as_tensors(fs: FeatureSet, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    if fs.labels is None:
        raise ValueError("the linear grid needs labelled features (labels is None)")
    return torch.from_numpy(np.array(fs.features[layer], dtype=np.float32)), torch.from_numpy(
        np.asarray(fs.labels, dtype=np.int64))


def train_linear_grid(
    train: FeatureSet,
    val: FeatureSet,
    layer: str = "res5",
    lrs: Sequence[float] = DEFAULT_LRS,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    standardize: Sequence[bool] = (False,),
    epochs: int = 100,
    batch_size: int = 256,
    momentum: float = 0.9,
    schedule: str = "cosine",
    milestones: Sequence[int] = (60, 80),
    gamma: float = 0.1,
    seed: int = 0,
    device: str = "cpu",
    test: FeatureSet | None = None,
    selection: dict | None = None,
) -> LinearGridResult:
    """Trains one classifier per ``(lr, weight_decay, standardize)`` on ``train.features[layer]``
    ``(N, D)``, scores each one's top-1/top-5 (percent) on ``val`` (the selection split) and on
    ``test`` (the reported split, if given). ``val`` must not be the reported split: see the module
    docstring. ``selection``: descriptions of the splits for the report (default ``val``/``test``)."""
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be positive, got {epochs} and {batch_size}")
    lr_factor(schedule, 0, epochs, milestones, gamma)  # rejects an unknown schedule before any work
    x_train, y_train = _as_tensors(train, layer)
    x_val, y_val = _as_tensors(val, layer)
    x_test, y_test = _as_tensors(test, layer) if test is not None else (None, None)
    num_classes = int(max(y.max() for y in (y_train, y_val, y_test) if y is not None)) + 1
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    grid = list(itertools.product(lrs, weight_decays, standardize))
    lr = torch.tensor([g[0] for g in grid], device=device)[:, None, None]
    wd = torch.tensor([g[1] for g in grid], device=device)[:, None, None]
    groups = {flag: [i for i, g in enumerate(grid) if g[2] == flag] for flag in (False, True)}
    groups = {flag: torch.tensor(cells, device=device) for flag, cells in groups.items() if cells}

    w0, b0 = initial_classifier(x_train.shape[1], num_classes, seed)
    weight = w0.expand(len(grid), -1, -1).clone().to(device).requires_grad_()
    bias = b0.expand(len(grid), -1).clone().to(device).requires_grad_()
    momentum_w, momentum_b = torch.zeros_like(weight), torch.zeros_like(bias)
    x_train, y_train, mean, std = x_train.to(device), y_train.to(device), mean.to(device), std.to(device)

    def logits_of(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # (B, D) -> (G, B, C); the standardised cells see (x - mean) / std.
        out = x.new_empty(len(grid), x.shape[0], num_classes)
        for flag, cells in groups.items():
            inputs = (x - mean) / std if flag else x
            out[cells] = torch.einsum("bd,gdc->gbc", inputs, w[cells]) + b[cells][:, None, :]
        return out

    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for epoch in tqdm.trange(epochs, desc="linear grid epochs", mininterval=5, disable=None):
        step_lr = lr * lr_factor(schedule, epoch, epochs, milestones, gamma)
        for rows in torch.randperm(len(x_train), generator=generator).split(batch_size):
            rows = rows.to(device)
            logits = logits_of(x_train[rows], weight, bias)
            targets = y_train[rows].repeat(len(grid))
            # Sum over cells of each cell's mean loss: cell g's gradient is its own classifier's.
            loss = F.cross_entropy(logits.reshape(-1, num_classes), targets, reduction="sum") / len(rows)
            grad_w, grad_b = torch.autograd.grad(loss, (weight, bias))
            with torch.no_grad():  # torch.optim.SGD's update (dampening 0, not nesterov), per cell
                momentum_w.mul_(momentum).add_(grad_w + wd * weight)
                momentum_b.mul_(momentum).add_(grad_b + wd[:, :, 0] * bias)
                weight.sub_(step_lr * momentum_w)
                bias.sub_(step_lr[:, :, 0] * momentum_b)
    train_seconds = time.perf_counter() - start

    def scores_of(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            chunks = [logits_of(rows.to(device), weight, bias) for rows in x.split(4096)]
            return torch.cat(chunks, dim=1).cpu()

    scored = {"val": (scores_of(x_val), y_val)}
    if x_test is not None:
        scored["test"] = (scores_of(x_test), y_test)
    cells = []
    for g, (cell_lr, cell_wd, cell_std) in enumerate(grid):
        cell = {"lr": cell_lr, "weight_decay": cell_wd, "standardize": bool(cell_std)}
        for split, (scores, labels) in scored.items():
            accuracy = topk_accuracy(scores[g].numpy(), labels.numpy())
            cell.update({f"{split}_{k}": v for k, v in accuracy.items()})
        cells.append(cell)
    settings = dict(layer=layer, epochs=epochs, batch_size=batch_size, momentum=momentum, schedule=schedule,
                    milestones=list(milestones), gamma=gamma, seed=seed, num_train=len(x_train),
                    num_val=len(x_val), num_test=None if x_test is None else len(x_test),
                    train_seconds=round(train_seconds, 2))
    selection = {"selected_on": "val", "scored_on": "test" if test is not None else None,
                 "rule": SELECTION_RULE, **(selection or {})}
    result = LinearGridResult(
        cells, weight.detach().cpu(), bias.detach().cpu(), mean.cpu(), std.cpu(), settings, selection
    )
    chosen = result.selected
    logger.info("linear grid of %d cells, %d epochs in %.1f s; selected on %s: val top-1 %.2f, test top-1 %s "
                "(lr %g, wd %g, std %s)", len(grid), epochs, train_seconds, selection["selected_on"],
                chosen["val_top1"], chosen.get("test_top1"), chosen["lr"], chosen["weight_decay"],
                chosen["standardize"])
    return result


def format_grid_table(result: LinearGridResult) -> str:
    """The cells as a text table, in the order of selection (val top-1, highest first)."""
    splits = [s for s in ("val", "test") if f"{s}_top1" in result.cells[0]]
    scores = [f"{s}_{k}" for s in splits for k in ("top1", "top5")]
    rows = sorted(result.cells, key=lambda c: -c["val_top1"])
    return tabulate([[c["lr"], c["weight_decay"], c["standardize"], *(f"{c[k]:.2f}" for k in scores)]
                     for c in rows], headers=["lr", "weight_decay", "standardize", *scores])


def format_selection(result: LinearGridResult) -> str:
    """One line: what was selected on which split, and its number on the reported split."""
    chosen, selection = result.selected, result.selection
    test = f"{chosen['test_top1']:.2f}" if "test_top1" in chosen else "-"
    return (f"selected on {selection['selected_on']}: lr {chosen['lr']:g}, weight_decay "
            f"{chosen['weight_decay']:g}, standardize {chosen['standardize']} (val top-1 "
            f"{chosen['val_top1']:.2f}); test top-1 of that classifier on {selection['scored_on']}: {test}")


def write_grid_report(result: LinearGridResult, output_dir: str) -> dict:
    """Writes ``linear_grid.json`` (settings, ``selected_on``, ``scored_on``, ``rule``, the selected
    cell, every cell) and ``linear_grid.txt`` (the table)."""
    PathManager.mkdirs(output_dir)
    report = {"settings": result.settings, **result.selection, "selected": result.selected,
              "cells": result.cells}
    with PathManager.open(os.path.join(output_dir, "linear_grid.json"), "w") as f:
        json.dump(report, f, indent=2)
    with PathManager.open(os.path.join(output_dir, "linear_grid.txt"), "w") as f:
        f.write(f"{format_selection(result)}\n\n{format_grid_table(result)}\n")
    return report


@dataclass
class SelectionSplits:
    """The rows a grid trains on (``fit``), selects on (``val``) and reports (``test``), and their
    descriptions (``selected_on``, ``scored_on``) for the report."""

    fit: FeatureSet
    val: FeatureSet
    test: FeatureSet
    selection: dict


def add_selection_arguments(parser: argparse.ArgumentParser, scope: str = "") -> None:
    """The command-line options of ``selection_splits`` (tools/linear_grid.py, tools/sweep.py):
    ``--test-split``, ``--val-split``, ``--val-fraction``, ``--val-seed``. ``scope`` prefixes the help
    of the options that apply to cached features only (the sweep's fast path)."""
    parser.add_argument("--test-split", default="test", help=f"{scope}the reported split (never selected on)")
    parser.add_argument("--val-split", default=None,
                        help=f"{scope}an extracted split to select on (default: hold out --val-fraction)")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="fraction of every class of the training data held out for selection")
    parser.add_argument("--val-seed", type=int, default=0, help=f"{scope}seed of the held-out rows")


def selection_splits(
    features_dir: str,
    layer: str = "res5",
    train_split: str = "train",
    test_split: str = "test",
    val_split: str | None = None,
    val_fraction: float = 0.1,
    val_seed: int = 0,
) -> SelectionSplits:
    """Loads cached features and sets the validation rows apart from the reported ones.

    ``val_split``: an extracted split to select on; otherwise ``val_fraction`` of every class of
    ``train_split``, drawn from ``val_seed`` (``d2ssl.data.splits.holdout_indices``, the same cut
    ``holdout_split`` makes of a data set), held out from training. The reported split
    ``test_split`` is never the selection split.
    """
    if val_split is not None and val_split in (train_split, test_split):
        raise ValueError(
            f"the validation split {val_split!r} is the {'test' if val_split == test_split else 'training'} "
            f"split: selecting on it would report an optimistic number. Name another extracted split, or "
            f"leave the validation split out to hold out val_fraction={val_fraction} of {train_split!r}"
        )
    if train_split == test_split:
        raise ValueError(f"the training and test splits are both {train_split!r}: name two different splits")
    train = load_features(features_dir, train_split, (layer,))
    test = load_features(features_dir, test_split, (layer,)).subset(slice(None))
    if val_split is not None:
        fit = train.subset(slice(None))
        val = load_features(features_dir, val_split, (layer,)).subset(slice(None))
        selected_on = f"{val_split} (extracted split)"
    else:
        if train.labels is None:
            raise ValueError(f"{features_dir}: the {train_split!r} features have no labels: the linear grid "
                             f"needs labelled features")
        fit_rows, val_rows = holdout_indices(train.labels, val_fraction, val_seed)
        fit, val = train.subset(fit_rows), train.subset(val_rows)
        selected_on = (f"val: {val_fraction:g} of every class of {train_split!r} held out from training "
                       f"(seed {val_seed}, {len(val_rows)} rows)")
    return SelectionSplits(fit, val, test, {"selected_on": selected_on, "scored_on": test_split})


def linear_grid_on_cached_features(
    features_dir: str,
    train_split: str = "train",
    test_split: str = "test",
    layer: str = "res5",
    output_dir: str | None = None,
    val_split: str | None = None,
    val_fraction: float = 0.1,
    val_seed: int = 0,
    **grid: object,
) -> LinearGridResult:
    """``train_linear_grid`` on what ``extract_features`` wrote to ``features_dir`` (``grid``: its
    keyword arguments), selected on the validation rows of ``selection_splits`` and scored on
    ``test_split``; the report goes to ``output_dir`` (default ``features_dir``)."""
    splits = selection_splits(features_dir, layer, train_split, test_split, val_split, val_fraction, val_seed)
    result = train_linear_grid(splits.fit, splits.val, layer, test=splits.test, selection=splits.selection,
                               **grid)
    write_grid_report(result, output_dir or features_dir)
    return result
