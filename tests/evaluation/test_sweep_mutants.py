"""What the mutation run of d2ssl/evaluation/sweep.py (benchmarks/mutation.py) found the other tests let
through: how many trials a sweep runs and in which folders, what a trial returns, how parameters are
parsed and gridded, what binds a study to what it measured, and what the report selects. The objective
here is a plain function of the values (no training), so each test takes well under a second."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import optuna
import pytest

from d2ssl.evaluation import sweep
from d2ssl.evaluation.sweep import (
    IDENTITY_ATTR,
    Objective,
    SearchParam,
    bind_study,
    file_sha256,
    linear_benchmark_objective,
    parse_param,
    run_sweep,
    study_identity,
    trial_rows,
)

REPO = Path(__file__).resolve().parents[2]


def _objective(identity: dict | None = None, test: float | None = 5.0):
    """An objective whose val top-1 is 10 * x + 0.123456 (x: the swept value); the calls it got."""
    calls: list[tuple[dict, str]] = []

    def run(values: dict, trial_dir: str) -> dict:
        calls.append((dict(values), trial_dir))
        return {"val_top1": 10 * values["x"] + 0.123456, "test_top1": test}

    return Objective(run, identity if identity is not None else {"kind": "fake"}), calls


# ------------------------------------------------------------------ how many trials, where, what they return


def test_n_trials_is_the_number_of_finished_trials_to_reach_not_to_add(tmp_path):
    objective, calls = _objective()
    params = [parse_param("x=1,2,3,4,5,6")]
    assert len(run_sweep(objective, params, str(tmp_path), n_trials=2, sampler="random").trials) == 2
    assert len(run_sweep(objective, params, str(tmp_path), n_trials=3, sampler="random").trials) == 3
    assert len(calls) == 3
    for n_trials in (3, 2):  # reached (or passed): nothing runs
        study = run_sweep(objective, params, str(tmp_path), n_trials=n_trials, sampler="random")
        assert len(study.trials) == 3
    assert len(calls) == 3
    assert [folder for _, folder in calls] == ["trial_0000", "trial_0001", "trial_0002"]


def test_a_trial_is_valued_by_its_val_top1_and_reports_its_test_top1_both_to_4_decimals(tmp_path):
    objective, _ = _objective(test=71.234567)
    study = run_sweep(objective, [parse_param("x=1")], str(tmp_path), n_trials=1, sampler="grid")
    trial = study.trials[0]
    assert trial.value == 10.1235 and trial.user_attrs["test_top1"] == 71.2346
    objective, _ = _objective(test=None)
    study = run_sweep(objective, [parse_param("x=1")], str(tmp_path / "b"), n_trials=1, sampler="grid")
    assert study.trials[0].user_attrs["test_top1"] is None


def test_a_sweep_without_parameters_or_with_an_unknown_sampler_or_tracker_is_refused(tmp_path):
    objective, _ = _objective()
    with pytest.raises(ValueError, match="at least one search parameter"):
        run_sweep(objective, [], str(tmp_path))
    with pytest.raises(ValueError, match=r"sampler must be one of \('grid', 'random', 'tpe'\), got 'bayes'"):
        run_sweep(objective, [parse_param("x=1")], str(tmp_path), sampler="bayes")
    trackers = r"tracker must be one of \('tensorboard', 'wandb'\) or None, got 'mlflow'"
    with pytest.raises(ValueError, match=trackers):
        run_sweep(objective, [parse_param("x=1")], str(tmp_path), tracker="mlflow")


def test_the_grid_sampler_hands_out_the_grid_and_the_others_draw_from_the_range(tmp_path):
    objective, calls = _objective()
    run_sweep(objective, [parse_param("x=0:1")], str(tmp_path / "grid"), n_trials=10, sampler="grid",
              grid_points=3)
    assert sorted(values["x"] for values, _ in calls) == [0.0, 0.5, 1.0]  # exhausted after 3
    for sampler in ("random", "tpe"):
        calls.clear()
        run_sweep(objective, [parse_param("x=0:1")], str(tmp_path / sampler), n_trials=4, sampler=sampler)
        drawn = [values["x"] for values, _ in calls]
        assert len(drawn) == 4 and all(0.0 <= x <= 1.0 for x in drawn) and set(drawn) - {0.0, 0.5, 1.0}


@pytest.mark.parametrize("sampler", ["grid", "random", "tpe"])
def test_a_sweep_is_reproduced_by_its_seed(tmp_path, sampler):
    drawn = []
    for name in ("a", "b"):
        objective, calls = _objective()
        run_sweep(objective, [parse_param("x=0:1"), parse_param("y=1,2,3")], str(tmp_path / name), n_trials=3,
                  sampler=sampler, seed=3)
        drawn.append([values for values, _ in calls])
    assert drawn[0] == drawn[1]


def test_a_killed_trial_is_retried_twice_at_most_after_missing_its_heartbeat(tmp_path):
    # The policy the module docstring promises: a trial whose process died (no heartbeat for 180 s,
    # one every 60 s) is marked failed and retried, at most twice.
    study = sweep._study(str(tmp_path / "sweep.db"), "s", "random", [parse_param("x=1")], 0, 3)
    storage = getattr(study._storage, "_backend", study._storage)
    assert (storage.heartbeat_interval, storage.grace_period) == (60, 180)
    assert storage.failed_trial_callback._max_retry == 2


# ------------------------------------------------------------------ parameters


def test_a_range_grid_is_evenly_or_log_spaced_to_6_significant_digits():
    assert SearchParam("x", 0.0, 1.0).grid(4) == [0.0, 0.333333, 0.666667, 1.0]
    assert SearchParam("x", 1.0, 1000.0, log=True).grid(4) == [1.0, 10.0, 100.0, 1000.0]
    assert SearchParam("x", 2.0, 3.0).grid(1) == [2.0]
    assert SearchParam("x", choices=(8, 16)).grid(5) == [8, 16]


@pytest.mark.parametrize("spec, expected", [
    ("lr=1:2", SearchParam("lr", 1.0, 2.0, False)),
    (" lr = 1e-3:10:log ", SearchParam("lr", 1e-3, 10.0, True)),
    ("bs=64,128", SearchParam("bs", choices=(64, 128))),
    ("m=0.9, 0.99", SearchParam("m", choices=(0.9, 0.99))),
    ("e=1e2,2.0,3", SearchParam("e", choices=(100.0, 2.0, 3))),
    ("name=x", None),
])
def test_parse_param_reads_ranges_and_choices_keeping_integers_integers(spec, expected):
    if expected is None:
        with pytest.raises(ValueError, match=r"search parameter 'name=x': could not convert"):
            parse_param(spec)
        return
    parsed = parse_param(spec)
    assert parsed == expected
    if parsed.choices:
        assert [type(c) for c in parsed.choices] == [type(c) for c in expected.choices]


@pytest.mark.parametrize("spec, why", [
    ("lr", "must be NAME=LOW:HIGH"), ("=1:2", "must be NAME=LOW:HIGH"), ("lr= ", "must be NAME=LOW:HIGH"),
    ("lr=1:2:3:log", "a range is LOW:HIGH or LOW:HIGH:log"), ("lr=1:2:lin", "a range is LOW:HIGH or"),
    ("lr=1", None), ("lr=2:2", "need LOW < HIGH"), ("lr=3:2", "need LOW < HIGH"),
    ("lr=0:1:log", "LOW > 0 on a log scale"), ("lr=-1:1:log", "LOW > 0 on a log scale"),
])
def test_parse_param_refuses_bad_specs_naming_them(spec, why):
    if why is None:  # one value: a choice of one, not an error
        assert parse_param(spec).choices == (1,)
        return
    with pytest.raises(ValueError, match=rf"search parameter {spec!r}.*{why}"):
        parse_param(spec)


def test_a_log_range_starting_above_zero_and_a_linear_one_at_zero_are_fine():
    assert parse_param("lr=0.5:1:log").log and parse_param("wd=0:1").low == 0.0


# ------------------------------------------------------------------ binding a study to what it measures


def _study(tmp_path: Path, name: str = "s") -> optuna.Study:
    return sweep._study(str(tmp_path / "sweep.db"), name, "random", [parse_param("x=1")], 0, 3)


def test_a_new_study_stores_its_identity_and_digest_and_continues_only_for_the_same(tmp_path):
    identity = {"b": (1, 2), "a": {"f": file_sha256}}  # a tuple and a callable, as JSON stores them
    study = _study(tmp_path)
    bind_study(study, identity, "sweep.db")
    stored = study.user_attrs[IDENTITY_ATTR]
    assert stored == {"a": {"f": "d2ssl.evaluation.sweep.file_sha256"}, "b": [1, 2]}
    expected_digest = hashlib.sha256(json.dumps(stored, sort_keys=True).encode()).hexdigest()
    assert study.user_attrs[f"{IDENTITY_ATTR}_sha256"] == expected_digest
    bind_study(_study(tmp_path), {"a": {"f": file_sha256}, "b": (1, 2)}, "sweep.db")  # the same: continues
    differences = (r"Differences: a.f: the study has 'd2ssl.evaluation.sweep.file_sha256', this call 'x'; "
                   r"b: the study has \[1, 2\], this call \[1, 3\]\. Continue it")
    with pytest.raises(ValueError, match=differences):
        bind_study(_study(tmp_path), {"a": {"f": "x"}, "b": (1, 3)}, "sweep.db")
    with pytest.raises(ValueError, match=r"c: the study has None, this call 1"):
        bind_study(_study(tmp_path), {**identity, "c": 1}, "sweep.db")


def test_a_refusal_names_at_most_five_differences(tmp_path):
    bind_study(_study(tmp_path), {str(i): i for i in range(7)}, "sweep.db")
    with pytest.raises(ValueError) as refused:
        bind_study(_study(tmp_path), {str(i): -i - 1 for i in range(7)}, "sweep.db")
    assert str(refused.value).count("the study has") == 5


def test_the_identity_holds_the_objective_the_search_space_and_both_splits():
    objective = Objective(lambda v, d: {}, {"kind": "k"}, selected_on="val part", scored_on="test part")
    assert study_identity(objective, [SearchParam("x", 0.0, 1.0, True)]) == {
        "objective": {"kind": "k"},
        "search_space": [{"name": "x", "low": 0.0, "high": 1.0, "log": True, "choices": None}],
        "selected_on": "val part", "scored_on": "test part"}


def test_the_config_digest_ignores_the_order_of_keys():
    assert sweep._sha256_json({"a": 1, "b": 2}) == sweep._sha256_json({"b": 2, "a": 1})
    assert sweep._sha256_json({"a": 1}) == hashlib.sha256(b'{"a": 1}').hexdigest()


def test_file_sha256_is_the_digest_of_the_whole_file(tmp_path):
    data = bytes(range(256)) * 9000  # over 2 MiB: several reads
    (tmp_path / "w").write_bytes(data)
    assert file_sha256(str(tmp_path / "w")) == hashlib.sha256(data).hexdigest()


def test_the_linear_objective_holds_out_val_only_without_a_split_and_digests_the_weights(tmp_path):
    config = str(REPO / "configs/eval/tiny/linear.py")
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"weights one")
    base = [f"train.weights_init.PARAMS_FILE={weights}"]
    held_out = linear_benchmark_objective(config, base, str(tmp_path), val_fraction=0.3)
    assert held_out.identity["overrides"] == [*base, "dataloader.val.fraction=0.3"]
    assert held_out.selected_on.startswith("val: 0.3 of every class")
    assert held_out.scored_on == "dataloader.test"
    assert held_out.identity["weights_sha256"] == {
        "train.weights_init.PARAMS_FILE": hashlib.sha256(b"weights one").hexdigest()}
    own = linear_benchmark_objective(config, [*base, "dataloader.val.fraction=0.2"], str(tmp_path))
    assert own.identity["overrides"] == [*base, "dataloader.val.fraction=0.2"]  # its own split, kept
    weights.write_bytes(b"weights two")  # the same path, other weights: another identity
    again = linear_benchmark_objective(config, base, str(tmp_path), val_fraction=0.3)
    assert again.identity["weights_sha256"] != held_out.identity["weights_sha256"]
    assert again.identity["config_sha256"] == held_out.identity["config_sha256"]
    missing = linear_benchmark_objective(config, [f"train.weights_init.PARAMS_FILE={tmp_path / 'no'}"],
                                         str(tmp_path))
    assert missing.identity["weights_sha256"] == {}
    assert missing.identity["overrides"][-1] == "dataloader.val.fraction=0.1"  # the default held-out part


# ------------------------------------------------------------------ the report


def test_the_report_selects_the_best_val_trial_and_reports_its_own_test_score(tmp_path):
    calls = []

    def run(values: dict, trial_dir: str) -> dict:
        calls.append(values["x"])
        val, test = {1: (50.0, 90.0), 2: (70.0, 40.0), 3: (60.0, 10.0)}[values["x"]]
        return {"val_top1": val, "test_top1": test}

    study = run_sweep(Objective(run, {"kind": "fake"}, "val rows", "test rows"), [parse_param("x=1,2,3")],
                      str(tmp_path), n_trials=3, sampler="grid")
    report = json.loads((tmp_path / "trials.json").read_text())
    assert report["selected"] == {"number": calls.index(2), "val_top1": 70.0, "test_top1": 40.0, "x": 2}
    assert (report["selected_on"], report["scored_on"]) == ("val rows", "test rows")
    assert report["identity"] == study.user_attrs[IDENTITY_ATTR] and len(report["trials"]) == 3
    rows = list(csv.DictReader((tmp_path / "trials.csv").open()))
    assert list(rows[0]) == ["number", "state", "val_top1", "test_top1", "x", "duration_s"]
    assert all(r["state"] == "COMPLETE" and float(r["duration_s"]) >= 0.0 for r in rows)


def test_a_report_of_no_finished_trial_selects_nothing(tmp_path):
    study = _study(tmp_path)
    study.enqueue_trial({"x": 1})
    study.ask()  # running, never told
    sweep.write_sweep_report(study, [parse_param("x=1")], str(tmp_path))
    report = json.loads((tmp_path / "trials.json").read_text())
    assert report["selected"] is None
    assert [(r["state"], r["duration_s"]) for r in trial_rows(study)] == [("RUNNING", None)]



@pytest.mark.parametrize("name, kind", [("grid", optuna.samplers.GridSampler),
                                        ("random", optuna.samplers.RandomSampler),
                                        ("tpe", optuna.samplers.TPESampler)])
def test_each_sampler_name_gives_that_optuna_sampler(tmp_path, name, kind):
    # TPE draws its first 10 trials at random from the same seed: only the sampler itself tells them apart.
    study = sweep._study(str(tmp_path / "sweep.db"), "s", name, [parse_param("x=1,2")], 0, 3)
    assert type(study.sampler) is kind


def test_a_zoo_name_is_identified_by_the_bytes_of_its_checked_local_copy(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    local = tmp_path / "moco_v2.pth"
    local.write_bytes(b"zoo weights")
    monkeypatch.setattr(sweep, "local_zoo_file", lambda name: str(local) if name == "zoo:moco_v2" else None)
    train = {"weights_init": {"PARAMS_FILE": "zoo:moco_v2"}, "init_checkpoint": None}
    cfg = OmegaConf.create({"train": train})
    assert sweep._weights_digests(cfg) == {
        "train.weights_init.PARAMS_FILE": hashlib.sha256(b"zoo weights").hexdigest()}


def test_a_continued_study_says_how_many_trials_it_had(tmp_path, monkeypatch, caplog):
    import logging

    monkeypatch.setattr(logging.getLogger("d2ssl"), "propagate", True)
    caplog.set_level(logging.INFO, logger="d2ssl.evaluation.sweep")
    objective, _ = _objective()
    run_sweep(objective, [parse_param("x=1,2,3")], str(tmp_path), n_trials=1, sampler="grid", study_name="s")
    assert not any("continuing" in r.getMessage() for r in caplog.records)
    run_sweep(objective, [parse_param("x=1,2,3")], str(tmp_path), n_trials=2, sampler="grid", study_name="s")
    assert any(r.getMessage() == "continuing study 's': 1 of 2 trials finished" for r in caplog.records)


def test_a_search_parameter_cannot_be_changed_after_parsing():
    import dataclasses

    param = parse_param("lr=0.1:1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        param.low = 0.5
    assert {param, parse_param("lr=0.1:1")} == {param}  # hashable: equal specs are one parameter


def test_a_linear_trial_run_again_in_its_folder_resumes_it_and_returns_the_same_scores(tmp_path):
    # What a killed trial's retry does (the heartbeat hands it the killed trial's folder).
    import numpy as np
    from PIL import Image

    from d2ssl.engine.run_folder import release_all_run_folders

    rng = np.random.default_rng(0)
    for k in range(3):
        (tmp_path / "images" / f"class_{k}").mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / f"class_{k}" / f"{i}.png")
    folder = tmp_path / "images"
    overrides = ["train.max_iter=1", "train.eval_period=0", "train.checkpointer.period=1",
                 f"dataloader.train.dataset=folder:{folder}", f"dataloader.test.dataset=folder:{folder}",
                 "dataloader.train.total_batch_size=4", "model.num_classes=null"]
    objective = linear_benchmark_objective(str(REPO / "configs/eval/tiny/linear.py"), overrides,
                                           str(tmp_path / "sweep"), val_fraction=0.5)
    try:
        first = objective({"optimizer.lr": 0.01}, "trial_0000")
        assert objective({"optimizer.lr": 0.01}, "trial_0000") == first
    finally:
        release_all_run_folders()


@pytest.mark.parametrize("val", [None, float("nan"), float("inf")])
def test_a_linear_trial_without_a_finite_val_top1_fails_naming_its_folder(tmp_path, monkeypatch, val):
    objective = linear_benchmark_objective(str(REPO / "configs/eval/tiny/linear.py"), [], str(tmp_path))
    returned = {"top1": 50.0} if val is None else {"top1": 50.0, "val/top1": val}
    monkeypatch.setattr(sweep, "do_linear_benchmark", lambda cfg, resume: returned)
    with pytest.raises(ValueError, match=r"trial_0003: the linear benchmark returned no finite val/top1"):
        objective({"optimizer.lr": 0.01}, "trial_0003")


def test_a_field_that_stops_being_a_mapping_is_a_named_difference(tmp_path):
    bind_study(_study(tmp_path), {"a": {"b": 1}}, "sweep.db")
    with pytest.raises(ValueError, match=r"a: the study has \{'b': 1\}, this call 'x'"):
        bind_study(_study(tmp_path), {"a": "x"}, "sweep.db")
    with pytest.raises(ValueError, match=r"a: the study has \{'b': 1\}, this call None"):
        bind_study(_study(tmp_path), {}, "sweep.db")


def test_the_defaults_are_20_trials_seed_0_and_3_grid_points(tmp_path, monkeypatch):
    # The defaults tools/sweep.py documents (--n-trials 20, --seed 0, --grid-points 3).
    made = []
    real_study = sweep._study
    monkeypatch.setattr(sweep, "_study", lambda *args: made.append(args[-2:]) or real_study(*args))
    objective, calls = _objective()
    params = [parse_param("x=0:1")]
    study = run_sweep(objective, params, str(tmp_path), n_trials=1, sampler="random")
    assert made == [(0, 3)]  # seed 0, and a range's grid of 3 points
    uniform = optuna.distributions.FloatDistribution(0.0, 1.0)
    for value in range(19):  # 20 finished with the one above
        study.add_trial(optuna.trial.create_trial(params={"x": 0.5}, value=float(value),
                                                  distributions={"x": uniform}))
    run_sweep(objective, params, str(tmp_path), sampler="random")
    assert len(calls) == 1  # 20 reached: nothing more to run


def _feature_cache(folder: Path) -> None:
    """A small extracted-features folder: train (400 rows) and test (200 rows) of 2 overlapping classes
    (4-d res5), hard enough that another learning rate or momentum changes the accuracies."""
    import numpy as np

    from d2ssl.evaluation.features import _layer_path, _paths

    for seed, (split, n) in enumerate((("train", 400), ("test", 200))):
        rng = np.random.default_rng(seed)
        labels = np.arange(n) % 2
        paths = _paths(str(folder), split)
        features = rng.normal(size=(n, 4)).astype(np.float32) + 0.5 * labels[:, None]
        np.save(_layer_path(str(folder), split, "res5"), features)
        np.save(paths["labels"], labels.astype(np.int64))
        np.save(paths["indices"], np.arange(n, dtype=np.int64))
        with open(paths["meta"], "w") as f:
            json.dump({"num_images": n, "dims": {"res5": 4}, "layers": ["res5"], "has_labels": True}, f)


def test_the_cached_features_objective_defaults_are_its_identity_and_its_training(tmp_path):
    from d2ssl.evaluation.features import load_features, meta_path
    from d2ssl.evaluation.linear_grid import selection_splits, train_linear_grid

    _feature_cache(tmp_path)
    objective = sweep.cached_features_objective(str(tmp_path))
    splits = selection_splits(str(tmp_path), "res5", "train", "test", None, 0.1, 0)  # val 0.1, seed 0
    assert objective.identity == {
        "kind": "cached_features", "layer": "res5", "epochs": 100, "batch_size": 256, "schedule": "cosine",
        "standardize": False, "seed": 0, "validation": splits.selection["selected_on"],
        "meta_sha256": {s: hashlib.sha256(Path(meta_path(str(tmp_path), s)).read_bytes()).hexdigest()
                        for s in ("train", "test")}}
    assert (objective.selected_on, objective.scored_on) == (splits.selection["selected_on"], "test")
    # A trial sweeping only the epochs trains with lr 0.1, weight decay 0, momentum 0.9, batch 256.
    scores = objective({"epochs": 2}, "trial_0000")
    test = load_features(str(tmp_path), "test", ("res5",))
    result = train_linear_grid(splits.fit, splits.val, "res5", lrs=(0.1,), weight_decays=(0.0,), epochs=2,
                               batch_size=256, momentum=0.9, schedule="cosine", seed=0, test=test,
                               selection=splits.selection)
    assert scores == {"val_top1": result.cells[0]["val_top1"], "test_top1": result.cells[0]["test_top1"]}
