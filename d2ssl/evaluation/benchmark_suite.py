"""One command from a checkpoint to the full results table: a named suite of evaluation steps, each run
in its own folder through the existing tools, skipped when already done for the same content.

A suite is a LazyConfig file (``configs/suites/<name>.py``) holding ``steps``, a dict of named steps
run in order::

    steps = dict(
        features=dict(kind="extract_features", config="configs/eval/tiny/extract_features.py",
                      overrides=["dataloader.train.dataset.limit=600"]),     # a tool run on a config
        knn=dict(kind="knn", features="features", params=dict(k=[10, 20])),  # on a step's features
    )

``kind``: ``extract_features``, ``train_linear``, ``train_detection`` (the tools of the same names, run
with ``config`` + ``overrides`` + the weights + ``train.output_dir=<step folder>``, through
``launch_processes`` as the tools do) or ``knn``, ``linear_grid``, ``tsne`` (library calls on the
features the step named by ``features`` extracted; ``params`` are their keyword arguments; ``knn`` and
``linear_grid`` also take ``layers=[...]``: one run per layer, metrics named ``<layer>/<metric>``).
Optional: ``num_gpus`` (default: the command's ``--num-gpus``) and ``description``.

Evaluation seeds (``with_eval_seeds``, ``tools/benchmark.py --eval-seeds 0 1 2``): every step that draws
at random given its features or trunk (``linear_grid``: head initialisation, batch order and the
held-out validation rows; ``train_linear``, ``train_detection``: ``train.seed``) runs once per seed, as
step ``<name>_seed<S>``; the features, kNN and t-SNE run once. A ``random:N`` trunk is drawn from N
whatever the evaluation seed; a training step, which draws its random trunk and its head from one
``train.seed``, cannot separate them and fails with a message (evaluate ``random`` there).

``run_suite`` writes ``<output_dir>/<step>/step.json`` for each step: ``status`` (running, done,
failed, blocked), ``key`` and the step's ``metrics``. The key is what decides reuse, never a path:

- ``weights_sha256``: sha256 of the weights file (``zoo:<name>``: of its verified local copy;
  ``random``: a random trunk, seeded by the config's ``train.seed``; ``random:N``: a random trunk
  initialised from seed N, ``train.seed=N`` in the steps that extract features),
- ``config_digest``: the step's resolved config after overrides (``d2ssl.engine.run_folder.config_digest``)
  with its output folders and weights path blanked, or for a features step its kind and params,
- ``dataset_digest``: ``d2ssl.evaluation.features.dataset_digest`` of every data set the config
  names (for a features step: of the extraction's own data set digests and its loaded trunk digest),
- ``code``: d2ssl's version.

A step whose ``step.json`` is ``done`` with the same key is skipped. One with the same key that did
not finish (a kill, a preemption, an error) runs again in its folder, training tools with
``--resume``. A folder whose key differs (an edited suite, other data) is moved to
``<output_dir>/previous_steps/`` and the step runs afresh; the log names the fields that differ. An
output folder holding another checkpoint's benchmark (``suite.json``) is refused. A failed step does
not stop the steps that do not depend on it; those that do are ``blocked``; the table marks both.

Outputs (``write_results``): ``results.json`` (every metric with its step, the split that selected
it, the split that scored it, the weights digest, the config and the time), ``results.md`` (one
table), and ``knn_topk.png`` (kNN top-1 against k), ``<step>_heads.png`` (top-1 per layer of a
multi-head linear benchmark such as VISSL's); the ``tsne`` step writes ``<step>/tsne.png``.

``watch`` evaluates every new checkpoint of a pretraining run folder as it appears (VISSL's
``BenchmarkSuiteScheduler``); ``plan_jobs`` / ``submit_suite`` send the steps to SLURM as jobs with
dependencies (``sbatch_scripts``: the dry run).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import hashlib
import json
import logging
import math
import os
import re
import shlex
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from detectron2.config import LazyConfig
from omegaconf import DictConfig, ListConfig, OmegaConf
from tabulate import tabulate

import d2ssl
from d2ssl.checkpoint.zoo import is_zoo_name, local_zoo_file
from d2ssl.engine.run_folder import checkpoint_identity, config_digest
from d2ssl.utils.errors import describe_error
from d2ssl.utils.safe_io import atomic_write, sha256_of

# Its own logger, not "d2ssl": the tools run in this process reset d2ssl's handlers (_tool_logging).
logger = logging.getLogger("d2ssl.benchmark")

REPO_ROOT = Path(__file__).resolve().parents[2]
SUITES_DIR = REPO_ROOT / "configs" / "suites"
CONFIG_KINDS = ("extract_features", "train_linear", "train_detection")
FEATURE_KINDS = ("knn", "linear_grid", "tsne")
STEP_KINDS = CONFIG_KINDS + FEATURE_KINDS
STEP_KEYS = ("kind", "config", "overrides", "features", "params", "num_gpus", "description")
STEP_FILE, SUITE_FILE = "step.json", "suite.json"
RESULTS_JSON, RESULTS_MD = "results.json", "results.md"
PREVIOUS_STEPS = "previous_steps"
RANDOM_WEIGHTS = "random"
_SEEDED_RANDOM = re.compile(r"random:(\d+)")
SEEDED_KINDS = ("linear_grid", "train_linear", "train_detection")
KEY_FIELDS = ("weights_sha256", "config_digest", "dataset_digest", "code")
# Keys that hold where a step writes or which file it loads: the weights count by content instead.
_PATH_KEYS = ("train.output_dir", "extraction.output_dir", "train.weights_init.PARAMS_FILE",
              "train.init_checkpoint")


class BenchmarkError(ValueError):
    """A suite, its weights or its output folder cannot be used as given; the message says how on."""


# ---------------------------------------------------------------- the suite

@dataclasses.dataclass(frozen=True)
class Step:
    """One step of a suite (see the module docstring)."""

    name: str
    kind: str
    config: str = ""
    overrides: tuple[str, ...] = ()
    features: str = ""
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    num_gpus: int | None = None
    description: str = ""
    eval_seed: int | None = None

    @property
    def after(self) -> tuple[str, ...]:
        """The steps this one needs done first."""
        return (self.features,) if self.features else ()


@dataclasses.dataclass(frozen=True)
class Suite:
    name: str
    path: str
    steps: tuple[Step, ...]

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise BenchmarkError(f"suite {self.name!r} ({self.path}) has no step {name!r}; its steps: "
                             f"{[s.name for s in self.steps]}")


def suite_path(suite: str) -> Path:
    """``tiny`` -> ``configs/suites/tiny.py``; a path to a ``.py`` file is taken as it is."""
    path = Path(suite)
    if path.suffix == ".py" and path.is_file():
        return path
    named = SUITES_DIR / f"{suite}.py"
    if named.is_file():
        return named
    known = sorted(p.stem for p in SUITES_DIR.glob("*.py"))
    raise BenchmarkError(f"--suite {suite!r}: no such suite file; give a LazyConfig file of steps or one of "
                         f"{known} (configs/suites/)")


def _resolve_config(config: str) -> str:
    """A step's config file: as given (relative to the working directory), else under the repository."""
    if not config or os.path.isfile(config):
        return config
    in_repo = REPO_ROOT / config
    return str(in_repo) if in_repo.is_file() else config


