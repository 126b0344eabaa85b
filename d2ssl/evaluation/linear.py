"""Linear benchmarks (frozen trunk) and semi-supervised fine-tuning, trained with detectron2's loop.

``do_linear_benchmark(cfg, resume)`` is ``d2ssl.engine.train_loop.do_train`` with evaluation hooks: a
config (``configs/eval/*.py``) has a ``TrunkClassifier`` model (``d2ssl.evaluation.models``),
``dataloader.train`` (``build_ssl_train_loader``: resumable, exact), ``dataloader.test`` (detectron2's
``build_detection_test_loader``, sharded over processes) and ``dataloader.evaluator``
(``ClassificationEvaluator``). The trunk comes from ``train.weights_init`` (any layout
``d2ssl.checkpoint.load`` reads; the pretraining heads are not loaded); the classifier heads start
from their initialisation.

Every ``train.eval_period`` iterations and at the end, ``EvalHook`` runs ``inference_on_dataset``;
top-1/top-5 of every head (``<head>/top1``) and of the best head (``top1``) go to the event storage
(log, ``metrics.json``, TensorBoard) and ``model_best.pth`` keeps the weights of the best ``top1``.
The best scores are part of the trainer state, so a resumed run reports what an uninterrupted one
reports.
"""

from __future__ import annotations

import logging
import math

from detectron2.config import instantiate
from detectron2.engine import hooks
from detectron2.evaluation import inference_on_dataset
from omegaconf import DictConfig

from d2ssl.config import instantiate_dataset
from d2ssl.engine.checkpointer import AtomicCheckpointer
from d2ssl.engine.train_loop import allows_pickle, build_model, do_train, instantiate_with, setup_from_args

logger = logging.getLogger("d2ssl")

BEST_METRIC = "top1"


class _BestFileCheckpointer(AtomicCheckpointer):
    """Writes ``model_best.pth`` without pointing ``last_checkpoint`` at it: resume must continue
    from the latest periodic checkpoint, not from the best one."""

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        pass


def _is_accuracy(key: str) -> bool:
    return key.rsplit("/", 1)[-1].startswith("top")


class BestAccuracy(hooks.BestCheckpointer):
    """detectron2's ``BestCheckpointer`` on ``top1`` (same schedule: after each ``EvalHook`` run) that
    updates its state before writing ``model_best.pth`` and keeps, across resumes:

    - ``best_results``: every accuracy logged at the best ``top1`` evaluation (``top5`` included);
    - ``best_per_key``: the highest value of each accuracy over all evaluations (VISSL reports the
      best epoch of every layer separately).
    """

    def __init__(self, eval_period: int, checkpointer, val_metric: str = BEST_METRIC):
        super().__init__(eval_period, checkpointer, val_metric, mode="max")
        self.best_results: dict[str, float] = {}
        self.best_per_key: dict[str, float] = {}

    def _best_checking(self) -> None:
        latest = self.trainer.storage.latest()
        if self._val_metric not in latest:
            raise KeyError(f"the evaluation logged no {self._val_metric!r}; logged: {sorted(latest)}")
        value, iteration = latest[self._val_metric]
        accuracies = {k: float(v) for k, (v, _) in latest.items() if _is_accuracy(k)}
        for k, v in accuracies.items():
            self.best_per_key[k] = max(v, self.best_per_key.get(k, -math.inf))
        if not math.isfinite(value) or (self.best_metric is not None and value <= self.best_metric):
            self._logger.info(f"{self._val_metric} {value} is not better than {self.best_metric} "
                              f"(iteration {self.best_iter})")
            return
        # State first, then the file: model_best.pth holds the best scores it stands for.
        self.best_metric, self.best_iter, self.best_results = float(value), int(iteration), accuracies
        self._checkpointer.save(self._file_prefix, iteration=iteration)
        self._logger.info(f"new best {self._val_metric} {value:.4f} at iteration {iteration}: saved "
                          f"{self._file_prefix}.pth")

    def state_dict(self) -> dict:
        return {"best_metric": self.best_metric, "best_iter": self.best_iter,
                "best_results": dict(self.best_results), "best_per_key": dict(self.best_per_key)}

    def load_state_dict(self, state: dict) -> None:
        self.best_metric, self.best_iter = state["best_metric"], state["best_iter"]
        self.best_results, self.best_per_key = dict(state["best_results"]), dict(state["best_per_key"])

    def summary(self) -> dict[str, float]:
        """``top1``/``top5`` of the best evaluation, then each ``<head>/topk`` at its own best."""
        out = {k: v for k, v in self.best_results.items() if "/" not in k}
        out.update({k: v for k, v in self.best_per_key.items() if "/" in k})
        if self.best_iter is not None:
            out["best_iter"] = float(self.best_iter)
        return out


class EvaluationHooks:
    """The linear benchmark's own hooks for ``do_train`` (``extra_hooks``): ``EvalHook`` on
    ``dataloader.test`` every ``train.eval_period`` iterations and at the end, then ``BestAccuracy``
    (``model_best.pth``); ``best`` is that hook once ``do_train`` built it."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.best: BestAccuracy | None = None

    def __call__(self, trainer, model, checkpointer: AtomicCheckpointer) -> list:
        cfg = self.cfg
        test_loader = instantiate_with(cfg.dataloader.test, dataset=instantiate_dataset(
            cfg.dataloader.test.dataset, "dataloader.test.dataset"))
        evaluator = instantiate(cfg.dataloader.evaluator)
        eval_period = cfg.train.get("eval_period") or 0
        best_file = _BestFileCheckpointer(model, cfg.train.output_dir, allow_pickle=checkpointer.allow_pickle,
                                          trainer=trainer)
        self.best = BestAccuracy(eval_period, best_file)
        return [hooks.EvalHook(eval_period, lambda: inference_on_dataset(model, test_loader, evaluator)),
                self.best]


def do_linear_benchmark(cfg: DictConfig, resume: bool = False) -> dict[str, float]:
    """Trains the classifier(s) of ``cfg`` and evaluates them; see the module docstring.

    Returns ``{"top1": best validation top-1 (best head), "top5": top-5 of that evaluation,
    "<head>/top1": best top-1 of each head, ..., "best_iter": ...}`` (percent), the same on every
    process. With ``resume=True`` it continues from ``train.output_dir/last_checkpoint`` exactly
    (weights, optimizer, scheduler, data order, random state, best scores).
    """
    evaluation = EvaluationHooks(cfg)
    do_train(cfg, resume=resume, extra_hooks=evaluation)
    summary = evaluation.best.summary()
    logger.info("best validation accuracy: %s", summary)
    return summary


def main(args) -> dict[str, float]:
    """Entry point of ``tools/train_linear.py`` in each launched process (``--eval-only``: evaluate
    ``train.init_checkpoint`` or the resumed checkpoint without training)."""
    cfg = setup_from_args(args)
    if args.eval_only:
        return evaluate_only(cfg, resume=args.resume)
    return do_linear_benchmark(cfg, resume=args.resume)


def evaluate_only(cfg: DictConfig, resume: bool = False) -> dict:
    """Top-1/top-5 of the model in ``train.init_checkpoint`` (or ``output_dir``'s last checkpoint
    with ``resume``) on ``dataloader.test``."""
    model = build_model(cfg)
    checkpointer = AtomicCheckpointer(model, cfg.train.output_dir, allow_pickle=allows_pickle(cfg))
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    test_loader, evaluator = instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    results = inference_on_dataset(model, test_loader, evaluator)
    logger.info("evaluation: %s", results)
    return results
