"""Logging scalars to detectron2's ``EventStorage`` from anywhere in a model."""

from __future__ import annotations

import torch
from detectron2.utils.events import get_event_storage


def log_metrics(**metrics: float | torch.Tensor) -> None:
    """Puts scalars into the current ``EventStorage`` (log, metrics.json, TensorBoard); a no-op
    outside a trainer, so models and losses run unchanged in tests and scripts."""
    try:
        storage = get_event_storage()
    except AssertionError:
        return
    storage.put_scalars(**{k: float(v) for k, v in metrics.items()})
