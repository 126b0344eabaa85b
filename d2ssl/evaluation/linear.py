"""Linear benchmarks (frozen trunk) and semi-supervised fine-tuning, trained with detectron2's loop.

``do_linear_benchmark(cfg, resume)`` is ``d2ssl.engine.train_loop.do_train`` with evaluation hooks: a
config (``configs/eval/*.py``) has a ``TrunkClassifier`` model (``d2ssl.evaluation.models``),
``dataloader.train`` (``build_ssl_train_loader``: resumable, exact), ``dataloader.test`` (detectron2's
``build_detection_test_loader``, sharded over processes) and ``dataloader.evaluator``
(``ClassificationEvaluator``). The trunk comes from ``train.weights_init`` (any layout
``d2ssl.checkpoint.load`` reads; the pretraining heads are not loaded); the classifier heads start
from their initialisation.

Every ``train.eval_period`` iterations and at the end, ``EvalHook`` runs ``inference_on_dataset`` on
``dataloader.test`` and, when there is one, on the validation split; top-1/top-5 of every head
(``<head>/top1``; ``val/<head>/top1``) and of the best head (``top1``; ``val/top1``) go to the event
storage (log, ``metrics.json``, TensorBoard).

What is reported, and what is selected (``summary.json`` in ``train.output_dir``, the return value):

- the headline is the LAST evaluation's test top-1/top-5 of every head (``scored_on: test``, no
  selection): VISSL logs every epoch and selects nothing; the last epoch is what the recipe trains;
- ``best`` is a separate, labelled figure. With a validation split (``dataloader.val.dataset``, or
  ``dataloader.val.fraction`` of every class of the training data held out from a seed,
  ``d2ssl.data.splits.holdout_split``), the evaluation with the highest val top-1 is selected, its
  test numbers reported, and ``model_best.pth`` keeps its weights. Without one, ``best`` is the highest
  test top-1 over the evaluations, labelled "best on test (optimistic, not for publication)", and no
  ``model_best.pth`` is written: ``model_final.pth`` is the reported model. JigClu / MoCo's
  ``main_lincls.py`` keeps ``best_acc1`` on its val loader, which is ImageNet val, the split it reports:
  that number is this optimistic one.

The scores are part of the trainer state, so a resumed run reports what an uninterrupted one reports.
``model.num_classes`` null is taken from the labels (``resolve_num_classes``); a number that disagrees
with the data is an error.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

from detectron2.config import instantiate
from detectron2.engine import hooks
from detectron2.evaluation import inference_on_dataset
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from omegaconf import DictConfig, OmegaConf

from d2ssl.config import dataset_shorthand, instantiate_dataset
from d2ssl.data.splits import holdout_split
from d2ssl.engine.checkpointer import AtomicCheckpointer
from d2ssl.engine.train_loop import allows_pickle, build_model, do_train, instantiate_with, setup_from_args
from d2ssl.evaluation.models import resolve_num_classes

logger = logging.getLogger("d2ssl")

BEST_METRIC = "top1"
VAL_PREFIX = "val/"
OPTIMISTIC = "best on test (optimistic, not for publication)"
SELECTED_ON_VAL = "selected on the validation split, scored on the test split"


class _BestFileCheckpointer(AtomicCheckpointer):
    """Writes ``model_best.pth`` without pointing ``last_checkpoint`` at it: resume must continue
    from the latest periodic checkpoint, not from the best one."""

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        pass


def _is_accuracy(key: str) -> bool:
    return key.rsplit("/", 1)[-1].startswith("top")


def validation_source(cfg: DictConfig) -> str | None:
    """What a linear benchmark config selects on: ``dataloader.val.dataset`` (a data set node or a
    ``folder:``/``list:``/``catalog:`` shorthand), or ``dataloader.val.fraction`` of every class of the
    training data (seed ``dataloader.val.seed``); ``None`` when it has no validation split."""
    val = OmegaConf.select(cfg, "dataloader.val", default=None)
    dataset = val.get("dataset") if val is not None else None
    fraction = float(val.get("fraction") or 0.0) if val is not None else 0.0
    if dataset is not None and fraction:
        raise ValueError(
            f"dataloader.val.dataset and dataloader.val.fraction={fraction} are both set: select on an "
            f"explicit validation data set or on a held-out fraction of the training data, not both "
            f"(set dataloader.val.fraction=0 or dataloader.val.dataset=null)")
    if dataset is not None:
        return "dataloader.val.dataset"
    if fraction:
        seed = int(val.get("seed") or 0)
        return (f"val: {fraction:g} of every class of dataloader.train.dataset held out from training "
                f"(seed {seed})")
    return None


class BestAccuracy(hooks.BestCheckpointer):
    """After each ``EvalHook`` run (detectron2's ``BestCheckpointer`` schedule) keeps, across resumes:

    - ``last_results``/``last_iter``: every accuracy of the latest evaluation (the headline);
    - ``best_results``/``best_iter``: every accuracy of the evaluation with the highest ``val_metric``
      (``val/top1`` when selecting on a validation split, else ``top1`` on test: labelled optimistic).

    ``save_best``: write ``model_best.pth`` at each new best (only when selecting on validation: a model
    chosen on the test split is not offered as "the best").
    """

    def __init__(self, eval_period: int, checkpointer, val_metric: str = BEST_METRIC, save_best: bool = True):
        super().__init__(eval_period, checkpointer, val_metric, mode="max")
        self.save_best = save_best
        self.best_results: dict[str, float] = {}
        self.last_results: dict[str, float] = {}
        self.last_iter: int | None = None

    def _best_checking(self) -> None:
        latest = self.trainer.storage.latest()
        if self._val_metric not in latest:
            raise KeyError(f"the evaluation logged no {self._val_metric!r}; logged: {sorted(latest)}")
        value, iteration = latest[self._val_metric]
        # Only this evaluation's scalars: the storage also holds older values of other keys.
        accuracies = {k: float(v) for k, (v, it) in latest.items() if _is_accuracy(k) and it == iteration}
        self.last_results, self.last_iter = accuracies, int(iteration)
        if not math.isfinite(value) or (self.best_metric is not None and value <= self.best_metric):
            self._logger.info(f"{self._val_metric} {value} is not better than {self.best_metric} "
                              f"(iteration {self.best_iter})")
            return
        # State first, then the file: model_best.pth holds the best scores it stands for.
        self.best_metric, self.best_iter, self.best_results = float(value), int(iteration), accuracies
        if self.save_best:
            self._checkpointer.save(self._file_prefix, iteration=iteration)
            self._logger.info(f"new best {self._val_metric} {value:.4f} at iteration {iteration}: saved "
                              f"{self._file_prefix}.pth")

    def state_dict(self) -> dict:
        return {"best_metric": self.best_metric, "best_iter": self.best_iter,
                "best_results": dict(self.best_results), "last_results": dict(self.last_results),
                "last_iter": self.last_iter}

    def load_state_dict(self, state: dict) -> None:
        self.best_metric, self.best_iter = state["best_metric"], state["best_iter"]
        self.best_results = dict(state["best_results"])
        self.last_results, self.last_iter = dict(state.get("last_results", {})), state.get("last_iter")

    def summary(self, selected_on: str | None) -> dict[str, Any]:
        """The headline (last evaluation's test numbers, with ``val/...`` beside them) at the top
        level, ``iteration``, ``selected_on``/``scored_on``, and ``best``: see the module docstring."""
        out: dict[str, Any] = dict(self.last_results)
        out.update(iteration=self.last_iter, rule="last evaluation (no selection)", scored_on="test")
        heads = {k.split("/")[0] for k in self.last_results
                 if k.count("/") == 1 and not k.startswith(VAL_PREFIX)}
        if len(heads) > 1:  # which head the top-level numbers are
            out["head_rule"] = ("top1/top5: the head with the highest val top-1" if selected_on else
                                "top1/top5: the head with the highest test top-1 (optimistic across heads; "
                                "<head>/top1 is each head's own)")
        best: dict[str, Any] = dict(self.best_results)
        best.update(iteration=self.best_iter, scored_on="test",
                    selected_on=selected_on or "test",
                    label=SELECTED_ON_VAL if selected_on else OPTIMISTIC,
                    model_best=bool(selected_on) and self.best_iter is not None)
        out.update(selected_on=selected_on, best=best)
        return out


class EvaluationHooks:
    """The linear benchmark's own hooks for ``do_train``: ``prepare`` (``prepare_dataset``) sets the
    validation split apart and ``model.num_classes``; the call builds ``EvalHook`` on ``dataloader.test``
    (and the validation split) every ``train.eval_period`` iterations and at the end, then
    ``BestAccuracy``; ``best`` is that hook once ``do_train`` built it."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.best: BestAccuracy | None = None
        self.selected_on = validation_source(cfg)
        self.val_dataset: list | None = None
        self.test_dataset: list | None = None

    def prepare(self, cfg: DictConfig, dataset: list) -> list:
        """The training data set without its held-out validation part; instantiates the validation
        and test data sets and resolves ``model.num_classes`` from all three."""
        val = cfg.dataloader.get("val")
        if self.selected_on == "dataloader.val.dataset":
            node = val.dataset
            node = dataset_shorthand(node) or node if isinstance(node, str) else node
            if isinstance(node, str):
                raise ValueError(f"dataloader.val.dataset={node!r}: expected a data set node or a "
                                 f"folder:PATH, list:FILE or catalog:NAME shorthand")
            self.val_dataset = instantiate_dataset(node, "dataloader.val.dataset")
        elif self.selected_on is not None:
            dataset, self.val_dataset = holdout_split(dataset, float(val.fraction), int(val.get("seed") or 0))
            logger.info("validation: %d images held out of the training data (%s), %d left to train on",
                        len(self.val_dataset), self.selected_on, len(dataset))
        self.test_dataset = instantiate_dataset(cfg.dataloader.test.dataset, "dataloader.test.dataset")
        labelled = {"dataloader.train.dataset": dataset, "dataloader.test.dataset": self.test_dataset}
        if self.val_dataset is not None:
            labelled["dataloader.val"] = self.val_dataset
        cfg.model.num_classes = resolve_num_classes(cfg.model.get("num_classes"), labelled)
        return dataset

    def __call__(self, trainer, model, checkpointer: AtomicCheckpointer) -> list:
        cfg = self.cfg
        if self.selected_on is not None and self.val_dataset is None:
            raise RuntimeError("EvaluationHooks.prepare was not called: pass it to do_train as "
                               "prepare_dataset so that the validation split is held out before training")
        if self.test_dataset is None:  # built without prepare (do_train called directly)
            self.test_dataset = instantiate_dataset(cfg.dataloader.test.dataset, "dataloader.test.dataset")
        test_loader = instantiate_with(cfg.dataloader.test, dataset=self.test_dataset)
        # The validation images go through the test view and loader settings.
        val_loader = (instantiate_with(cfg.dataloader.test, dataset=self.val_dataset)
                      if self.val_dataset is not None else None)
        evaluator = instantiate(cfg.dataloader.evaluator)
        eval_period = cfg.train.get("eval_period") or 0

        def evaluate() -> dict:
            results = inference_on_dataset(model, test_loader, evaluator)
            if val_loader is not None:
                val = inference_on_dataset(model, val_loader, evaluator)
                results[VAL_PREFIX.rstrip("/")] = val
                heads = sorted(h for h, v in val.items() if isinstance(v, dict))
                if heads:  # the top-level top1/top5: test numbers of the head that is best on val
                    results.update(results[max(heads, key=lambda h: val[h][BEST_METRIC])])
            return results

        best_file = _BestFileCheckpointer(model, cfg.train.output_dir, allow_pickle=checkpointer.allow_pickle,
                                          trainer=trainer)
        metric = VAL_PREFIX + BEST_METRIC if val_loader is not None else BEST_METRIC
        self.best = BestAccuracy(eval_period, best_file, metric, save_best=val_loader is not None)
        return [hooks.EvalHook(eval_period, evaluate), self.best]


def write_summary(summary: dict, output_dir: str) -> None:
    """``summary.json`` in ``output_dir`` (main process): the headline, ``selected_on``, ``scored_on``
    and the labelled ``best``."""
    if comm.is_main_process():
        PathManager.mkdirs(output_dir)
        with PathManager.open(os.path.join(output_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)


def do_linear_benchmark(cfg: DictConfig, resume: bool = False) -> dict[str, Any]:
    """Trains the classifier(s) of ``cfg`` and evaluates them; see the module docstring.

    Returns (and writes to ``summary.json``) ``{"top1": last evaluation's test top-1 (best head),
    "top5", "<head>/top1", ..., "val/top1", ... (with a validation split), "iteration", "rule",
    "scored_on": "test", "selected_on": the validation split or None, "best": {...,
    "selected_on", "scored_on", "label"}}`` (percent), the same on every process. With
    ``resume=True`` it continues from ``train.output_dir/last_checkpoint`` exactly (weights, optimizer,
    scheduler, data order, random state, scores).
    """
    evaluation = EvaluationHooks(cfg)
    do_train(cfg, resume=resume, extra_hooks=evaluation, prepare_dataset=evaluation.prepare)
    summary = evaluation.best.summary(evaluation.selected_on)
    logger.info("last evaluation (headline, test): top1 %s; best (%s): top1 %s at iteration %s",
                summary.get("top1"), summary["best"]["label"], summary["best"].get("top1"),
                summary["best"]["iteration"])
    write_summary(summary, cfg.train.output_dir)
    return summary


def main(args) -> dict[str, float]:
    """Entry point of ``tools/train_linear.py`` in each launched process (``--eval-only``: evaluate
    ``train.init_checkpoint`` or the resumed checkpoint without training)."""
    cfg = setup_from_args(args, run=not args.eval_only)  # an evaluation alone is not a run
    announce_trunk_source(cfg, random_trunk=getattr(args, "random_trunk", False))
    if args.eval_only:
        return evaluate_only(cfg, resume=args.resume)
    return do_linear_benchmark(cfg, resume=args.resume)


def announce_trunk_source(cfg: DictConfig, random_trunk: bool = False) -> None:
    """Says, once, when the trunk an evaluation tool will score has no weights: an INFO line
    ``random trunk (train.seed=S)`` where a random baseline is asked for (``--random-trunk``), else a
    WARNING naming the keys that give weights, since a number of a random trunk passed off as a
    pretrained one is the worst kind of wrong number.

    Raises:
        ValueError: ``random_trunk`` with weights given (the two contradict each other).
    """
    sources = [(key, OmegaConf.select(cfg, key, default="")) for key in
               ("train.weights_init.PARAMS_FILE", "train.init_checkpoint")]
    weights_key, weights = next(((key, value) for key, value in sources if value), ("", ""))
    seed = OmegaConf.select(cfg, "train.seed", default=None)
    if weights:
        if random_trunk:
            raise ValueError(
                f"--random-trunk asks for a random trunk, but {weights_key}={weights!r} gives weights: drop "
                f"--random-trunk, or clear {weights_key}= for a random baseline"
            )
        return
    if random_trunk:
        logger.info("random trunk (train.seed=%s): a random baseline, as --random-trunk asks", seed)
        return
    logger.warning(
        "no weights given (train.weights_init.PARAMS_FILE and train.init_checkpoint are empty): this "
        "evaluates a RANDOM trunk (train.seed=%s). Set train.weights_init.PARAMS_FILE=<checkpoint> (any "
        "layout) or train.init_checkpoint=<a d2ssl run's model_final.pth>; for a random baseline on "
        "purpose, pass --random-trunk", seed,
    )


def evaluate_only(cfg: DictConfig, resume: bool = False) -> dict:
    """Top-1/top-5 of the model in ``train.init_checkpoint`` (or ``output_dir``'s last checkpoint
    with ``resume``) on ``dataloader.test``."""
    test_dataset = instantiate_dataset(cfg.dataloader.test.dataset, "dataloader.test.dataset")
    if cfg.model.get("num_classes") in (None, "auto"):  # a set number is the trained model's own
        cfg.model.num_classes = resolve_num_classes(None, {"dataloader.test.dataset": test_dataset})
    model = build_model(cfg)
    checkpointer = AtomicCheckpointer(model, cfg.train.output_dir, allow_pickle=allows_pickle(cfg))
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    test_loader = instantiate_with(cfg.dataloader.test, dataset=test_dataset)
    evaluator = instantiate(cfg.dataloader.evaluator)
    results = inference_on_dataset(model, test_loader, evaluator)
    logger.info("evaluation: %s", results)
    return results
