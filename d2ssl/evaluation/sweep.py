"""Hyper-parameter sweeps of linear benchmarks with Optuna, local and account-free.

The study lives in an SQLite file (``{output_dir}/sweep.db``): a second invocation with the same
output folder and study name continues it (``n_trials`` is the number of finished trials to reach,
not a number to add), and several processes pointed at the same file share it. A trial killed with
its process is marked failed by Optuna's heartbeat when the next process starts, and retried with the
same values (``RetryHeartbeatStaleTrialCallback``), in the killed trial's folder, where a full benchmark
resumes from its last checkpoint.

A parameter is ``NAME=SPEC``: ``1e-3:10:log`` (log-uniform float), ``0:0.1`` (uniform float) or
``64,128,256`` (categorical). Samplers: ``grid`` (every combination; a float range becomes
``grid_points`` values, log-spaced for ``:log``), ``random``, ``tpe``, all seeded.

Objectives (``params -> val top-1``):
- ``cached_features_objective``: the fast path (``d2ssl.evaluation.linear_grid``) on extracted
  features; parameters ``lr``, ``weight_decay``, ``batch_size``, ``epochs``, ``momentum``;
- ``linear_benchmark_objective``: a full linear benchmark (``do_linear_benchmark``) from a config;
  parameters are config keys (``optimizer.lr``, ``dataloader.train.total_batch_size``, ...) applied
  as ``key=value`` overrides, each trial in ``{output_dir}/trial_NNNN``.

Every trial goes to ``trials.csv``/``trials.json`` and ``sweep.png`` (accuracy against each value).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import optuna
from detectron2.utils.file_io import PathManager
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from d2ssl.engine.train_loop import setup_config
from d2ssl.evaluation.features import load_features
from d2ssl.evaluation.linear import do_linear_benchmark
from d2ssl.evaluation.linear_grid import train_linear_grid
from d2ssl.evaluation.plots import plot_sweep

logger = logging.getLogger(__name__)

SAMPLERS = ("grid", "random", "tpe")
TRACKERS = ("tensorboard", "wandb")
# Objective: (parameter values, trial folder name) -> validation top-1 (%).
Objective = Callable[[dict, str], float]


@dataclass(frozen=True)
class SearchParam:
    """One swept parameter: a float range (``low``..``high``, ``log``) or ``choices``."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None

    def grid(self, points: int) -> list:
        if self.choices is not None:
            return list(self.choices)
        if points == 1:
            return [self.low]
        spaced = np.geomspace if self.log else np.linspace
        values = spaced(self.low, self.high, points)
        return [float(f"{v:.6g}") for v in values]

    def suggest(self, trial: optuna.Trial, grid_points: int | None = None):
        """The trial's value; with ``grid_points`` (grid sampler) one of ``self.grid(grid_points)``,
        which is how GridSampler hands out its grid."""
        if self.choices is not None or grid_points is not None:
            return trial.suggest_categorical(self.name, self.grid(grid_points or 1))
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)


def _number(text: str):
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def parse_param(spec: str) -> SearchParam:
    """``"lr=1e-3:10:log"``, ``"weight_decay=0:1e-3"`` or ``"batch_size=64,128,256"``."""
    name, sep, rest = spec.partition("=")
    if not sep or not name.strip() or not rest.strip():
        raise ValueError(f"search parameter {spec!r} must be NAME=LOW:HIGH[:log] or NAME=A,B,C")
    name, rest = name.strip(), rest.strip()
    try:
        if ":" in rest:
            parts = rest.split(":")
            if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
                raise ValueError("a range is LOW:HIGH or LOW:HIGH:log")
            low, high, log = float(parts[0]), float(parts[1]), len(parts) == 3
            if not low < high or (log and low <= 0):
                raise ValueError("need LOW < HIGH, and LOW > 0 on a log scale")
            return SearchParam(name, low, high, log)
        return SearchParam(name, choices=tuple(_number(v.strip()) for v in rest.split(",")))
    except ValueError as e:
        raise ValueError(f"search parameter {spec!r}: {e}") from e


def _study(storage_file: str, study_name: str, sampler: str, params: Sequence[SearchParam], seed: int,
           grid_points: int) -> optuna.Study:
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    with warnings.catch_warnings():  # the retry callback is "experimental" since optuna 2.8, still in 5.0
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = RDBStorage(
            f"sqlite:///{os.path.abspath(storage_file)}",
            heartbeat_interval=60, grace_period=180,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
        )
    if sampler == "grid":
        chosen = optuna.samplers.GridSampler({p.name: p.grid(grid_points) for p in params}, seed=seed)
    elif sampler == "random":
        chosen = optuna.samplers.RandomSampler(seed=seed)
    else:
        chosen = optuna.samplers.TPESampler(seed=seed)
    return optuna.create_study(storage=storage, study_name=study_name, sampler=chosen, direction="maximize",
                               load_if_exists=True)


