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

Trials are compared on a validation split, never on the split they report: an objective returns the
trial's top-1 on its validation split (what Optuna maximises) and on the test split (reported beside
it, never selected on). ``trials.csv``/``trials.json`` carry both, with ``selected_on``/``scored_on``.

Objectives (``params -> {"val_top1", "test_top1"}``):
- ``cached_features_objective``: the fast path (``d2ssl.evaluation.linear_grid``) on extracted
  features, selecting on ``val_fraction`` of every training class (or an extracted ``val_split``);
  parameters ``lr``, ``weight_decay``, ``batch_size``, ``epochs``, ``momentum``;
- ``linear_benchmark_objective``: a full linear benchmark (``do_linear_benchmark``) from a config;
  parameters are config keys (``optimizer.lr``, ``dataloader.train.total_batch_size``, ...) applied
  as ``key=value`` overrides, each trial in ``{output_dir}/trial_NNNN``; the last evaluation's val
  top-1 (``dataloader.val``, or ``val_fraction`` of the training data when the config has none).

A study is bound to what it evaluates: its user attributes hold the objective's identity (the
content digest of the features' meta files, or of the resolved config, overrides and weights file),
the search space and the selection split. Continuing a study with anything else is refused, naming
what differs: a study's trials are only comparable when they measured the same thing.

Every trial goes to ``trials.csv``/``trials.json`` and ``sweep.png`` (val accuracy against each value).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import optuna
from detectron2.utils.file_io import PathManager
from omegaconf import OmegaConf
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from d2ssl.checkpoint.zoo import is_zoo_name, local_zoo_file
from d2ssl.engine.train_loop import setup_config
from d2ssl.evaluation.features import meta_path
from d2ssl.evaluation.linear import do_linear_benchmark, validation_source
from d2ssl.evaluation.linear_grid import selection_splits, train_linear_grid
from d2ssl.evaluation.plots import plot_sweep

logger = logging.getLogger(__name__)

SAMPLERS = ("grid", "random", "tpe")
TRACKERS = ("tensorboard", "wandb")
IDENTITY_ATTR = "identity"


@dataclass
class Objective:
    """What a sweep maximises: ``run(values, trial_dir)`` returns ``{"val_top1": %, "test_top1": % or
    None}`` (Optuna maximises ``val_top1``); ``identity`` (JSON) says what the trials evaluate, so a
    study is only continued for the same thing; ``selected_on``/``scored_on`` name the splits."""

    run: Callable[[dict, str], dict]
    identity: dict = field(default_factory=dict)
    selected_on: str = "val"
    scored_on: str = "test"

    def __call__(self, values: dict, trial_dir: str) -> dict:
        return self.run(values, trial_dir)


def file_sha256(path: str) -> str:
    """Content digest of a file (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with PathManager.open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stable_name(value: object) -> str:
    # Callables in a LazyConfig (``_target_``) by their import path: str() would hold a memory address.
    name = getattr(value, "__qualname__", None)
    return f"{getattr(value, '__module__', '')}.{name}" if name else repr(value)


def _sha256_json(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=_stable_name).encode()).hexdigest()


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


def study_identity(objective: Objective, params: Sequence[SearchParam]) -> dict:
    """What a study measures: the objective's identity, the search space and the selection split."""
    return {"objective": objective.identity, "search_space": [asdict(p) for p in params],
            "selected_on": objective.selected_on, "scored_on": objective.scored_on}


