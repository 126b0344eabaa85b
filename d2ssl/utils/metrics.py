"""Reading what a run logged (detectron2's ``metrics.json``) for reports and the demo."""

from __future__ import annotations

import json
import os

from detectron2.utils.file_io import PathManager


def read_metrics(output_dir: str) -> list[dict]:
    """The records of ``output_dir/metrics.json`` (one dict per logged iteration)."""
    path = os.path.join(output_dir, "metrics.json")
    if not PathManager.exists(path):
        raise FileNotFoundError(f"no metrics.json in {output_dir!r}: has the run written any log period?")
    with PathManager.open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def metric_trajectory(output_dir: str, key: str) -> tuple[float, float]:
    """``(first, last)`` logged values of ``key`` in a run, e.g. a pretext accuracy."""
    values = [r[key] for r in read_metrics(output_dir) if key in r]
    if not values:
        raise KeyError(f"metric {key!r} was never logged in {output_dir!r}/metrics.json")
    return values[0], values[-1]