def _finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def run_sweep(
    objective: Objective,
    params: Sequence[SearchParam],
    output_dir: str,
    n_trials: int = 20,
    sampler: str = "tpe",
    study_name: str = "sweep",
    seed: int = 0,
    grid_points: int = 3,
    tracker: str | None = None,
) -> optuna.Study:
    """Runs trials until the study in ``{output_dir}/sweep.db`` has ``n_trials`` finished ones (fewer
    if a grid is exhausted), then writes the trial tables and plot. Returns the study."""
    if not params:
        raise ValueError("a sweep needs at least one search parameter")
    if tracker is not None and tracker not in TRACKERS:
        raise ValueError(f"tracker must be one of {TRACKERS} or None, got {tracker!r}")
    PathManager.mkdirs(output_dir)
    grid = grid_points if sampler == "grid" else None
    study = _study(os.path.join(output_dir, "sweep.db"), study_name, sampler, params, seed, grid_points)
    already = _finished(study)
    if already:
        logger.info("continuing study %r: %d of %d trials finished", study_name, already, n_trials)

    def optuna_objective(trial: optuna.Trial) -> float:
        values = {p.name: p.suggest(trial, grid) for p in params}
        # A retried trial (its process was killed) reuses the folder of the trial it repeats.
        frozen = trial.study.get_trials(deepcopy=False)[trial.number]
        with warnings.catch_warnings():  # as above
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            number = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
        return round(float(objective(values, f"trial_{trial.number if number is None else number:04d}")), 4)

    callbacks = [optuna.study.MaxTrialsCallback(n_trials, states=(TrialState.COMPLETE,))]
    if tracker:
        callbacks.append(_tracker_callback(tracker, output_dir, study_name))
    if already < n_trials:
        study.optimize(optuna_objective, n_trials=n_trials - already, callbacks=callbacks)
    write_sweep_report(study, params, output_dir)
    return study


def trial_rows(study: optuna.Study) -> list[dict]:
    """One dict per trial: number, state, value (val top-1), the parameters, duration in seconds."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
        rows.append({"number": t.number, "state": t.state.name, "value": t.value, **t.params,
                     "duration_s": duration})
    return rows


def write_sweep_report(study: optuna.Study, params: Sequence[SearchParam], output_dir: str) -> list[dict]:
    """Writes ``trials.csv``, ``trials.json`` (with the best trial) and ``sweep.png``."""
    rows = trial_rows(study)
    names = [p.name for p in params]
    columns = ["number", "state", "value", *names, "duration_s"]
    with PathManager.open(os.path.join(output_dir, "trials.csv"), "w") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    best = None
    if _finished(study):
        best = {"number": study.best_trial.number, "value": study.best_value, **study.best_params}
    with PathManager.open(os.path.join(output_dir, "trials.json"), "w") as f:
        json.dump({"study": study.study_name, "best": best, "trials": rows}, f, indent=2)
    log_scale = [p.name for p in params if p.log]
    plot_sweep(rows, names, os.path.join(output_dir, "sweep.png"), log_scale=log_scale)
    if best:
        logger.info("best of %d finished trials: %.2f with %s", _finished(study), best["value"],
                    {k: v for k, v in best.items() if k not in ("number", "value")})
    return rows


def _tracker_callback(tracker: str, output_dir: str, study_name: str) -> Callable:
    if tracker == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter  # optional: only when asked for

        writer = SummaryWriter(os.path.join(output_dir, "tensorboard"))

        def log(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            if trial.value is not None:
                writer.add_hparams(dict(trial.params), {"sweep/top1": trial.value},
                                   run_name=f"trial_{trial.number}")
                writer.flush()

        return log
    try:
        import wandb  # optional: only when asked for
    except ImportError as e:
        raise ImportError("tracker='wandb' needs the wandb package (pip install wandb)") from e

    def log_wandb(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        run = wandb.init(project=study_name, name=f"trial_{trial.number}", config=dict(trial.params),
                         dir=output_dir, reinit=True)
        run.log({"top1": trial.value})
        run.finish()

    return log_wandb


# ---------------------------------------------------------------- objectives

FAST_PATH_PARAMS = ("lr", "weight_decay", "batch_size", "epochs", "momentum")


def cached_features_objective(
    features_dir: str,
    train_split: str = "train",
    val_split: str = "test",
    layer: str = "res5",
    epochs: int = 100,
    batch_size: int = 256,
    schedule: str = "cosine",
    standardize: bool = False,
    seed: int = 0,
) -> Objective:
    """The fast path as an objective: one linear classifier on features extracted to
    ``features_dir``, its val top-1. Features are loaded once, here."""
    train = load_features(features_dir, train_split, (layer,)).subset(slice(None))
    val = load_features(features_dir, val_split, (layer,)).subset(slice(None))

    def objective(values: dict, trial_dir: str) -> float:
        unknown = sorted(set(values) - set(FAST_PATH_PARAMS))
        if unknown:
            raise ValueError(f"the cached-features objective sweeps {list(FAST_PATH_PARAMS)}, not {unknown}")
        settings = {"lr": 0.1, "weight_decay": 0.0, "momentum": 0.9, "epochs": epochs,
                    "batch_size": batch_size, **values}
        result = train_linear_grid(
            train, val, layer, lrs=(settings["lr"],), weight_decays=(settings["weight_decay"],),
            standardize=(standardize,), epochs=int(settings["epochs"]),
            batch_size=int(settings["batch_size"]), momentum=settings["momentum"], schedule=schedule,
            seed=seed,
        )
        return result.cells[0]["top1"]

    return objective


def linear_benchmark_objective(config_file: str, overrides: Sequence[str], output_dir: str) -> Objective:
    """A full linear benchmark per trial: ``config_file`` with ``overrides``, the trial's values as
    ``key=value`` overrides and ``train.output_dir={output_dir}/{trial}``; returns its ``top1``."""
    def objective(values: dict, trial_dir: str) -> float:
        trial_overrides = [*overrides, *(f"{k}={v}" for k, v in values.items()),
                           f"train.output_dir={os.path.join(output_dir, trial_dir)}"]
        cfg = setup_config(config_file, trial_overrides)
        metrics = do_linear_benchmark(cfg, resume=True)
        top1 = metrics.get("top1")
        if top1 is None or not math.isfinite(top1):
            raise ValueError(f"{trial_dir}: the linear benchmark returned no finite top1 ({metrics})")
        return top1

    return objective