def _plain(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def load_suite(suite: str) -> Suite:
    """The steps of a named suite or suite file, checked: known kinds and keys, unique names, configs
    that exist, features steps that name an ``extract_features`` step. A bad entry raises
    ``BenchmarkError`` naming the file, the step and the key."""
    path = suite_path(suite)
    cfg = LazyConfig.load(str(path))
    if not isinstance(cfg.get("steps"), DictConfig) or not len(cfg.steps):
        raise BenchmarkError(f"{path}: a suite file defines steps = dict(<name>=dict(kind=..., ...), ...)")
    steps: list[Step] = []
    for name, raw in cfg.steps.items():
        raw = _plain(raw)
        where = f"{path}: steps.{name}"
        if not isinstance(raw, dict):
            raise BenchmarkError(f"{where} is a {type(raw).__name__}, not a dict(kind=..., ...)")
        unknown = sorted(set(raw) - set(STEP_KEYS))
        if unknown:
            raise BenchmarkError(f"{where}: unknown key {unknown[0]!r}; allowed: {list(STEP_KEYS)}")
        kind = raw.get("kind")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise BenchmarkError(f"{where}: the name must be letters, digits, '_', '.' or '-' (it names the "
                                 f"step's folder)")
        if kind not in STEP_KINDS:
            raise BenchmarkError(f"{where}: kind={kind!r}; choose one of {list(STEP_KINDS)}")
        step = Step(name=name, kind=kind, config=_resolve_config(raw.get("config") or ""),
                    overrides=tuple(str(o) for o in raw.get("overrides") or ()),
                    features=raw.get("features") or "", params=dict(raw.get("params") or {}),
                    num_gpus=raw.get("num_gpus"), description=raw.get("description") or "")
        if kind in CONFIG_KINDS:
            if not step.config or not os.path.isfile(step.config):
                raise BenchmarkError(f"{where}: config={raw.get('config')!r} is not a file (paths are "
                                     f"relative to the working directory or the repository)")
            if step.features or step.params:
                raise BenchmarkError(f"{where}: a {kind} step takes config and overrides, not "
                                     f"features/params")
        else:
            source = next((s for s in steps if s.name == step.features), None)
            if source is None or source.kind != "extract_features":
                raise BenchmarkError(f"{where}: features={step.features!r} must name an earlier "
                                     f"extract_features step of the suite")
            if step.config or step.overrides:
                raise BenchmarkError(f"{where}: a {kind} step reads features (features=, params=), it has no "
                                     f"config")
        steps.append(step)
    return Suite(name=path.stem, path=str(path), steps=tuple(steps))


def with_eval_seeds(suite: Suite, seeds: Sequence[int]) -> Suite:
    """``suite`` with every step of ``SEEDED_KINDS`` replaced by one step per evaluation seed S, named
    ``<name>_seed<S>`` (``linear_grid``: ``seed`` and ``val_seed`` S unless its params set them; the
    training kinds: ``train.seed=S``); no seeds: ``suite`` unchanged."""
    if not seeds:
        return suite
    if len(set(seeds)) != len(seeds):
        raise BenchmarkError(f"--eval-seeds {list(seeds)}: a seed is given twice")
    steps: list[Step] = []
    for step in suite.steps:
        if step.kind not in SEEDED_KINDS:
            steps.append(step)
            continue
        for seed in seeds:
            seed = int(seed)
            if step.kind == "linear_grid":
                changes: dict[str, Any] = {"params": {"seed": seed, "val_seed": seed, **step.params}}
            else:
                changes = {"overrides": (*step.overrides, f"train.seed={seed}")}
            steps.append(dataclasses.replace(step, name=f"{step.name}_seed{seed}", eval_seed=seed, **changes))
    return dataclasses.replace(suite, steps=tuple(steps))


# ---------------------------------------------------------------- identities

def weights_identity(weights: str) -> dict[str, str]:
    """``{"weights": as given, "weights_sha256": sha256 of the file's bytes}`` (a ``zoo:`` name: of its
    verified local copy; ``random``: the literal ``random``)."""
    if weights in ("", RANDOM_WEIGHTS):
        return {"weights": RANDOM_WEIGHTS, "weights_sha256": RANDOM_WEIGHTS}
    if _SEEDED_RANDOM.fullmatch(weights):
        return {"weights": weights, "weights_sha256": weights}
    path = local_zoo_file(weights) if is_zoo_name(weights) else weights
    if not os.path.isfile(path):
        raise BenchmarkError(f"--weights {weights!r}: no such file (give a checkpoint, zoo:<name>, "
                             f"'{RANDOM_WEIGHTS}' or '{RANDOM_WEIGHTS}:<seed>')")
    return {"weights": weights, "weights_sha256": sha256_of(path)}


def _sha(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _weights_overrides(cfg: DictConfig, weights: str, step: Step) -> list[str]:
    """Where the config takes its weights: ``train.weights_init.PARAMS_FILE`` (evaluation configs) or
    ``train.init_checkpoint`` (detection configs, which have no weights_init); the other is emptied
    (both set is refused by every tool). ``random:N``: no file, ``train.seed=N``."""
    seeded = _SEEDED_RANDOM.fullmatch(weights)
    path = "" if weights == RANDOM_WEIGHTS or seeded else weights
    out = [f"train.init_checkpoint={path}"]
    if OmegaConf.select(cfg, "train.weights_init") is not None:
        out = [f"train.weights_init.PARAMS_FILE={path}", "train.init_checkpoint="]
    if seeded:
        if step.eval_seed is not None and step.kind != "extract_features":
            raise BenchmarkError(
                f"step {step.name}: --weights {weights} with an evaluation seed: a {step.kind} step draws "
                f"its random trunk and its head from one train.seed; evaluate --weights {RANDOM_WEIGHTS} "
                f"there")
        out.append(f"train.seed={seeded.group(1)}")
    return out


def step_overrides(step: Step, weights: str, folder: str) -> list[str]:
    """The overrides a config step runs with: the suite's (with its evaluation seed), then the weights
    and the step folder."""
    from d2ssl.engine.train_loop import setup_config

    cfg = setup_config(step.config, list(step.overrides))
    out = [*step.overrides, *_weights_overrides(cfg, weights, step), f"train.output_dir={folder}"]
    if step.kind == "extract_features":
        out.append(f"extraction.output_dir={folder}")
    return out


def _config_step_key(step: Step, cfg: DictConfig, known: dict[str, str]) -> tuple[str, str]:
    """(config digest with paths blanked, digest of every data set the config names); ``cfg``: the step's
    config with its overrides. ``known``: data set digests already computed in this suite run, by the
    config digest of their node (steps often share one, e.g. ImageNet's training set: it is listed and
    digested once per run, not once per step)."""
    from d2ssl.config import instantiate_dataset
    from d2ssl.evaluation.features import dataset_digest

    blank = copy.deepcopy(cfg)
    for key in _PATH_KEYS:
        if OmegaConf.select(blank, key) is not None:
            OmegaConf.update(blank, key, "", merge=False)
    splits = list(cfg.extraction.splits) if step.kind == "extract_features" else sorted(cfg.dataloader.keys())
    digests = {}
    for split in splits:
        node = OmegaConf.select(cfg, f"dataloader.{split}.dataset")
        if isinstance(node, DictConfig):
            spec = config_digest(node)  # "" when it cannot be digested: never shared
            if not spec or spec not in known:
                dicts = instantiate_dataset(node, f"dataloader.{split}.dataset")
                known[spec or f"unshared:{len(known)}"] = digests[split] = dataset_digest(dicts)
            else:
                digests[split] = known[spec]
    return config_digest(blank), _sha(digests)


def _features_meta(folder: str, splits: Sequence[str]) -> dict[str, dict]:
    """The meta files (reuse key, dims, digests) of the ``splits`` an extraction wrote to ``folder``."""
    from d2ssl.evaluation.features import meta_path

    metas = {}
    for split in splits:
        with open(meta_path(folder, split)) as f:
            metas[split] = json.load(f)
    return metas


def _features_step_key(step: Step, features_dir: str, splits: Sequence[str]) -> tuple[str, str]:
    """(digest of kind and params, digest of the features' data sets and loaded trunk); ``splits``: those
    the features step extracted (its record)."""
    metas = _features_meta(features_dir, splits)
    data = {split: {k: m.get(k) for k in ("dataset_digest", "weights_digest", "view", "layers", "pooling",
                                          "extraction_version")} for split, m in metas.items()}
    return _sha({"kind": step.kind, "params": dict(step.params)}), _sha(data)


# ---------------------------------------------------------------- running one step

def _extract_features_main(args: Any) -> Any:
    # tools/extract_features.py's main, importable by spawned processes.
    from d2ssl.engine.train_loop import setup_from_args
    from d2ssl.evaluation.features import extract_from_config

    return extract_from_config(setup_from_args(args))


def _tool_main(kind: str) -> Callable:
    if kind == "extract_features":
        return _extract_features_main
    if kind == "train_linear":
        from d2ssl.evaluation.linear import main
        return main
    from d2ssl.engine.detection import main
    return main


def tool_command(step: Step, overrides: Sequence[str], num_gpus: int) -> list[str]:
    """The tool command line a config step is equal to (for the record and for the user to rerun)."""
    resume = ["--resume"] if step.kind != "extract_features" else []
    return ["python", f"tools/{step.kind}.py", "--config-file", step.config, "--num-gpus", str(num_gpus),
            *resume, *overrides]


# Loggers a tool's default_setup gives handlers (console, <output_dir>/log.txt).
_TOOL_LOGGERS = ("detectron2", "fvcore", "d2ssl", "d2")


@contextlib.contextmanager
def _tool_logging() -> Iterator[None]:
    """Runs a tool in this process without leaving its log handlers behind: otherwise the next step's
    log would also go to this step's log.txt, and every console line would print once per step run."""
    from detectron2.utils.logger import setup_logger

    saved = {name: list(logging.getLogger(name).handlers) for name in _TOOL_LOGGERS}
    try:
        yield
    finally:
        for name, handlers in saved.items():
            logging.getLogger(name).handlers[:] = handlers
        setup_logger.cache_clear()  # its cache would otherwise skip the handlers of a folder seen before


def _run_config_step(step: Step, overrides: Sequence[str], num_gpus: int, folder: str,
                     cfg: DictConfig) -> dict:
    """Runs the step's tool (``cfg``: its config with ``overrides``, already loaded for the key)."""
    from d2ssl.engine.launch import config_device, launch_processes, parse_command_line

    argv = tool_command(step, overrides, num_gpus)[2:]
    args = parse_command_line(argv)
    # Training tools always --resume: the folder is this step's (same key), so an earlier attempt that
    # was killed continues from its last checkpoint, and an empty folder starts a new run.
    with _tool_logging():
        launch_processes(_tool_main(step.kind), num_gpus, args=(args,),
                         device=config_device(step.config, list(overrides), cfg=cfg))
    splits = list(cfg.extraction.splits) if step.kind == "extract_features" else []
    return _collect_config_results(step.kind, folder, splits)


def _read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def _collect_config_results(kind: str, folder: str, splits: Sequence[str] = ()) -> dict:
    """``{"metrics": [...], "info": {...}}`` from what the tool wrote to ``folder`` (the processes'
    return values do not come back from a multi-process launch); ``splits``: those an extraction wrote."""
    if kind == "extract_features":
        metas = _features_meta(folder, splits)
        return {"metrics": [], "info": {split: {k: m.get(k) for k in ("num_images", "dims", "weights_digest",
                                                                       "dataset_digest")}
                                        for split, m in metas.items()}}
    if kind == "train_linear":
        summary = _read_json(os.path.join(folder, "summary.json"))
        return {"metrics": linear_summary_metrics(summary), "info": {"iteration": summary.get("iteration")}}
    from d2ssl.utils.metrics import read_metrics

    evals = [r for r in read_metrics(folder) if any(k.startswith("bbox/") for k in r)]
    if not evals:
        raise RuntimeError(f"{folder}/metrics.json holds no box evaluation (bbox/AP): the run ended without "
                           f"evaluating")
    last = evals[-1]
    metrics = [_metric(k, v, None, "test (dataloader.test)") for k, v in last.items()
               if k in ("bbox/AP", "bbox/AP50", "bbox/AP75")]
    return {"metrics": metrics, "info": {"iteration": last.get("iteration")}}


def _metric(name: str, value: Any, selected_on: str | None, scored_on: str) -> dict:
    value = float(value)
    # NaN (COCO's AP of a detector that predicted nothing) is null: results.json stays strict JSON.
    return {"metric": name, "value": None if math.isnan(value) else value, "selected_on": selected_on,
            "scored_on": scored_on}


def _show(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def linear_summary_metrics(summary: Mapping[str, Any]) -> list[dict]:
    """The metrics of a linear benchmark's ``summary.json`` (``d2ssl.evaluation.linear``): each head's
    last-evaluation test top-1/top-5 and, only where a validation split selected them, the top-level
    numbers of several heads (the head best on val) and ``best`` (the evaluation best on val). What was
    selected on the test split (``best`` without a validation split, the top-level numbers of several
    heads without one) is left out: never selected on the split it reports."""
    scored = summary.get("scored_on", "test")
    selected_on = summary.get("selected_on")
    several = bool(summary.get("head_rule"))  # set only with several heads
    out = []
    for key in sorted(summary):
        value = summary[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or key.startswith("val/") \
                or not key.endswith(("top1", "top5")):
            continue
        if "/" in key and several:
            out.append(_metric(key, value, None, scored))
        elif "/" not in key and not several:
            out.append(_metric(key, value, None, scored))
        elif "/" not in key and selected_on:
            out.append(_metric(key, value, f"{selected_on}: the head with the highest val top-1", scored))
    best = summary.get("best") or {}
    if selected_on:
        for key in ("top1", "top5"):
            if isinstance(best.get(key), (int, float)):
                rule = f"{best.get('selected_on')} (evaluation with the highest val top-1)"
                out.append(_metric(f"best/{key}", best[key], rule, best.get("scored_on", scored)))
    return out


def _run_features_step(step: Step, features_dir: str, folder: str) -> dict:
    params = dict(step.params)
    os.makedirs(folder, exist_ok=True)
    layers = params.pop("layers", None)
    if layers is not None:  # one run per layer, each in its own sub-folder, metrics prefixed by the layer
        if "layer" in params:
            raise BenchmarkError(f"step {step.name}: params give both layer and layers")
        metrics, info = [], {}
        for layer in layers:
            one = dataclasses.replace(step, params={**params, "layer": layer})
            outcome = _run_features_step(one, features_dir, os.path.join(folder, layer))
            metrics += [{**m, "metric": f"{layer}/{m['metric']}"} for m in outcome["metrics"]]
            info[layer] = outcome["info"]
        return {"metrics": metrics, "info": info}
    if step.kind == "knn":
        from d2ssl.evaluation.knn import knn_on_cached_features

        ks = params.pop("k", None)
        results = knn_on_cached_features(features_dir, ks=ks, **params)
        scored = params.get("test_split", "test")
        memory = params.get("train_split", "train")
        metrics = [_metric(k, v, None, f"{scored} (memory: {memory}; k fixed in advance)")
                   for k, v in results.items()]
        with open(os.path.join(folder, "knn.json"), "w") as f:
            json.dump(results, f, indent=2)
        return {"metrics": metrics, "info": {"layer": params.get("layer", "res5")}}
    if step.kind == "linear_grid":
        from d2ssl.evaluation.linear_grid import linear_grid_on_cached_features

        result = linear_grid_on_cached_features(features_dir, output_dir=folder, **params)
        chosen, selection = result.selected, result.selection
        metrics = [_metric(f"test_{k}", chosen[f"test_{k}"], selection["selected_on"], selection["scored_on"])
                   for k in ("top1", "top5") if f"test_{k}" in chosen]
        info = {k: chosen[k] for k in ("lr", "weight_decay", "standardize", "val_top1") if k in chosen}
        return {"metrics": metrics, "info": info}
    from d2ssl.evaluation.plots import embedding_map_of_cached_features

    split = params.pop("split", "test")
    embedding_map_of_cached_features(features_dir, split, os.path.join(folder, "tsne.png"), **params)
    return {"metrics": [], "info": {"png": os.path.join(step.name, "tsne.png")}}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_step(folder: str) -> dict | None:
    path = os.path.join(folder, STEP_FILE)
    if not os.path.isfile(path):
        return None
    try:
        return _read_json(path)
    except ValueError:
        return None  # a torn record is no finished step


def _write_json(path: str, value: Any) -> None:
    atomic_write(path, lambda f: json.dump(value, f, indent=2), mode="w")


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    return "; ".join(f"{k} {str(old.get(k))[:12]}.. -> {str(new.get(k))[:12]}.." for k in KEY_FIELDS
                     if old.get(k) != new.get(k))


def _move_aside(output_dir: str, folder: str, why: str) -> None:
    target = os.path.join(output_dir, PREVIOUS_STEPS, f"{os.path.basename(folder)}-{_now().replace(':', '')}")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.move(folder, target)
    logger.warning("%s holds another step's results (%s): moved to %s; running it afresh", folder, why,
                   target)


def run_step(step: Step, output_dir: str, weights: Mapping[str, str], num_gpus: int,
             dataset_digests: dict[str, str] | None = None) -> dict:
    """Runs ``step`` in ``<output_dir>/<step.name>`` unless done with the same key; returns its record.
    ``dataset_digests``: see ``_config_step_key`` (shared by the steps of one suite run)."""
    folder = os.path.join(output_dir, step.name)
    key: dict[str, Any] = {"weights_sha256": weights["weights_sha256"], "code": d2ssl.__version__}
    record: dict[str, Any] = {"name": step.name, "kind": step.kind, "weights": weights["weights"],
                              "description": step.description}
    start = time.perf_counter()
    try:
        if step.kind in CONFIG_KINDS:
            from d2ssl.engine.train_loop import setup_config

            overrides = step_overrides(step, weights["weights"], folder)
            cfg = setup_config(step.config, list(overrides))
            key["config_digest"], key["dataset_digest"] = _config_step_key(
                step, cfg, {} if dataset_digests is None else dataset_digests)
            gpus = num_gpus if step.num_gpus is None else int(step.num_gpus)
            record.update(config=step.config, overrides=list(step.overrides),
                          command=shlex.join(tool_command(step, overrides, gpus)))
        else:
            features_dir = os.path.join(output_dir, step.features)
            features = read_step(features_dir)
            if not features or features.get("status") != "done" or \
                    features["key"].get("weights_sha256") != key["weights_sha256"]:
                record.update(status="blocked", error=f"needs step {step.features!r} done first", key=key)
                return record
            extracted = sorted(features.get("info") or {})  # the splits the features step wrote
            key["config_digest"], key["dataset_digest"] = _features_step_key(step, features_dir, extracted)
            record.update(features=step.features, params=dict(step.params))
    except Exception as e:  # noqa: BLE001  (a bad step config fails this step, not the suite)
        record.update(status="failed", error=describe_error(e), key=key)
        logger.error("step %s: %s", step.name, record["error"])
        return record
    record["key"] = key
    previous = read_step(folder)
    if previous is not None and previous.get("key") == key and previous.get("status") == "done":
        logger.info("step %s: done for the same weights, config and data (%s): skipped", step.name, folder)
        return previous
    if os.path.isdir(folder) and os.listdir(folder) and (previous is None or previous.get("key") != key):
        _move_aside(output_dir, folder, _differences(previous.get("key", {}), key) if previous
                    else f"no {STEP_FILE}")
    os.makedirs(folder, exist_ok=True)
    attempts = (previous or {}).get("attempts", 0) + 1 if previous and previous.get("key") == key else 1
    record.update(status="running", started=_now(), attempts=attempts)
    _write_json(os.path.join(folder, STEP_FILE), record)
    logger.info("step %s (%s): running in %s (attempt %d)", step.name, step.kind, folder, attempts)
    try:
        if step.kind in CONFIG_KINDS:
            outcome = _run_config_step(step, overrides, gpus, folder, cfg)
        else:
            outcome = _run_features_step(step, features_dir, folder)
    except Exception as e:
        from d2ssl.engine.preemption import TrainingStopped

        if isinstance(e, TrainingStopped):  # preempted: step.json stays "running", the rerun resumes
            raise
        record.update(status="failed", error=describe_error(e), finished=_now(),
                      seconds=round(time.perf_counter() - start, 1))
        logger.error("step %s failed: %s", step.name, record["error"])
    else:
        record.update(status="done", finished=_now(), seconds=round(time.perf_counter() - start, 1),
                      **outcome)
    _write_json(os.path.join(folder, STEP_FILE), record)
    return record


# ---------------------------------------------------------------- running a suite

def claim_output_dir(output_dir: str, suite: Suite, weights: Mapping[str, str]) -> None:
    """Writes ``suite.json``; refuses a folder that holds the benchmark of other weights."""
    path = os.path.join(output_dir, SUITE_FILE)
    if os.path.isfile(path):
        held = _read_json(path)
        if held.get("weights_sha256") != weights["weights_sha256"]:
            raise BenchmarkError(
                f"{output_dir} holds the benchmark of other weights ({held.get('weights')!r}, sha256 "
                f"{str(held.get('weights_sha256'))[:12]}..; now {weights['weights']!r}, sha256 "
                f"{weights['weights_sha256'][:12]}..): give another --output-dir"
            )
    os.makedirs(output_dir, exist_ok=True)
    _write_json(path, {"suite": suite.name, "suite_file": suite.path, **weights})


def run_suite(weights: str, suite: str | Suite, output_dir: str, num_gpus: int = 0,
              only: Sequence[str] = (), eval_seeds: Sequence[int] = ()) -> dict:
    """Runs (or skips, see the module docstring) every step of ``suite`` for ``weights`` in order, or
    only the steps named in ``only``, then writes the tables; returns ``write_results``' report.
    ``eval_seeds``: see ``with_eval_seeds``."""
    suite = with_eval_seeds(load_suite(suite) if isinstance(suite, str) else suite, eval_seeds)
    for name in only:
        suite.step(name)
    identity = weights_identity(weights)
    claim_output_dir(output_dir, suite, identity)
    records: dict[str, dict] = {}
    dataset_digests: dict[str, str] = {}
    for step in suite.steps:
        if only and step.name not in only:
            continue
        records[step.name] = run_step(step, output_dir, identity, num_gpus, dataset_digests)
    return write_results(output_dir, suite, records)


def collect_results(output_dir: str, suite: Suite, records: Mapping[str, dict] | None = None) -> dict:
    """``results.json``'s content from the steps' records (``records``: those of this run, which
    include the blocked steps and those whose setup failed; the others are read from their folders)."""
    if not os.path.isfile(os.path.join(output_dir, SUITE_FILE)):
        raise BenchmarkError(f"{output_dir} holds no benchmark ({SUITE_FILE} is missing): run the suite "
                             f"there first")
    held = _read_json(os.path.join(output_dir, SUITE_FILE))
    results, steps = [], []
    for step in suite.steps:
        record = (records or {}).get(step.name) or read_step(os.path.join(output_dir, step.name)) \
            or {"status": "not run"}
        steps.append({"step": step.name, "kind": step.kind, "status": record.get("status"),
                      "error": record.get("error"), "attempts": record.get("attempts"),
                      "seconds": record.get("seconds"), "info": record.get("info")})
        if record.get("status") != "done" or \
                record.get("key", {}).get("weights_sha256") != held["weights_sha256"]:
            continue
        config = {"config": record.get("config"), "overrides": record.get("overrides"),
                  "features": record.get("features"), "params": record.get("params")}
        for m in record.get("metrics", []):
            results.append({"step": step.name, "kind": step.kind, **m, "eval_seed": step.eval_seed,
                            "weights": held["weights"],
                            "weights_sha256": held["weights_sha256"], "config": config,
                            "config_digest": record["key"].get("config_digest"),
                            "time": record.get("finished")})
    return {"suite": suite.name, "weights": held["weights"], "weights_sha256": held["weights_sha256"],
            "steps": steps, "results": results, "seed_spread": seed_spread(results)}


def seed_spread(results: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Per seeded step and metric: min, median and max over its evaluation seeds (``n``: how many)."""
    groups: dict[tuple[str, str], list[float]] = {}
    for r in results:
        if r.get("eval_seed") is not None and r["value"] is not None:
            base = r["step"][: -len(f"_seed{r['eval_seed']}")]
            groups.setdefault((base, r["metric"]), []).append(r["value"])
    return [{"step": step, "metric": metric, "n": len(v), "min": min(v), "median": statistics.median(v),
             "max": max(v)} for (step, metric), v in groups.items()]


def format_results(report: Mapping[str, Any]) -> str:
    """results.md: one table, every step (failed and blocked ones marked), every metric."""
    rows = []
    for step in report["steps"]:
        metrics = [r for r in report["results"] if r["step"] == step["step"]]
        if step["status"] != "done":
            rows.append([step["step"], step["kind"], "-", "-", "-", "-",
                         f"{step['status'].upper()}: {step.get('error') or ''}".strip()])
        elif not metrics:
            rows.append([step["step"], step["kind"], "-", "-", "-", "-", "done"])
        for m in metrics:
            rows.append([step["step"], step["kind"], m["metric"], _show(m["value"]), m["selected_on"] or "-",
                         m["scored_on"], "done"])
    table = tabulate(rows, headers=["step", "kind", "metric", "value", "selected on", "scored on", "status"],
                     tablefmt="github", disable_numparse=True)
    text = (f"# Benchmark suite {report['suite']}\n\nweights: {report['weights']} (sha256 "
            f"{report['weights_sha256'][:16]})\n\n{table}\n")
    spread = report.get("seed_spread") or []
    if spread:
        rows = [[s["step"], s["metric"], s["n"], _show(s["min"]), _show(s["median"]), _show(s["max"])]
                for s in spread]
        text += "\nOver the evaluation seeds:\n\n" + tabulate(
            rows, headers=["step", "metric", "seeds", "min", "median", "max"], tablefmt="github",
            disable_numparse=True) + "\n"
    return text


def write_results(output_dir: str, suite: Suite, records: Mapping[str, dict] | None = None) -> dict:
    """Writes results.json, results.md and the plots; returns the report."""
    report = collect_results(output_dir, suite, records)
    _write_json(os.path.join(output_dir, RESULTS_JSON), report)
    text = format_results(report)
    atomic_write(os.path.join(output_dir, RESULTS_MD), lambda f: f.write(text), mode="w")
    _plots(output_dir, report)
    return report


def _plots(output_dir: str, report: Mapping[str, Any]) -> None:
    from d2ssl.evaluation.plots import plot_series

    results = [r for r in report["results"] if r["value"] is not None]
    knn: dict[str, list[tuple[int, float]]] = {}  # one series per layer (a knn step with layers=)
    per_layer: dict[str, list[tuple[str, float]]] = {}  # top-1 per layer of each knn k / grid step
    for r in results:
        match = re.fullmatch(r"(?:(\w+)/)?(test_top1|top1@(\d+))", r["metric"])
        if not match or r["kind"] not in ("knn", "linear_grid"):
            continue
        layer, metric, k = match.groups()
        if r["kind"] == "knn":
            knn.setdefault(f"kNN top-1{f' ({layer})' if layer else ''}", []).append((int(k), r["value"]))
        if layer:
            name = f"{r['step']} {'kNN k=' + k if k else 'linear'}"
            per_layer.setdefault(name, []).append((layer, r["value"]))
    if any(len(v) > 1 for v in knn.values()):
        plot_series({n: sorted(v) for n, v in knn.items()}, os.path.join(output_dir, "knn_topk.png"), "k",
                    "top-1 (%)", "kNN top-1 against k")
    if any(len(v) > 1 for v in per_layer.values()):
        plot_series(per_layer, os.path.join(output_dir, "top1_per_layer.png"), "layer", "top-1 (%)",
                    "top-1 per layer")
    for step in sorted({r["step"] for r in results if r["kind"] == "train_linear"}):
        heads = [(r["metric"].split("/")[0], r["value"]) for r in results
                 if r["step"] == step and r["metric"].count("/") == 1 and r["metric"].endswith("/top1")
                 and not r["metric"].startswith("best/")]
        if len(heads) > 1:
            plot_series({step: heads}, os.path.join(output_dir, f"{step}_heads.png"), "layer (head)",
                        "top-1 (%)", f"{step}: test top-1 per layer", categorical=True)


def failed_steps(report: Mapping[str, Any]) -> list[str]:
    return [s["step"] for s in report["steps"] if s["status"] != "done"]


# ---------------------------------------------------------------- watching a pretraining run

_CHECKPOINT_NAME = re.compile(r"model_(\d+|final)\.pth$")


def run_checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """``(iteration, path)`` of the checkpoints of a run folder, in iteration order (``model_final.pth``:
    the iteration stored in it)."""
    out = []
    for name in sorted(os.listdir(run_dir)) if os.path.isdir(run_dir) else []:
        match = _CHECKPOINT_NAME.fullmatch(name)
        if not match:
            continue
        path = os.path.join(run_dir, name)
        if match.group(1) == "final":
            iteration = checkpoint_identity(path).iteration
            if iteration is None:
                continue
        else:
            iteration = int(match.group(1))
        out.append((iteration, path))
    return sorted(out)


def watch(run_dir: str, suite: str | Suite, output_dir: str, num_gpus: int = 0, period: int = 0,
          poll_seconds: float = 60.0, max_polls: int | None = None,
          sleep: Callable[[float], None] = time.sleep) -> dict:
    """Evaluates each checkpoint of ``run_dir`` whose iteration + 1 is a multiple of ``period`` (0: every
    one), and the final one, with ``suite`` into ``<output_dir>/iter_<iteration>/``, polling every
    ``poll_seconds`` until ``max_polls`` polls (None: until the run has a ``model_final.pth`` evaluated).
    Writes ``watch.json``, ``watch.md`` (one row per iteration) and ``top1_vs_iteration.png``."""
    if not os.path.isdir(run_dir):
        raise BenchmarkError(f"--watch {run_dir!r}: no such run folder")
    suite = load_suite(suite) if isinstance(suite, str) else suite
    os.makedirs(output_dir, exist_ok=True)
    polls = 0
    while True:
        polls += 1
        for iteration, path in run_checkpoints(run_dir):
            final = path.endswith("model_final.pth")
            if period and (iteration + 1) % period and not final:
                continue
            target = os.path.join(output_dir, f"iter_{iteration:07d}")
            if final and os.path.isfile(os.path.join(target, RESULTS_JSON)):
                continue  # the same iteration's periodic checkpoint was evaluated: same weights
            run_suite(path, suite, target, num_gpus)
        table = write_watch_table(output_dir)
        finished = any(p.endswith("model_final.pth") for _, p in run_checkpoints(run_dir))
        if (max_polls is not None and polls >= max_polls) or (max_polls is None and finished):
            return table
        sleep(poll_seconds)


def write_watch_table(output_dir: str) -> dict:
    """One row per evaluated iteration: every metric of its results.json."""
    rows: dict[int, dict[str, float]] = {}
    for name in sorted(os.listdir(output_dir)):
        path = os.path.join(output_dir, name, RESULTS_JSON)
        if name.startswith("iter_") and os.path.isfile(path):
            report = _read_json(path)
            rows[int(name[5:])] = {f"{r['step']}/{r['metric']}": r["value"] for r in report["results"]
                                   if r["value"] is not None}
    columns = sorted({c for row in rows.values() for c in row})
    table = {"iterations": sorted(rows), "columns": columns, "rows": {str(i): rows[i] for i in sorted(rows)}}
    _write_json(os.path.join(output_dir, "watch.json"), table)
    lines = [[i, *(_show(rows[i][c]) if c in rows[i] else "-" for c in columns)] for i in sorted(rows)]
    text = tabulate(lines, headers=["iteration", *columns], tablefmt="github", disable_numparse=True)
    atomic_write(os.path.join(output_dir, "watch.md"), lambda f: f.write(text + "\n"), mode="w")
    top1 = {c: [(i, rows[i][c]) for i in sorted(rows) if c in rows[i]] for c in columns
            if re.search(r"(^|/)(test_)?top1(@\d+)?$", c)}
    if any(len(v) > 1 for v in top1.values()):
        from d2ssl.evaluation.plots import plot_series

        plot_series(top1, os.path.join(output_dir, "top1_vs_iteration.png"), "pretraining iteration",
                    "top-1 (%)", "top-1 against pretraining iteration")
    return table


# ---------------------------------------------------------------- SLURM

@dataclasses.dataclass(frozen=True)
class JobGroup:
    """Steps sent as one SLURM job (one step) or one array (several), after the groups in ``after``."""

    name: str
    steps: tuple[str, ...]
    num_gpus: int
    after: tuple[str, ...] = ()


def plan_jobs(suite: Suite, num_gpus: int) -> list[JobGroup]:
    """Steps with dependents (feature extraction) get a job each; the steps that depend on them form one
    array per source, after it; the independent benchmarks form one array per GPU count; a last job
    writes the tables after all (whatever their outcome)."""
    gpus = {s.name: num_gpus if s.num_gpus is None else int(s.num_gpus) for s in suite.steps}
    needed = {s.features for s in suite.steps if s.features}
    groups: list[JobGroup] = []
    for step in suite.steps:
        if step.name in needed:
            groups.append(JobGroup(step.name, (step.name,), gpus[step.name]))
    for source in [s.name for s in suite.steps if s.name in needed]:
        users = tuple(s.name for s in suite.steps if s.features == source)
        for count in sorted({gpus[u] for u in users}):
            chosen = tuple(u for u in users if gpus[u] == count)
            groups.append(JobGroup(f"after_{source}" + (f"_{count}gpu" if count != gpus[users[0]] else ""),
                                   chosen, count, (source,)))
    free = [s.name for s in suite.steps if s.name not in needed and not s.features]
    for count in sorted({gpus[n] for n in free}):
        chosen = tuple(n for n in free if gpus[n] == count)
        groups.append(JobGroup("benchmarks" + (f"_{count}gpu" if len({gpus[n] for n in free}) > 1 else ""),
                               chosen, count))
    groups.append(JobGroup("table", (), 0, tuple(g.name for g in groups)))
    return groups


@dataclasses.dataclass
class SuiteStepJob:
    """What a SLURM job of the suite runs: ``tools/benchmark.py`` on one step (or, with no step, the
    tables), in-process; requeued as it is on preemption (the step resumes, see ``run_step``)."""

    argv: list[str]
    max_requeues: int = 3
    requeues: int = 0

    def __call__(self) -> int:
        status = benchmark_main(self.argv)
        if status:  # a failed job: SLURM then holds the jobs that need it (afterok)
            raise RuntimeError(f"{self.command()} ended with status {status}: see the step's step.json")
        return status

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit on preemption or time-out: the same job again (its step.json says
        "running", so the step runs again with --resume), or None once the requeues are spent."""
        import submitit

        if self.requeues >= self.max_requeues:
            logger.error("preempted or timed out after %d requeues: not requeued", self.requeues)
            return None
        return submitit.helpers.DelayedSubmission(dataclasses.replace(self, requeues=self.requeues + 1))

    def command(self) -> str:
        return shlex.join(["python", "tools/benchmark.py", *self.argv])


def _group_jobs(group: JobGroup, base_argv: Sequence[str]) -> list[SuiteStepJob]:
    if not group.steps:
        return [SuiteStepJob([*base_argv, "--tables-only"])]
    return [SuiteStepJob([*base_argv, "--only", name, "--num-gpus", str(group.num_gpus)])
            for name in group.steps]


def _group_resources(group: JobGroup, resources: Any) -> Any:
    # One task per job: the step launches its own processes on the node (launch_processes), as the tools do.
    return dataclasses.replace(resources, gpus_per_node=group.num_gpus, tasks_per_node=1,
                               cpus_per_task=resources.cpus_per_task * max(group.num_gpus, 1),
                               job_name=f"{resources.job_name}_{group.name}")


def _dependency(group: JobGroup, ids: Mapping[str, str]) -> list[str]:
    if not group.after:
        return []
    # The table is written whatever the steps' outcome; a step needs its features extracted.
    kind = "afterany" if not group.steps else "afterok"
    return [f"--dependency={kind}:" + ":".join(ids[a] for a in group.after)]


def sbatch_scripts(suite: Suite, base_argv: Sequence[str], folder: str, resources: Any, num_gpus: int) -> str:
    """The dry run: the job graph, then each group's sbatch script (dependencies on ``$<group>_JOB_ID``,
    the ids SLURM gives the groups it depends on); nothing is submitted."""
    from d2ssl.engine.slurm import sbatch_script

    groups = plan_jobs(suite, num_gpus)
    placeholders = {g.name: f"${{{g.name.upper()}_JOB_ID}}" for g in groups}
    lines = [f"# Job graph of suite {suite.name} ({len(groups)} submissions; ${{<GROUP>_JOB_ID}}: the id "
             f"SLURM gives that group, filled in by --submit):"]
    for group in groups:
        what = (f"array of {len(group.steps)}" if len(group.steps) > 1 else "job") + \
            (f" [{', '.join(group.steps)}]" if group.steps else " [results.json, results.md]")
        after = f", after {' and '.join(group.after)} ({'any end' if not group.steps else 'ok'})" \
            if group.after else ""
        lines.append(f"#   {group.name}: {what}, {group.num_gpus} GPUs{after}")
    text = "\n".join(lines) + "\n"
    for group in groups:
        res = _group_resources(group, resources)
        res = dataclasses.replace(res, extra_sbatch=(*res.extra_sbatch, *_dependency(group, placeholders)))
        text += f"\n# ---- {group.name}\n" + sbatch_script(_group_jobs(group, base_argv), folder, res, 3)
    return text


def submit_suite(suite: Suite, base_argv: Sequence[str], folder: str, resources: Any, num_gpus: int,
                 cluster: str | None = None) -> dict[str, list[str]]:
    """Submits the groups of ``plan_jobs`` in order, each after the job ids of the groups it needs;
    returns ``{group: [job ids]}``. Without SLURM (submitit's local executor, which knows no
    dependencies) each group is submitted once the groups it needs have ended."""
    from d2ssl.engine.slurm import build_executor

    ids: dict[str, str] = {}
    handles_of: dict[str, list[Any]] = {}
    submitted: dict[str, list[str]] = {}
    for group in plan_jobs(suite, num_gpus):
        res = _group_resources(group, resources)
        res = dataclasses.replace(res, extra_sbatch=(*res.extra_sbatch, *_dependency(group, ids)))
        executor = build_executor(folder, res, cluster=cluster)
        if executor.cluster != "slurm":
            for needed in group.after:
                for handle in handles_of[needed]:
                    handle.wait()
        jobs = _group_jobs(group, base_argv)
        if len(jobs) == 1:
            handles = [executor.submit(jobs[0])]
        else:
            with executor.batch():
                handles = [executor.submit(job) for job in jobs]
        handles_of[group.name] = handles
        submitted[group.name] = [h.job_id for h in handles]
        # An array's tasks share the array's id before "_": depending on it waits for every task.
        ids[group.name] = str(handles[0].job_id).split("_")[0]
    return submitted


# ---------------------------------------------------------------- the command line

def argument_parser() -> Any:
    import argparse

    parser = argparse.ArgumentParser(
        prog="tools/benchmark.py", description="Run a benchmark suite on a checkpoint (d2ssl.evaluation."
        "benchmark_suite)", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="",
                        help="checkpoint of any layout d2ssl loads, zoo:<name>, or 'random' (a random trunk)")
    parser.add_argument("--suite", required=True,
                        help="a suite of configs/suites/ (tiny, quick, jigclu, vissl) or a suite file")
    parser.add_argument("--output-dir", default="", help="default: output/benchmark/<suite>")
    parser.add_argument("--num-gpus", type=int, default=0, help="processes per step (0: one, on the CPU)")
    parser.add_argument("--eval-seeds", type=int, nargs="+", default=[], metavar="SEED",
                        help="run the seeded steps (linear grid, linear and detection training) once per "
                             "seed, as <step>_seed<S>; the table adds min/median/max over them")
    parser.add_argument("--only", nargs="+", default=[], metavar="STEP", help="run only these steps")
    parser.add_argument("--tables-only", action="store_true", help="only (re)write the tables from the steps")
    parser.add_argument("--watch", metavar="RUN_DIR",
                        help="evaluate each new checkpoint of a pretraining run")
    parser.add_argument("--period", type=int, default=0,
                        help="--watch: checkpoints whose iteration + 1 is a multiple of this (0: all)")
    parser.add_argument("--poll-seconds", type=float, default=60.0)
    parser.add_argument("--max-polls", type=int, default=None, help="--watch: stop after this many polls")
    parser.add_argument("--once", action="store_true", help="--watch: one poll (--max-polls 1)")
    parser.add_argument("--submit", action="store_true", help="send the steps to SLURM as dependent jobs")
    parser.add_argument("--dry-run", action="store_true",
                        help="--submit: print the job graph and sbatch scripts")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="--submit: GPUs of a step (--num-gpus "
                                                                     "when not given)")
    parser.add_argument("--partition")
    parser.add_argument("--account")
    parser.add_argument("--time", type=int, default=72 * 60, help="--submit: minutes per job")
    parser.add_argument("--log-folder", default="output/submitit/%j")
    parser.add_argument("--cluster", choices=["slurm", "local", "debug"], default=None)
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
    return parser


def benchmark_main(argv: Sequence[str] | None = None) -> int:
    """``tools/benchmark.py``'s command line (``argv``) run: returns the exit status."""
    return run_benchmark(argument_parser().parse_args(argv))


def run_benchmark(args: Any) -> int:
    """What ``argument_parser()``'s ``args`` ask for: a suite run, a watch, a submission or its dry run, or
    the tables alone; returns the exit status (1 when a step failed or was blocked)."""
    suite = with_eval_seeds(load_suite(args.suite), args.eval_seeds)
    output_dir = args.output_dir or os.path.join("output", "benchmark", suite.name)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s benchmark]: %(message)s", "%m/%d %H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    if args.watch:
        table = watch(args.watch, suite, output_dir, args.num_gpus, args.period, args.poll_seconds,
                      1 if args.once else args.max_polls)
        print(Path(output_dir, "watch.md").read_text(), end="")
        return 0 if table["iterations"] else 1
    if args.submit:
        from d2ssl.engine.slurm import Resources

        if not args.weights and not args.dry_run:
            raise BenchmarkError("--submit needs --weights")
        resources = Resources(gpus_per_node=args.gpus_per_node, timeout_min=args.time,
                              partition=args.partition, account=args.account, cpus_per_task=10,
                              job_name=f"bench_{suite.name}")
        # Absolute paths: a job may start in another working directory.
        weights = os.path.abspath(args.weights) if os.path.isfile(args.weights) else args.weights
        base = ["--weights", weights, "--suite", os.path.abspath(suite.path), "--output-dir",
                os.path.abspath(output_dir), *(["--eval-seeds", *map(str, args.eval_seeds)]
                                               if args.eval_seeds else [])]
        num_gpus = args.num_gpus or args.gpus_per_node
        if args.dry_run:
            sys.stdout.write(sbatch_scripts(suite, base, args.log_folder, resources, num_gpus))
            return 0
        submitted = submit_suite(suite, base, args.log_folder, resources, num_gpus, args.cluster)
        for group, ids in submitted.items():
            print(f"{group}: submitted {', '.join(ids)}")
        return 0
    if args.tables_only:
        report = write_results(output_dir, suite)
    else:
        if not args.weights:
            raise BenchmarkError("give --weights (a checkpoint, zoo:<name> or 'random')")
        report = run_suite(args.weights, suite, output_dir, args.num_gpus, args.only)
    print(format_results(report), end="")
    print(f"\nwritten: {os.path.join(output_dir, RESULTS_JSON)}, {os.path.join(output_dir, RESULTS_MD)}")
    failed = [s for s in failed_steps(report) if not args.only or s in args.only]
    if failed:
        print(f"steps not done: {', '.join(failed)} (rerun the same command to retry them; done steps are "
              f"skipped)", file=sys.stderr)
    return 1 if failed else 0
