"""What the linear benchmark reports and selects: the last evaluation's test score is the headline;
model_best.pth is chosen on a validation split only; a "best" chosen on test is labelled optimistic.
And the classifier's number of classes comes from, and is checked against, the data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from best_accuracy_driver import RecordedSaves, run_evaluations
from PIL import Image

from d2ssl.engine.train_loop import setup_config
from d2ssl.evaluation.linear import OPTIMISTIC, BestAccuracy, do_linear_benchmark
from d2ssl.evaluation.models import resolve_num_classes

REPO = Path(__file__).resolve().parents[2]
TINY_LINEAR = REPO / "configs/eval/tiny/linear.py"


def test_headline_is_the_last_evaluation_and_a_best_on_test_is_labelled_optimistic():
    saves = RecordedSaves()
    hook = BestAccuracy(1, saves, "top1", save_best=False)  # no validation split
    run_evaluations(hook, [{"top1": 50.0, "fc/top1": 50.0}, {"top1": 60.0, "fc/top1": 60.0},
                            {"top1": 40.0, "fc/top1": 40.0}])
    summary = hook.summary(None)
    assert (summary["top1"], summary["fc/top1"], summary["iteration"]) == (40.0, 40.0, 2)
    assert summary["scored_on"] == "test" and summary["selected_on"] is None
    assert summary["best"]["top1"] == 60.0 and summary["best"]["iteration"] == 1
    assert summary["best"]["label"] == OPTIMISTIC and summary["best"]["selected_on"] == "test"
    assert saves.iterations == [] and summary["best"]["model_best"] is False  # no "best" model chosen on test


def test_model_best_is_selected_on_val_and_reported_by_its_test_score():
    saves = RecordedSaves()
    hook = BestAccuracy(1, saves, "val/top1", save_best=True)
    # (val, test): the test winner (iteration 2, 80) is not the val winner (iteration 1, val 60).
    run_evaluations(hook, [{"val/top1": 50.0, "top1": 70.0}, {"val/top1": 60.0, "top1": 55.0},
                            {"val/top1": 40.0, "top1": 80.0}])
    summary = hook.summary("val: 0.1 of every class")
    assert summary["top1"] == 80.0 and summary["val/top1"] == 40.0  # the headline: last evaluation
    best = summary["best"]
    assert (best["iteration"], best["val/top1"], best["top1"]) == (1, 60.0, 55.0)
    assert best["selected_on"] == "val: 0.1 of every class" and best["scored_on"] == "test"
    assert saves.iterations == [0, 1]  # model_best.pth follows the val score only
    # Resumed from a checkpoint, the hook reports the same.
    again = BestAccuracy(1, RecordedSaves(), "val/top1")
    again.load_state_dict(hook.state_dict())
    assert again.summary("val: 0.1 of every class") == summary


def test_num_classes_is_inferred_from_the_union_of_the_data_sets_and_checked():
    train = [{"label": y} for y in (0, 1, 2, 4)]  # a 1 % subset may miss classes (3 here) ...
    test = [{"label": y} for y in range(5)]  # ... that the test split has
    assert resolve_num_classes(None, {"train": train, "test": test}) == 5
    assert resolve_num_classes("auto", {"train": train, "test": test}) == 5
    assert resolve_num_classes(5, {"train": train, "test": test}) == 5
    with pytest.raises(ValueError, match=r"model.num_classes=10 but the data sets have 5 classes"):
        resolve_num_classes(10, {"train": train, "test": test})
    with pytest.raises(ValueError, match=r"labels \[3\] of 0..4 are the label of no image"):
        resolve_num_classes(None, {"train": train, "test": train})


def _class_folder(root: Path, classes: int, per_class: int, seed: int = 0, shift: int = 0) -> str:
    """Random 16 px photos, ``per_class`` in each class folder; ``shift`` files the photos drawn for
    class ``k`` under class ``k + shift`` (the same photos with other labels)."""
    rng = np.random.default_rng(seed)
    for k in range(classes):
        folder = root / f"class_{(k + shift) % classes}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return str(root)


def _eight_class_config(tmp_path: Path, num_classes: str):
    folder = _class_folder(tmp_path / "images", classes=8, per_class=2)
    return setup_config(str(TINY_LINEAR), [
        f"train.output_dir={tmp_path / 'run'}", "train.max_iter=1", "train.eval_period=0",
        "train.checkpointer.period=1", f"dataloader.train.dataset=folder:{folder}",
        f"dataloader.test.dataset=folder:{folder}", "dataloader.train.total_batch_size=4",
        f"model.num_classes={num_classes}",
    ])


def test_a_10_way_classifier_on_8_classes_is_refused_before_training(tmp_path):
    cfg = _eight_class_config(tmp_path, "10")
    with pytest.raises(ValueError, match=r"model.num_classes=10 but the data sets have 8 classes") as error:
        do_linear_benchmark(cfg)
    assert "model.num_classes=null" in str(error.value)
    assert not (tmp_path / "run" / "model_final.pth").exists()


def test_num_classes_null_trains_a_classifier_of_the_data_sets_classes(tmp_path):
    cfg = _eight_class_config(tmp_path, "null")
    do_linear_benchmark(cfg)
    final = torch.load(tmp_path / "run" / "model_final.pth", map_location="cpu", weights_only=True)
    assert final["model"]["heads.fc.linear.weight"].shape[0] == 8


def test_an_explicit_validation_set_selects_model_best_and_the_head(tmp_path):
    """Seven VISSL heads, a validation folder apart from the test folder: model_best.pth and the
    top-level top1 (which head) are chosen on the validation images, reported on the test images."""
    train = _class_folder(tmp_path / "train", classes=4, per_class=8, seed=0)
    # The validation photos are the test photos with other labels: heads rank differently on the two.
    test = _class_folder(tmp_path / "test", classes=4, per_class=8, seed=1)
    val = _class_folder(tmp_path / "val", classes=4, per_class=8, seed=1, shift=1)
    cfg = setup_config(str(REPO / "configs/eval/tiny/linear_vissl.py"), [
        f"train.output_dir={tmp_path / 'run'}", "train.max_iter=2", "train.eval_period=1",
        "train.checkpointer.period=2", f"dataloader.train.dataset=folder:{train}",
        f"dataloader.test.dataset=folder:{test}", f"dataloader.val.dataset=folder:{val}",
        "dataloader.train.total_batch_size=4", "model.num_classes=null",
    ])
    results = do_linear_benchmark(cfg)
    assert results["selected_on"] == "dataloader.val.dataset"
    assert (tmp_path / "run" / "model_best.pth").exists()
    heads = sorted(k.split("/")[1] for k in results if k.startswith("val/") and k.endswith("/top1")
                   and k.count("/") == 2)
    assert len(heads) == 7
    chosen = max(heads, key=lambda h: results[f"val/{h}/top1"])
    assert results["top1"] == results[f"{chosen}/top1"] and "highest val top-1" in results["head_rule"]
    assert results["top1"] < max(results[f"{h}/top1"] for h in heads)  # not the best head on test
    cfg.dataloader.val.fraction = 0.5
    with pytest.raises(ValueError, match="both set"):
        do_linear_benchmark(cfg)
