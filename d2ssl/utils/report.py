"""The table the demo prints: what each pretraining run learned and where its files are."""

from __future__ import annotations

import glob
import json
import os

from omegaconf import OmegaConf
from tabulate import tabulate

from d2ssl.utils.metrics import metric_trajectory, read_metrics

# Pretext metric each meta-architecture logs, and its chance level (None: no fixed chance level).
PRETEXT_METRICS: dict[str, tuple[str, float | None]] = {
    "jigsaw": ("jigsaw_accuracy", 1 / 24),
    "rotnet": ("rotnet_accuracy", 1 / 4),
    # Positive scored above all K negatives; chance 1 / (K + 1) depends on the run's K.
    "pirl": ("nce_top1_image", None),
    "npid": ("nce_top1", None),
    "jigclu": ("jigclu_location_accuracy", 1 / 4),
}


def nce_chance(run_dir: str) -> float | None:
    """``1 / (K + 1)``: the top-1 chance level of an NCE run with K negatives (from its config.yaml)."""
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(path):
        return None
    key = "model.loss.negative_sampling_params.num_negatives"
    num_negatives = OmegaConf.select(OmegaConf.load(path), key)
    return None if num_negatives is None else 1.0 / (num_negatives + 1)


def pretraining_rows(demo_dir: str) -> list[list]:
    """One row per run folder of ``demo_dir`` named after a method: metric, first, last, chance."""
    rows = []
    for method, (key, chance) in PRETEXT_METRICS.items():
        run = os.path.join(demo_dir, method)
        if not os.path.isdir(run):
            continue
        try:
            first, last = metric_trajectory(run, key)
        except (FileNotFoundError, KeyError) as e:
            rows.append([method, key, "-", "-", "-", f"({e})"])
            continue
        if chance is None:
            chance = nce_chance(run)
        rows.append([method, key, f"{first:.3f}", f"{last:.3f}",
                     "-" if chance is None else f"{chance:.3f}", run])
    return rows


def _final_box_ap(run: str) -> tuple[float, float] | None:
    try:
        evals = [r for r in read_metrics(run) if "bbox/AP" in r]
    except FileNotFoundError:
        return None
    return (evals[-1]["bbox/AP"], evals[-1]["bbox/AP50"]) if evals else None


def detection_rows(demo_dir: str) -> list[list]:
    """One row per ``detection*`` run folder: the COCO box AP/AP50 of its last evaluation."""
    rows = []
    for name in sorted(os.listdir(demo_dir)):
        run = os.path.join(demo_dir, name)
        if not name.startswith("detection") or not os.path.isdir(run):
            continue
        final = _final_box_ap(run)
        if final is None:
            rows.append([name, "-", "-", "-", run])
            continue
        last_iter = [r for r in read_metrics(run) if "bbox/AP" in r][-1]["iteration"]
        rows.append([name, last_iter, f"{final[0]:.1f}", f"{final[1]:.1f}", run])
    return rows


def _read_json(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _evaluation(features_dir: str) -> tuple[float | None, float | None]:
    """(fast-path linear top-1 of the best grid cell, kNN top-1 at k=20) written under ``features_dir``
    by ``tools/linear_grid.py`` and ``tools/knn_eval.py``."""
    grid = _read_json(os.path.join(features_dir, "linear_grid.json"))
    knn_files = sorted(glob.glob(os.path.join(features_dir, "knn_*.json")))  # knn_<layer>.json
    knn = _read_json(knn_files[0]) if knn_files else None
    return (grid["best"]["top1"] if grid else None), (knn.get("top1@20") if knn else None)


def _pair(pretrained: float | None, random: float | None) -> str:
    if pretrained is None or random is None:
        return "-"
    return f"{pretrained:.1f} vs {random:.1f} ({pretrained - random:+.1f})"


def transfer_rows(demo_dir: str) -> list[list]:
    """What pretraining bought, one row per pretraining run that was evaluated: its pretext metric
    (last value and chance), then linear top-1, kNN top-1 and box AP of the pretrained trunk against a
    randomly initialised trunk of the same architecture under the same evaluation.

    Reads ``eval/<method>/`` and ``eval/<method>_random/`` (features, ``linear_grid.json``,
    ``knn_<layer>.json``; the demo links ``<method>_random`` to the random trunk seen at that method's
    image size), and ``detection_<method>/`` and ``detection_random/`` (COCO box AP).
    """
    eval_dir = os.path.join(demo_dir, "eval")
    methods = sorted(m for m in (os.listdir(eval_dir) if os.path.isdir(eval_dir) else [])
                     if "random" not in m and os.path.isdir(os.path.join(eval_dir, m)))
    pretext = {row[0]: row for row in pretraining_rows(demo_dir)}
    random_ap = _final_box_ap(os.path.join(demo_dir, "detection_random"))
    rows = []
    for method in methods:
        linear, knn = _evaluation(os.path.join(eval_dir, method))
        linear_random, knn_random = _evaluation(os.path.join(eval_dir, f"{method}_random"))
        row = pretext.get(method)
        metric = f"{row[1]} {row[3]} (chance {row[4]})" if row else "-"
        ap = _final_box_ap(os.path.join(demo_dir, f"detection_{method}"))
        rows.append([method, metric, _pair(linear, linear_random), _pair(knn, knn_random),
                     _pair(ap[0] if ap else None, random_ap[0] if random_ap else None)])
    return rows


def format_report(demo_dir: str) -> str:
    pretraining = tabulate(
        pretraining_rows(demo_dir), headers=["method", "pretext metric", "first", "last", "chance", "output"],
        tablefmt="github", disable_numparse=True,
    )
    detection = tabulate(
        detection_rows(demo_dir), headers=["detection fine-tune", "iterations", "box AP", "AP50", "output"],
        tablefmt="github", disable_numparse=True,
    )
    text = f"Pretraining\n{pretraining}\n\nDetection transfer (COCO evaluation)\n{detection}"
    transfer = transfer_rows(demo_dir)
    if transfer:
        table = tabulate(
            transfer,
            headers=["method", "pretext metric (last)", "linear top-1: pretrained vs random",
                     "kNN top-1 (k 20): pretrained vs random", "box AP: pretrained vs random"],
            tablefmt="github", disable_numparse=True,
        )
        title = "What pretraining bought (same evaluation; random: a random trunk of the same architecture)"
        text += f"\n\n{title}\n{table}"
    return text
