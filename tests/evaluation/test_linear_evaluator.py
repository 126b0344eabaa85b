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


LOGITS = torch.tensor([[3.0, 2, 1, 0, -1, -2], [0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [0, 0, 9, 0, 0, 0]])
LABELS = [0, 4, 5, 2]  # ranks 1, 2, 6, 1: top-1 2/4, top-5 3/4


def _evaluate_shard(out_dir) -> None:
    from detectron2.utils import comm

    rank = comm.get_rank()
    evaluator = ClassificationEvaluator()
    # Shards of unequal size, as InferenceSampler gives when the data set does not divide.
    shard = [0] if rank == 0 else [1, 2, 3]
    evaluator.process([{"label": LABELS[i]} for i in shard], {"fc": LOGITS[shard]})
    torch.save(evaluator.evaluate(), f"{out_dir}/rank{rank}.pth")


def test_counts_of_all_processes_are_summed_on_every_rank(tmp_path):
    from d2ssl.engine.launch import launch_processes

    launch_processes(_evaluate_shard, 2, dist_url="auto", args=(str(tmp_path),), device="cpu")
    expected = {"top1": 50.0, "top5": 75.0}
    for rank in (0, 1):
        results = torch.load(tmp_path / f"rank{rank}.pth", weights_only=True)
        assert results["fc"] == pytest.approx(expected) and results["top1"] == 50.0
