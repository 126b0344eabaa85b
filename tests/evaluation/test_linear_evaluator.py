"""The top-1/top-5 DatasetEvaluator against a hand computation."""

from __future__ import annotations

import pytest
import torch

from d2ssl.evaluation.evaluator import ClassificationEvaluator, topk_correct


def test_topk_counts_match_a_hand_computation():
    logits = torch.tensor([
        [0.9, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0],  # label 0: rank 1
        [0.1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.0],  # label 5: rank 5
        [0.1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.0],  # label 6: rank 7
        [0.0, 0.0, 0.3, 0.0, 0.0, 0.0, 0.0],  # label 2: rank 1
    ])
    assert topk_correct(logits, torch.tensor([0, 5, 6, 2]), (1, 5)) == {1: 2, 5: 3}


def test_evaluator_accumulates_batches_per_head_and_summarizes_the_best():
    evaluator = ClassificationEvaluator(topk=(1, 5))
    evaluator.reset()
    eye = torch.eye(6)
    # Head "good" predicts each label, head "bad" the next label (wrong at top-1, right at top-2).
    batches = [[0, 1, 2], [3, 4, 5, 0]]
    for labels in batches:
        inputs = [{"label": y} for y in labels]
        good = eye[labels]
        bad = eye[[(y + 1) % 6 for y in labels]] + 0.5 * eye[labels]
        evaluator.process(inputs, {"good": good, "bad": bad})
    # One more batch where "good" misses everything at top-5 (label ranks last among 6).
    evaluator.process([{"label": 5}], {"good": torch.tensor([[6.0, 5, 4, 3, 2, 1]]),
                                       "bad": torch.tensor([[0.0, 0, 0, 0, 1, 2]])})
    results = evaluator.evaluate()
    assert results["good"] == pytest.approx({"top1": 100 * 7 / 8, "top5": 100 * 7 / 8})
    assert results["bad"] == pytest.approx({"top1": 100 * 1 / 8, "top5": 100.0})
    assert results["top1"] == results["good"]["top1"] and results["top5"] == results["good"]["top5"]
    evaluator.reset()
    assert evaluator.evaluate() == {}


def test_evaluator_needs_labels():
    evaluator = ClassificationEvaluator()
    with pytest.raises(KeyError, match="label"):
        evaluator.process([{"image_id": 0}], {"fc": torch.zeros(1, 3)})
