"""The kNN monitor: NPID's weighted kNN accuracy of the trunk's features, logged during training.

It is a detectron2 hook that builds on the engine (``d2ssl.engine.hooks``' random-state capture); the
training loop gets it from the config (``train.knn_monitor = L(build_knn_monitor)(...)``, see
``configs/common/train.py``) through ``d2ssl.engine.hooks.instantiate_hook``, so the engine never
imports ``d2ssl.evaluation``.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from detectron2.engine import HookBase
from detectron2.utils import comm

from d2ssl.engine.hooks import capture_random_state, restore_random_state
from d2ssl.evaluation.evaluator import topk_accuracy
from d2ssl.evaluation.features import build_feature_loader, compute_features
from d2ssl.evaluation.knn import NPID_TEMPERATURE, knn_scores

logger = logging.getLogger(__name__)


class KNNMonitor(HookBase):
    """Weighted kNN top-1 (NPID's protocol, ``d2ssl.evaluation.knn``) of the trunk's pooled features,
    every ``period`` iterations and after the last, logged as ``knn_top1``/``knn_top5`` (percent) to
    the trainer's ``EventStorage``, beside the loss.

    ``memory`` (labelled images that vote) and ``queries`` (labelled images classified) are small
    data sets viewed through ``mapper(dict)`` (a deterministic test view). Only the main process
    evaluates, on the unwrapped trunk in eval mode (its train mode is restored after); the loaders
    have their own generators and the random states are restored, so the training's random stream,
    data order and BatchNorm statistics are those of a run without the monitor (exact resume holds).
    """

    def __init__(self, memory: list[dict], queries: list[dict], mapper, period: int, k: int = 200,
                 temperature: float = NPID_TEMPERATURE, layer: str = "res5", batch_size: int = 256):
        if period < 1:
            raise ValueError(f"KNNMonitor period must be a positive number of iterations, got {period}")
        for name, images in (("memory", memory), ("queries", queries)):
            if not images or not all("label" in d for d in images):
                raise ValueError(f"KNNMonitor {name} must be a non-empty, labelled data set")
        if not 1 <= k <= len(memory):
            # Refused before training starts rather than at the first evaluation (knn_scores refuses too).
            raise ValueError(f"KNNMonitor k={k} must be between 1 and the memory set's {len(memory)} images: "
                             f"set train.knn_monitor.k or a larger train.knn_monitor.memory")
        self.period, self.k, self.temperature, self.layer = period, k, temperature, layer
        self.labels = {name: np.array([d["label"] for d in images]) for name, images in
                       (("memory", memory), ("queries", queries))}
        sequential = {name: torch.utils.data.SequentialSampler(images) for name, images in
                      (("memory", memory), ("queries", queries))}
        self.loaders = {name: build_feature_loader(images, mapper, batch_size, sampler=sequential[name])
                        for name, images in (("memory", memory), ("queries", queries))}

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if next_iter % self.period == 0 or next_iter >= self.trainer.max_iter:
            self.evaluate()

    def evaluate(self) -> dict[str, float] | None:
        if not comm.is_main_process():
            return None
        start = time.perf_counter()
        state = capture_random_state()
        try:
            features = {
                name: compute_features(self.trainer.model, loader, None, (self.layer,),
                                       num_images=len(self.labels[name]))[self.layer]
                for name, loader in self.loaders.items()
            }
        finally:
            restore_random_state(state)
        scores = knn_scores(features["memory"], self.labels["memory"], features["queries"], self.k,
                            self.temperature, int(max(map(np.max, self.labels.values()))) + 1)
        accuracy = topk_accuracy(scores, self.labels["queries"])
        self.trainer.storage.put_scalars(knn_top1=accuracy["top1"], knn_top5=accuracy["top5"],
                                         smoothing_hint=False)
        logger.info("kNN monitor at iteration %d: top-1 %.2f (%d memory, %d query images) in %.1f s",
                    self.trainer.iter, accuracy["top1"], len(self.labels["memory"]),
                    len(self.labels["queries"]), time.perf_counter() - start)
        return accuracy


def build_knn_monitor(
    period: int = 0,
    memory: list[dict] | None = None,
    queries: list[dict] | None = None,
    mapper=None,
    k: int = 200,
    temperature: float = NPID_TEMPERATURE,
    layer: str = "res5",
    batch_size: int = 256,
) -> KNNMonitor | None:
    """The ``KNNMonitor`` of a config's ``train.knn_monitor = L(build_knn_monitor)(...)`` (``period`` 0:
    none). ``memory``, ``queries`` and ``mapper`` arrive built (the config's ``L(...)`` calls); ``memory``
    or ``queries`` None (``d2ssl.data.splits.knn_monitor_part`` of unlabelled data): none, with a log line."""
    if not period:
        return None
    if memory is None or queries is None:  # knn_monitor_part: the training data has no labels
        logger.info("kNN monitor off: train.knn_monitor.%s is None (the data set holds images without "
                    "labels, which a kNN score needs)", "memory" if memory is None else "queries")
        return None
    if memory and k > len(memory):
        # The memory follows the training data (knn_monitor_part); a user's small folder holds fewer
        # images than NPID's k 200: every memory image votes, said once here.
        logger.warning("kNN monitor: train.knn_monitor.k=%d but the memory holds %d images: k=%d (all vote)",
                       k, len(memory), len(memory))
        k = len(memory)
    return KNNMonitor(memory=memory, queries=queries, mapper=mapper, period=period, k=k,
                      temperature=temperature, layer=layer, batch_size=batch_size)