def _differences(old: object, new: object, where: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += _differences(old.get(key), new.get(key), f"{where}.{key}" if where else str(key))
        return out
    return [] if old == new else [f"{where or 'identity'}: the study has {old!r}, this call {new!r}"]


def bind_study(study: optuna.Study, identity: dict, storage_file: str) -> None:
    """Stores ``identity`` in a new study, or checks it against the one an existing study holds.

    Raises:
        ValueError: the study was made for something else (other features, config, search space or
            selection split), or by a d2ssl that did not record it; names what differs.
    """
    identity = json.loads(json.dumps(identity, sort_keys=True, default=_stable_name))  # as stored: JSON
    stored = study.user_attrs.get(IDENTITY_ATTR)
    how = ("Continue it with the arguments it was made with, or start another study: another --output-dir "
           "or another --study-name")
    if stored is None:
        if study.get_trials(deepcopy=False):
            raise ValueError(
                f"study {study.study_name!r} in {storage_file} has trials but no record of what they "
                f"evaluated (made by an older d2ssl): its accuracies cannot be compared with this sweep's. "
                f"{how}")
        study.set_user_attr(IDENTITY_ATTR, identity)
        study.set_user_attr(f"{IDENTITY_ATTR}_sha256", _sha256_json(identity))
        return
    differences = _differences(stored, identity)
    if differences:
        raise ValueError(
            f"study {study.study_name!r} in {storage_file} was made for another evaluation, so continuing it "
            f"would mix or reuse accuracies of something else. Differences: " + "; ".join(differences[:5])
            + f". {how}")


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
    storage_file = os.path.join(output_dir, "sweep.db")
    study = _study(storage_file, study_name, sampler, params, seed, grid_points)
    bind_study(study, study_identity(objective, params), storage_file)
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
        scores = objective(values, f"trial_{trial.number if number is None else number:04d}")
        test = scores.get("test_top1")
        # Reported beside the trial, never what the sampler or the best trial is chosen by.
        trial.set_user_attr("test_top1", None if test is None else round(float(test), 4))
        return round(float(scores["val_top1"]), 4)

    callbacks = [optuna.study.MaxTrialsCallback(n_trials, states=(TrialState.COMPLETE,))]
    if tracker:
        callbacks.append(_tracker_callback(tracker, output_dir, study_name))
    if already < n_trials:
        study.optimize(optuna_objective, n_trials=n_trials - already, callbacks=callbacks)
    write_sweep_report(study, params, output_dir)
    return study


SELECTION_RULE = ("the finished trial with the highest val top-1 (Optuna's best trial) is selected; its "
                  "test top-1 is reported, measured by the same trial")


def trial_rows(study: optuna.Study) -> list[dict]:
    """One dict per trial: number, state, val_top1 (what trials are compared by), test_top1 (reported,
    never compared), the parameters, duration in seconds."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
        rows.append({"number": t.number, "state": t.state.name, "val_top1": t.value,
                     "test_top1": t.user_attrs.get("test_top1"), **t.params, "duration_s": duration})
    return rows


def write_sweep_report(study: optuna.Study, params: Sequence[SearchParam], output_dir: str) -> list[dict]:
    """Writes ``trials.csv``, ``trials.json`` (``selected_on``, ``scored_on``, the rule, the selected
    trial) and ``sweep.png``."""
    rows = trial_rows(study)
    names = [p.name for p in params]
    columns = ["number", "state", "val_top1", "test_top1", *names, "duration_s"]
    with PathManager.open(os.path.join(output_dir, "trials.csv"), "w") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    selected = None
    if _finished(study):
        best = study.best_trial
        selected = {"number": best.number, "val_top1": best.value,
                    "test_top1": best.user_attrs.get("test_top1"), **best.params}
    identity = study.user_attrs.get(IDENTITY_ATTR, {})
    with PathManager.open(os.path.join(output_dir, "trials.json"), "w") as f:
        json.dump({"study": study.study_name, "selected_on": identity.get("selected_on"),
                   "scored_on": identity.get("scored_on"), "rule": SELECTION_RULE, "selected": selected,
                   "identity": identity, "trials": rows}, f, indent=2)
    log_scale = [p.name for p in params if p.log]
    plot_sweep(rows, names, os.path.join(output_dir, "sweep.png"), log_scale=log_scale, metric="val_top1")
    if selected:
        logger.info("selected among %d finished trials on %s: val top-1 %.2f, test top-1 %s, with %s",
                    _finished(study), identity.get("selected_on"), selected["val_top1"],
                    selected["test_top1"],
                    {k: v for k, v in selected.items() if k not in ("number", "val_top1", "test_top1")})
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
    test_split: str = "test",
    layer: str = "res5",
    epochs: int = 100,
    batch_size: int = 256,
    schedule: str = "cosine",
    standardize: bool = False,
    seed: int = 0,
    val_split: str | None = None,
    val_fraction: float = 0.1,
    val_seed: int = 0,
) -> Objective:
    """The fast path as an objective: one linear classifier on features extracted to ``features_dir``,
    trained on the training rows, its top-1 on the validation rows (``selection_splits``: an extracted
    ``val_split`` or ``val_fraction`` of every training class) and on ``test_split``. Features are
    loaded once, here; the identity holds the content digest of each split's meta file."""
    splits = selection_splits(features_dir, layer, train_split, test_split, val_split, val_fraction, val_seed)
    used = [train_split, test_split, *([val_split] if val_split else [])]
    identity = {
        "kind": "cached_features",
        "meta_sha256": {split: file_sha256(meta_path(features_dir, split)) for split in used},
        "layer": layer, "epochs": epochs, "batch_size": batch_size, "schedule": schedule,
        "standardize": standardize, "seed": seed, "validation": splits.selection["selected_on"],
    }

    def run(values: dict, trial_dir: str) -> dict:
        unknown = sorted(set(values) - set(FAST_PATH_PARAMS))
        if unknown:
            raise ValueError(f"the cached-features objective sweeps {list(FAST_PATH_PARAMS)}, not {unknown}")
        settings = {"lr": 0.1, "weight_decay": 0.0, "momentum": 0.9, "epochs": epochs,
                    "batch_size": batch_size, **values}
        result = train_linear_grid(
            splits.fit, splits.val, layer, lrs=(settings["lr"],), weight_decays=(settings["weight_decay"],),
            standardize=(standardize,), epochs=int(settings["epochs"]),
            batch_size=int(settings["batch_size"]), momentum=settings["momentum"], schedule=schedule,
            seed=seed, test=splits.test, selection=splits.selection,
        )
        return {"val_top1": result.cells[0]["val_top1"], "test_top1": result.cells[0]["test_top1"]}

    return Objective(run, identity, splits.selection["selected_on"], test_split)


def _weights_digests(cfg) -> dict:
    """Content digests of the weights files a config names (``train.weights_init.PARAMS_FILE``,
    ``train.init_checkpoint``): the same path may hold other weights tomorrow."""
    out = {}
    for key in ("train.weights_init.PARAMS_FILE", "train.init_checkpoint"):
        path = OmegaConf.select(cfg, key, default=None)
        if isinstance(path, str) and is_zoo_name(path):  # the checked local copy's bytes, not the name
            path = local_zoo_file(path)
        if isinstance(path, str) and path and PathManager.isfile(path):
            out[key] = file_sha256(path)
    return out


def linear_benchmark_objective(
    config_file: str, overrides: Sequence[str], output_dir: str, val_fraction: float = 0.1
) -> Objective:
    """A full linear benchmark per trial: ``config_file`` with ``overrides``, the trial's values as
    ``key=value`` overrides and ``train.output_dir={output_dir}/{trial}``; returns the last
    evaluation's val and test top-1. A config with no validation split of its own (``dataloader.val``)
    holds out ``val_fraction`` of every training class (``dataloader.val.fraction``)."""
    overrides = list(overrides)
    cfg = setup_config(config_file, overrides)
    if validation_source(cfg) is None:
        overrides.append(f"dataloader.val.fraction={val_fraction}")
        cfg = setup_config(config_file, overrides)
    selected_on = validation_source(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=False)
    # The resolved config's content, not its path: the same file may change, another path may hold it.
    identity = {"kind": "linear_benchmark", "config_sha256": _sha256_json(resolved), "overrides": overrides,
                "weights_sha256": _weights_digests(cfg), "validation": selected_on}

    def run(values: dict, trial_dir: str) -> dict:
        trial_overrides = [*overrides, *(f"{k}={v}" for k, v in values.items()),
                           f"train.output_dir={os.path.join(output_dir, trial_dir)}"]
        trial_cfg = setup_config(config_file, trial_overrides)
        metrics = do_linear_benchmark(trial_cfg, resume=True)
        val = metrics.get("val/top1")
        if val is None or not math.isfinite(val):
            raise ValueError(f"{trial_dir}: the linear benchmark returned no finite val/top1 ({metrics})")
        return {"val_top1": val, "test_top1": metrics.get("top1")}

    return Objective(run, identity, selected_on, "dataloader.test")
