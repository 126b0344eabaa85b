"""The table the demo prints: what each pretraining run learned and where its files are."""

from __future__ import annotations

import os

from tabulate import tabulate

from d2ssl.utils.metrics import metric_trajectory

# Pretext metric each meta-architecture logs, and its chance level (None: no fixed chance level).
PRETEXT_METRICS: dict[str, tuple[str, float | None]] = {
    "jigsaw": ("jigsaw_accuracy", 1 / 24),
    "rotnet": ("rotation_accuracy", 1 / 4),
    "pirl": ("nce_positive_rank_accuracy", None),
    "npid": ("nce_positive_rank_accuracy", None),
    "jigclu": ("location_accuracy", 1 / 4),
}


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
        rows.append([method, key, f"{first:.3f}", f"{last:.3f}",
                     "-" if chance is None else f"{chance:.3f}", run])
    return rows


def format_report(demo_dir: str) -> str:
    headers = ["method", "pretext metric", "first", "last", "chance", "output"]
    return tabulate(pretraining_rows(demo_dir), headers=headers, tablefmt="github")
