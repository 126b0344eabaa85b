"""What the mutation run of d2ssl/evaluation/linear.py (benchmarks/mutation.py) found the other tests let
through: which evaluation is the best (ties, NaN), which scalars are this evaluation's accuracies, what
the summary says of heads and model_best.pth, what a config selects on, and what is held out for it."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from best_accuracy_driver import RecordedSaves, run_evaluations
from detectron2.utils.events import EventStorage
from omegaconf import OmegaConf
from PIL import Image

from d2ssl.data.splits import holdout_split
from d2ssl.engine.train_loop import setup_config
from d2ssl.evaluation import linear
from d2ssl.evaluation.linear import (
    OPTIMISTIC,
    SELECTED_ON_VAL,
    BestAccuracy,
    EvaluationHooks,
    _BestFileCheckpointer,
    validation_source,
    write_summary,
)

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ which evaluation is the best


def test_of_equal_val_scores_the_first_stays_the_best():
    saves = RecordedSaves()
    hook = BestAccuracy(1, saves, "val/top1")
    run_evaluations(hook, [{"val/top1": 50.0, "top1": 10.0}, {"val/top1": 50.0, "top1": 90.0}])
    assert (hook.best_iter, hook.best_results["top1"]) == (0, 10.0)
    assert saves.iterations == [0]  # model_best.pth is not rewritten for a tie


def test_a_nan_score_is_never_the_best_and_does_not_block_a_later_one():
    saves = RecordedSaves()
    hook = BestAccuracy(1, saves, "val/top1")
    run_evaluations(hook, [{"val/top1": float("nan"), "top1": 99.0}, {"val/top1": 20.0, "top1": 30.0},
                     {"val/top1": float("nan"), "top1": 98.0}])
    assert (hook.best_iter, hook.best_metric, hook.best_results["top1"]) == (1, 20.0, 30.0)
    assert saves.iterations == [1]
    assert hook.last_iter == 2 and hook.last_results["top1"] == 98.0  # the headline is still the last


def test_an_evaluation_without_the_selection_metric_is_an_error_naming_it_and_what_was_logged():
    hook = BestAccuracy(1, RecordedSaves(), "val/top1")
    with pytest.raises(KeyError, match=r"no 'val/top1'.*\['fc/top1', 'top1'\]"):
        run_evaluations(hook, [{"top1": 50.0, "fc/top1": 50.0}])


def test_the_results_are_this_evaluations_accuracies_only():
    hook = BestAccuracy(1, RecordedSaves(), "top1", save_best=False)
    storage = EventStorage()
    hook.trainer = SimpleNamespace(storage=storage)
    storage.iter = 0
    storage.put_scalars(**{"top1": 10.0, "old/top5": 70.0}, smoothing_hint=False)  # only logged at 0
    hook._best_checking()
    storage.iter = 1
    storage.put_scalars(**{"top1": 20.0, "fc/top1": 20.0, "total_loss": 1.5, "lr": 0.1,
                           "val/fc/top5": 66.0}, smoothing_hint=False)
    hook._best_checking()
    assert hook.last_results == {"top1": 20.0, "fc/top1": 20.0, "val/fc/top5": 66.0}
    assert hook.best_results == hook.last_results and hook.last_iter == 1


# ------------------------------------------------------------------ what the summary says


def _summary(scalars: dict, selected_on: str | None) -> dict:
    hook = BestAccuracy(1, RecordedSaves(), "val/top1" if selected_on else "top1",
                        save_best=bool(selected_on))
    run_evaluations(hook, [scalars])
    return hook.summary(selected_on)


def test_the_head_rule_is_said_only_with_several_heads_and_names_the_split_that_chose_the_head():
    one = {"top1": 50.0, "fc/top1": 50.0, "val/top1": 40.0, "val/fc/top1": 40.0}
    assert "head_rule" not in _summary(one, "dataloader.val.dataset")
    two = {**one, "conv1/top1": 30.0, "val/conv1/top1": 45.0}
    assert "highest val top-1" in _summary(two, "dataloader.val.dataset")["head_rule"]
    on_test = {"top1": 50.0, "fc/top1": 50.0, "conv1/top1": 30.0}
    assert "highest test top-1 (optimistic" in _summary(on_test, None)["head_rule"]


def test_the_best_is_labelled_by_the_split_it_was_selected_on():
    on_val = _summary({"top1": 50.0, "val/top1": 40.0}, "dataloader.val.dataset")["best"]
    assert (on_val["label"], on_val["selected_on"], on_val["model_best"]) == (
        SELECTED_ON_VAL, "dataloader.val.dataset", True)
    on_test = _summary({"top1": 50.0}, None)["best"]
    assert (on_test["label"], on_test["selected_on"], on_test["model_best"]) == (OPTIMISTIC, "test", False)


def test_before_any_evaluation_no_model_best_is_claimed():
    summary = BestAccuracy(1, RecordedSaves(), "val/top1").summary("dataloader.val.dataset")
    assert summary["best"]["model_best"] is False and summary["iteration"] is None


def test_a_checkpoint_written_before_the_last_results_were_kept_resumes_with_none():
    hook = BestAccuracy(1, RecordedSaves(), "top1")
    hook.load_state_dict({"best_metric": 60.0, "best_iter": 4, "best_results": {"top1": 60.0}})
    assert (hook.last_results, hook.last_iter, hook.best_metric, hook.best_iter) == ({}, None, 60.0, 4)


def test_model_best_is_written_without_moving_the_resume_point(tmp_path):
    from torch import nn

    from d2ssl.engine.run_folder import Run

    model = nn.Linear(2, 2)
    run = Run("f" * 32, str(tmp_path))
    linear.AtomicCheckpointer(model, str(tmp_path), run=run).save("model_0000004", iteration=4)
    _BestFileCheckpointer(model, str(tmp_path), run=run).save("model_best", iteration=4)
    assert (tmp_path / "model_best.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000004.pth"


def test_write_summary_writes_the_summary_as_json(tmp_path):
    summary = {"top1": 12.5, "best": {"label": OPTIMISTIC, "iteration": None}}
    write_summary(summary, str(tmp_path / "made"))
    assert json.loads((tmp_path / "made" / "summary.json").read_text()) == summary


# ------------------------------------------------------------------ what a config selects on


def _val(**val) -> object:
    return OmegaConf.create({"dataloader": {"val": val}} if val else {"dataloader": {}})


def test_the_validation_source_of_each_kind_of_config():
    assert validation_source(_val()) is None
    assert validation_source(_val(dataset=None, fraction=0.0)) is None
    assert validation_source(_val(dataset="folder:/x")) == "dataloader.val.dataset"
    assert validation_source(_val(dataset="folder:/x", fraction=0)) == "dataloader.val.dataset"
    assert validation_source(_val(fraction=0.25, seed=3)) == (
        "val: 0.25 of every class of dataloader.train.dataset held out from training (seed 3)")
    assert validation_source(_val(fraction=0.1)).endswith("(seed 0)")
    both = r"dataloader.val.dataset and dataloader.val.fraction=0.5 are both set"
    with pytest.raises(ValueError, match=both):
        validation_source(_val(dataset="folder:/x", fraction=0.5))


def _class_folder(root: Path, classes: int, per_class: int) -> str:
    rng = np.random.default_rng(0)
    for k in range(classes):
        (root / f"class_{k}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class_{k}/{i}.png")
    return str(root)


def test_prepare_holds_out_the_configured_fraction_and_seed_of_the_training_data(tmp_path):
    folder = _class_folder(tmp_path / "images", classes=3, per_class=10)
    cfg = setup_config(str(REPO / "configs/eval/tiny/linear.py"), [
        f"train.output_dir={tmp_path / 'run'}", f"dataloader.train.dataset=folder:{folder}",
        f"dataloader.test.dataset=folder:{folder}", "dataloader.val.fraction=0.2", "dataloader.val.seed=5",
        "model.num_classes=null"])
    training = [{"file_name": f"{k}/{i}", "label": k, "image_id": 10 * k + i}
                for k in range(3) for i in range(10)]
    hooks = EvaluationHooks(cfg)
    fit = hooks.prepare(cfg, training)
    expected_fit, expected_val = holdout_split(training, 0.2, 5)
    assert (fit, hooks.val_dataset) == (expected_fit, expected_val)
    held_out = {d["image_id"] for d in hooks.val_dataset}
    assert len(held_out) == 6 and not {d["image_id"] for d in fit} & held_out
    assert cfg.model.num_classes == 3 and len(hooks.test_dataset) == 30


def test_hooks_with_a_validation_split_refuse_to_run_without_prepare(tmp_path):
    cfg = setup_config(str(REPO / "configs/eval/tiny/linear.py"), [
        f"train.output_dir={tmp_path / 'run'}", "dataloader.val.fraction=0.2"])
    with pytest.raises(RuntimeError, match="prepare was not called"):
        EvaluationHooks(cfg)(trainer=None, model=None, checkpointer=None)


def _folder_config(tmp_path: Path, *overrides: str):
    images = tmp_path / "images"
    folder = str(images) if images.exists() else _class_folder(images, classes=3, per_class=4)
    return setup_config(str(REPO / "configs/eval/tiny/linear.py"), [
        f"train.output_dir={tmp_path / 'run'}", "train.max_iter=1", "train.eval_period=0",
        "train.checkpointer.period=1", f"dataloader.train.dataset=folder:{folder}",
        f"dataloader.test.dataset=folder:{folder}", "dataloader.train.total_batch_size=4",
        "model.num_classes=null", *overrides])


def test_hooks_built_without_prepare_evaluate_on_the_configs_test_data_set(tmp_path):
    from torch import nn

    cfg = _folder_config(tmp_path)
    hooks = EvaluationHooks(cfg)
    trainer = SimpleNamespace(state_dict=dict, load_state_dict=lambda state: None)
    built = hooks(trainer=trainer, model=nn.Linear(2, 2), checkpointer=SimpleNamespace(allow_pickle=False))
    assert len(hooks.test_dataset) == 12 and built[-1] is hooks.best
    assert hooks.best._val_metric == "top1" and hooks.best.save_best is False  # no validation split


def test_a_second_benchmark_into_the_same_folder_does_not_resume_unless_asked(tmp_path):
    from d2ssl.engine.run_folder import release_all_run_folders

    try:
        linear.do_linear_benchmark(_folder_config(tmp_path))
        with pytest.raises(Exception, match=r"--resume.*--start-over"):
            linear.do_linear_benchmark(_folder_config(tmp_path))
    finally:
        release_all_run_folders()


def test_announcing_a_config_with_weights_says_nothing_and_without_warns(tmp_path, monkeypatch, caplog):
    import logging

    monkeypatch.setattr(logging.getLogger("d2ssl"), "propagate", True)
    linear.announce_trunk_source(_folder_config(tmp_path, f"train.init_checkpoint={tmp_path / 'w.pth'}"))
    assert caplog.records == []
    linear.announce_trunk_source(_folder_config(tmp_path / "b"))
    # One warning, counted by message: after other tests in the same process the record can reach the
    # capture twice (a handler detectron2's setup_logger left on a parent logger), which is not the point.
    warnings = {(r.levelname, r.getMessage()) for r in caplog.records}
    assert len(warnings) == 1 and "RANDOM trunk" in next(iter(warnings))[1]
    assert next(iter(warnings))[0] == "WARNING"


@pytest.mark.parametrize("eval_period, expected", [("5", 5), ("0", 0), ("absent", 0)])
def test_the_evaluation_runs_every_eval_period_or_only_at_the_end(tmp_path, eval_period, expected):
    from torch import nn

    cfg = _folder_config(tmp_path, f"train.eval_period={0 if eval_period == 'absent' else eval_period}")
    if eval_period == "absent":  # a config of its own without the key
        del cfg.train["eval_period"]
    trainer = SimpleNamespace(state_dict=dict, load_state_dict=lambda state: None)
    built = EvaluationHooks(cfg)(trainer=trainer, model=nn.Linear(2, 2),
                                 checkpointer=SimpleNamespace(allow_pickle=False))
    assert [hook._period for hook in built] == [expected, expected]  # 0: after the last iteration only


def test_a_held_out_fraction_without_a_seed_is_drawn_from_seed_0(tmp_path):
    cfg = _folder_config(tmp_path, "dataloader.val.fraction=0.5")
    training = [{"file_name": f"{k}/{i}", "label": k, "image_id": 10 * k + i}
                for k in range(3) for i in range(10)]
    hooks = EvaluationHooks(cfg)
    assert hooks.selected_on.endswith("(seed 0)")
    fit = hooks.prepare(cfg, training)
    assert (fit, hooks.val_dataset) == holdout_split(training, 0.5, 0)
    assert holdout_split(training, 0.5, 0) != holdout_split(training, 0.5, 1)  # the seed matters here
