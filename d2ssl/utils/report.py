"""The table the demo prints: what each pretraining run learned and where its files are."""

from __future__ import annotations

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


def detection_rows(demo_dir: str) -> list[list]:
    """One row per ``detection*`` run folder: the COCO box AP/AP50 of its last evaluation."""
    rows = []
    for name in sorted(os.listdir(demo_dir)):
        run = os.path.join(demo_dir, name)
        if not name.startswith("detection") or not os.path.isdir(run):
            continue
        try:
            evals = [r for r in read_metrics(run) if "bbox/AP" in r]
        except FileNotFoundError:
            evals = []
        if not evals:
            rows.append([name, "-", "-", "-", run])
            continue
        last = evals[-1]
        rows.append([name, last["iteration"], f"{last['bbox/AP']:.1f}", f"{last['bbox/AP50']:.1f}", run])
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
    return f"Pretraining\n{pretraining}\n\nDetection transfer (COCO evaluation)\n{detection}"
