"""Top-1 / top-5 classification accuracy of one or several heads, as a detectron2 ``DatasetEvaluator``.

Used through ``inference_on_dataset`` (and so by detectron2's ``EvalHook``): the model returns, in
eval mode, ``{head_name: (N, num_classes) logits}`` for a batch of mapped dicts carrying ``label``.
With several processes each counts its shard of the validation set and the counts are summed over
ranks (``comm.all_gather``), so every rank returns the same numbers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int]) -> dict[int, int]:
    """Number of rows of ``logits`` ``(N, K)`` whose ``targets`` ``(N,)`` is among the ``k`` highest
    scores, for each ``k`` (``k`` larger than ``K`` counts every row)."""
    largest = min(max(ks), logits.shape[1])
    top = logits.topk(largest, dim=1).indices  # (N, largest)
    hits = top == targets.view(-1, 1)
    return {k: int(hits[:, : min(k, largest)].any(dim=1).sum()) for k in ks}


def topk_accuracy(scores: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                  topk: Sequence[int] = (1, 5)) -> dict[str, float]:
    """``{"top1": %, "top5": %}`` of ``(N, C)`` scores against ``(N,)`` labels (``topk_correct`` in
    percent): kNN votes, the linear grid's cells, the kNN monitor."""
    labels = torch.as_tensor(labels, dtype=torch.int64)
    correct = topk_correct(torch.as_tensor(scores), labels, topk)
    return {f"top{k}": 100.0 * correct[k] / len(labels) for k in topk}


class ClassificationEvaluator(DatasetEvaluator):
    """Accuracy in percent (``top1``, ``top5``) of every head the model returns.

    ``evaluate()`` returns ``{head: {"top1": %, "top5": %}, ...}`` plus, under ``summary_key``
    (default ``"top1"``/``"top5"`` at the top level), the numbers of the head with the highest
    top-1: VISSL reports one top-1 per layer, the best layer is what a sweep compares.
    """

    def __init__(self, topk: Sequence[int] = (1, 5), summarize: bool = True):
        self.topk = tuple(int(k) for k in topk)
        self.summarize = summarize
        self.reset()

    def reset(self) -> None:
        self._correct: dict[str, dict[int, int]] = defaultdict(lambda: dict.fromkeys(self.topk, 0))
        self._count: dict[str, int] = defaultdict(int)

    def process(self, inputs: Sequence[dict], outputs: Mapping[str, torch.Tensor] | torch.Tensor) -> None:
        if isinstance(outputs, torch.Tensor):
            outputs = {"logits": outputs}
        if any("label" not in x for x in inputs):
            raise KeyError("ClassificationEvaluator needs a 'label' in every evaluated data set dict")
        targets = torch.as_tensor([int(x["label"]) for x in inputs])
        for head, logits in outputs.items():
            logits = logits.detach().cpu()
            if logits.shape[0] != len(targets):
                raise ValueError(f"head {head!r} returned {logits.shape[0]} rows for {len(targets)} inputs")
            for k, n in topk_correct(logits, targets, self.topk).items():
                self._correct[head][k] += n
            self._count[head] += len(targets)

    def evaluate(self) -> dict:
        local = {head: (self._count[head], dict(self._correct[head])) for head in self._count}
        totals: dict[str, list] = {}
        for shard in comm.all_gather(local):
            for head, (count, correct) in shard.items():
                total = totals.setdefault(head, [0, dict.fromkeys(self.topk, 0)])
                total[0] += count
                for k, n in correct.items():
                    total[1][k] += n
        results: dict = {}
        for head, (count, correct) in sorted(totals.items()):
            if count:
                results[head] = {f"top{k}": 100.0 * correct[k] / count for k in self.topk}
        if self.summarize and results:
            first = f"top{self.topk[0]}"
            best = max(results, key=lambda h: results[h][first])
            results.update(results[best])
        return results
