"""Drives d2ssl.evaluation.linear.BestAccuracy without a trainer: a checkpointer that records what it
saves, and a run of evaluations fed to the hook one iteration at a time (shared by the linear tests)."""

from __future__ import annotations

from types import SimpleNamespace

from detectron2.utils.events import EventStorage

from d2ssl.evaluation.linear import BestAccuracy


class RecordedSaves:
    """A checkpointer stand-in: the iterations ``save`` was called at."""

    def __init__(self):
        self.iterations = []

    def save(self, name: str, iteration: int) -> None:
        self.iterations.append(iteration)


def run_evaluations(hook: BestAccuracy, evaluations: list[dict]) -> EventStorage:
    """Puts ``evaluations[i]`` as iteration i's scalars and lets ``hook`` check them; returns the storage."""
    storage = EventStorage()
    hook.trainer = SimpleNamespace(storage=storage)
    for iteration, scalars in enumerate(evaluations):
        storage.iter = iteration
        storage.put_scalars(**scalars, smoothing_hint=False)
        hook._best_checking()
    return storage
