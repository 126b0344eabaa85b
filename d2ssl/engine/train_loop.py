"""The pretraining loop: detectron2's ``lazyconfig_train_net`` recipe plus what SSL runs need.

What is added to detectron2's recipe, and why:
- the data set is instantiated first, so that every ``num_train_samples: -1`` in the model config
  (the NCE memory bank size) is filled with its length, as VISSL's trainer does;
- ``train.epochs`` (optional) sets ``max_iter`` from the data set size and batch size;
- linear learning-rate scaling to the actual number of processes (``scale_to_world_size``);
- exact resume: atomic checkpoints, the sampler restarted at the resumed iteration, RNG states saved.

Its pieces are the one training setup of the project: the linear benchmark and semi-supervised
fine-tuning call ``do_train`` with their evaluation hooks (``extra_hooks``); detection fine-tuning
builds detectron2's loader itself and uses ``build_model``, ``build_training`` and ``run_training``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import AMPTrainer, HookBase, SimpleTrainer, default_setup, default_writers, hooks
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from detectron2.utils.registry import locate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from d2ssl.checkpoint.load import check_one_trunk_source, load_weights_init
from d2ssl.config import (
    check_num_train_samples,
    dataset_shorthand,
    instantiate_dataset,
    resolve_target,
    validate_config,
)
from d2ssl.data.build import ResumableTrainingSampler
from d2ssl.engine.checkpointer import AtomicCheckpointer
from d2ssl.engine.hooks import PeriodicCheckpointer, RandomStateCheckpoint, ResumeDataOrder, instantiate_hook
from d2ssl.engine.preemption import StopOnSignal
from d2ssl.engine.run_folder import (
    claim_run_folder,
    config_digest,
    holding_run_folder,
    log_claim,
    note_max_iter,
)
from d2ssl.utils.distributed import create_ddp_model

logger = logging.getLogger("d2ssl")


def scale_to_world_size(cfg: DictConfig, world_size: int) -> None:
    """Linear scaling rule (Goyal et al. 2017), applied like detectron2's ``auto_scale_workers``.

    The config's ``dataloader.train.total_batch_size`` and ``optimizer.lr`` are written for
    ``train.reference_world_size`` processes. On ``world_size`` processes, the batch size and the
    learning rate are multiplied by ``world_size / reference_world_size`` and an iteration-based
    ``max_iter`` divided by it, so the number of epochs is unchanged. ``reference_world_size=0``
    turns scaling off. VISSL's ``auto_scale`` does the same from a base batch size of 256.
    """
    reference = cfg.train.get("reference_world_size", 0)
    if not reference or reference == world_size:
        return
    factor = world_size / reference
    batch = cfg.dataloader.train.total_batch_size
    new_batch = int(round(batch * factor))
    if new_batch < 1 or abs(new_batch - batch * factor) > 1e-6:
        raise ValueError(
            f"cannot scale dataloader.train.total_batch_size={batch} from train.reference_world_size="
            f"{reference} to {world_size} processes; set train.reference_world_size=0 to disable scaling"
        )
    cfg.dataloader.train.total_batch_size = new_batch
    cfg.optimizer.lr = cfg.optimizer.lr * factor
    if cfg.train.get("epochs") is None:
        cfg.train.max_iter = int(round(cfg.train.max_iter / factor))
    logger.info(
        "linear scaling for %d processes (config written for %d): total_batch_size %d -> %d, lr x%.4g",
        world_size, reference, batch, new_batch, factor,
    )


def fill_num_train_samples(node: Any, num_samples: int) -> int:
    """Sets every ``num_train_samples`` left at -1 (or None) under ``node`` to ``num_samples``."""
    filled = 0
    if isinstance(node, DictConfig):
        for key in node.keys():
            value = node[key]
            if key == "num_train_samples" and (value is None or value == -1):
                node[key] = num_samples
                filled += 1
            else:
                filled += fill_num_train_samples(value, num_samples)
    elif isinstance(node, ListConfig):
        for value in node:
            filled += fill_num_train_samples(value, num_samples)
    return filled


def setup_config(config_file: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Loads a LazyConfig, applies ``key=value`` overrides and checks it (unknown keys fail here)."""
    cfg = LazyConfig.load(config_file)
    cfg = apply_overrides(cfg, overrides, config_file)
    validate_config(cfg, config_file)
    check_one_trunk_source(cfg.get("train"))  # before any work: a data set listing can take minutes
    return cfg


def _settable_keys(node: Any) -> list[str]:
    """Keys of a config node, plus, for an ``L(callable)(...)`` node, the callable's other named
    arguments (those left at their defaults in the config file may be set from the command line)."""
    if not isinstance(node, (DictConfig, dict)):
        return []
    keys = set(node.keys())
    if "_target_" in node:
        params = (resolve_target(node)[1] or {}).values()
        keys |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return sorted(keys)


def apply_overrides(cfg: DictConfig, overrides, config_file: str = "<config>") -> DictConfig:
    """``LazyConfig.apply_overrides`` that refuses keys absent from the config (a typo would
    otherwise add a new key silently); arguments of an ``L(callable)`` left at their defaults in the
    config file are accepted. A data set node set to a shorthand (``dataloader.train.dataset=folder:PATH``,
    ``list:FILE``, ``catalog:NAME[,NAME...]``, see ``d2ssl.config.dataset_shorthand``) is replaced whole.
    Overrides apply in order, so later ones may set arguments of a node an earlier one replaced."""
    for override in overrides:
        if "=" not in override:
            raise ValueError(f"override {override!r} must have the form key=value (flags start with --)")
        key, value = (part.strip() for part in override.split("=", 1))
        node, parts = cfg, key.split(".")
        for i, part in enumerate(parts):
            if isinstance(node, (DictConfig, dict)) and part not in node and i == len(parts) - 1 \
                    and part in _settable_keys(node):
                node = None  # an argument the config leaves at the callable's default
                break
            if not isinstance(node, (DictConfig, dict)) or part not in node:
                have = _settable_keys(node)
                raise KeyError(
                    f"unknown config key {'.'.join(parts[: i + 1])!r} in override {override!r} for "
                    f"{config_file}; keys there: {have}"
                )
            node = node[part]
        # Only a node the config holds (a data set call), not a plain value, is replaced by a shorthand.
        shorthand = dataset_shorthand(value, node) if isinstance(node, DictConfig) else None
        if shorthand is not None:
            parent = OmegaConf.select(cfg, key.rsplit(".", 1)[0]) if "." in key else cfg
            parent[key.rsplit(".", 1)[-1]] = shorthand
        else:
            cfg = LazyConfig.apply_overrides(cfg, [override])
    return cfg


def instantiate_with(node: DictConfig, **objects: Any) -> Any:
    """``instantiate(node)`` with some arguments given as already-built objects.

    Used for the data set: a list of thousands of dicts must not be put back into the OmegaConf tree,
    which would convert every element.
    """
    target = node._target_
    target = locate(target) if isinstance(target, str) else target
    kwargs = {k: instantiate(v) for k, v in node.items() if k != "_target_" and k not in objects}
    return target(**kwargs, **objects)


class Autocast(nn.Module):
    """Runs ``model``'s forward (losses included) under ``torch.autocast(device_type, dtype)``.

    detectron2's ``AMPTrainer`` asserts CUDA; on CPU, ``SimpleTrainer`` drives this wrapper instead
    (bfloat16 has float32's range: no loss scaling). Only the trainer sees the wrapper; the
    checkpointer keeps the bare (or DDP) model, so checkpoints are unchanged.
    """

    def __init__(self, model: nn.Module, device_type: str, dtype: torch.dtype):
        super().__init__()
        self.module = model
        self.device_type = device_type
        self.dtype = dtype

    def forward(self, *args, **kwargs):
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.module(*args, **kwargs)


def build_trainer(model: nn.Module, data_loader, optimizer, train_cfg: DictConfig) -> SimpleTrainer:
    """``SimpleTrainer``, or with ``train.amp.enabled`` mixed precision: detectron2's ``AMPTrainer``
    (``train.amp.precision``, default float16) on CUDA; on CPU bfloat16 autocast (``Autocast``)."""
    amp = train_cfg.amp
    if not amp.enabled:
        return SimpleTrainer(model, data_loader, optimizer)
    device_type = torch.device(train_cfg.device).type
    precision = amp.get("precision") or ("float16" if device_type == "cuda" else "bfloat16")
    if device_type == "cuda":
        return AMPTrainer(model, data_loader, optimizer, precision=getattr(torch, precision))
    if precision != "bfloat16":
        raise ValueError(
            f"train.amp.precision={precision!r} on {train_cfg.device}: CPU autocast needs bfloat16"
        )
    return SimpleTrainer(Autocast(model, device_type, torch.bfloat16), data_loader, optimizer)


ExtraHooks = Callable[[SimpleTrainer, nn.Module, AtomicCheckpointer], Sequence[HookBase | None]]
"""Builds a run's own hooks from its trainer, its (DDP-wrapped) model and its checkpointer."""


def build_model(cfg: DictConfig) -> nn.Module:
    """``cfg.model`` instantiated, with the trunk weights of ``train.weights_init`` (if any), on
    ``train.device`` (in channels-last memory format with ``train.channels_last``). Refuses
    ``train.weights_init.PARAMS_FILE`` and ``train.init_checkpoint`` both set (``check_one_trunk_source``)."""
    check_one_trunk_source(cfg.train)
    model = instantiate(cfg.model)
    logger.info("Model:\n%s", model)
    # Trunk weights from another run or code base; resume overrides them.
    load_weights_init(model, cfg.train.get("weights_init"))
    model.to(cfg.train.device)
    if cfg.train.get("channels_last"):
        model.to(memory_format=torch.channels_last)
    return model


def build_training(
    cfg: DictConfig, model: nn.Module, data_loader, optimizer: torch.optim.Optimizer,
    extra_hooks: ExtraHooks | None = None,
) -> tuple[SimpleTrainer, AtomicCheckpointer]:
    """The trainer of ``model`` (wrapped by ``create_ddp_model``; ``build_trainer``), its
    ``AtomicCheckpointer`` on ``train.output_dir`` and the standard hooks, in this order: iteration
    timer, data order (where the loader's sampler is a ``ResumableTrainingSampler``; detectron2's
    detection loaders restart their stream), random states, LR scheduler, the hooks
    ``extra_hooks(trainer, model, checkpointer)`` returns, periodic checkpointer, kNN monitor
    (``train.knn_monitor``, a lazy call: ``d2ssl.evaluation.knn_monitor``), writers, stop on signal.

    The extra hooks run before the periodic checkpointer, so a checkpoint written at their iteration
    holds what they changed (best scores, PreciseBN statistics).
    """
    model = create_ddp_model(model, cfg.train.device, **cfg.train.ddp)
    trainer = build_trainer(model, data_loader, optimizer, cfg.train)
    checkpointer = AtomicCheckpointer(model, cfg.train.output_dir, allow_pickle=allows_pickle(cfg),
                                      trainer=trainer)
    sampler = getattr(getattr(data_loader, "batch_sampler", None), "sampler", None)
    data_order = ResumeDataOrder(sampler) if isinstance(sampler, ResumableTrainingSampler) else None
    if data_order is None:
        logger.info("the training loader's sampler (%s) is not resumable: a resumed run restarts its data "
                    "stream", type(sampler).__name__)
    random_states = RandomStateCheckpoint(period=cfg.train.checkpointer.period)
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            data_order,
            random_states,
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            *(extra_hooks(trainer, model, checkpointer) if extra_hooks is not None else ()),
            PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
            # A lazy call (configs/common/train.py): the monitor lives in d2ssl.evaluation, which the
            # engine never imports.
            instantiate_hook(cfg.train.get("knn_monitor"), "train.knn_monitor"),
            hooks.PeriodicWriter(
                default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period
            )
            if comm.is_main_process()
            else None,
            # Last: on SIGTERM/SIGUSR2 (preemption), a checkpoint of the current iteration, then stop.
            StopOnSignal(checkpointer if comm.is_main_process() else None, random_states),
        ]
    )
    return trainer, checkpointer


def run_training(
    cfg: DictConfig, trainer: SimpleTrainer, checkpointer: AtomicCheckpointer, resume: bool = False,
    init_checkpoint: str | None = None,
) -> dict[str, float]:
    """Resumes from ``train.output_dir/last_checkpoint`` (``resume`` and there is one) or initialises
    the model from ``init_checkpoint`` (default ``train.init_checkpoint``), trains up to
    ``train.max_iter`` and returns the latest logged scalars."""
    init = cfg.train.init_checkpoint if init_checkpoint is None else init_checkpoint
    checkpointer.resume_or_load(init, resume=resume)
    resumed, run = checkpointer.resumed, checkpointer.run
    if run is not None:  # the max_iter the resumed checkpoint trained towards: its own, else run.json's
        before = (resumed.max_iter if resumed.max_iter is not None else run.max_iter) if resumed else None
        note_max_iter(run, cfg.train.max_iter, before)
    # The checkpoint stores the iteration that just finished: continue with the next one.
    start_iter = trainer.iter + 1 if resumed is not None else 0
    trainer.train(start_iter, cfg.train.max_iter)
    return {k: v[0] for k, v in trainer.storage.latest().items()}


def do_train(
    cfg: DictConfig, resume: bool = False, extra_hooks: ExtraHooks | None = None,
    prepare_dataset: Callable[[DictConfig, list], list] | None = None,
) -> dict[str, float]:
    """Trains ``cfg`` (a LazyConfig with ``model``, ``dataloader.train``, ``optimizer``,
    ``lr_multiplier``, ``train``) and returns the latest logged scalars.

    With ``resume=True`` it continues from ``train.output_dir/last_checkpoint`` if there is one:
    model (memory bank included), optimizer, scheduler, iteration, data order and random state.
    ``extra_hooks``: a run's own hooks (e.g. evaluation, see ``build_training``).
    ``prepare_dataset(cfg, dataset)``: the training data set to use, called before the model is built
    (the linear benchmark holds out its validation split and sets ``model.num_classes`` there).
    """
    scale_to_world_size(cfg, comm.get_world_size())
    dataset = instantiate_dataset(cfg.dataloader.train.dataset, "dataloader.train.dataset")
    if prepare_dataset is not None:
        dataset = prepare_dataset(cfg, dataset)
    fill_num_train_samples(cfg.model, len(dataset))
    check_num_train_samples(cfg.model, len(dataset))
    if cfg.train.get("epochs") is not None:
        batch = cfg.dataloader.train.total_batch_size
        cfg.train.max_iter = math.ceil(cfg.train.epochs * len(dataset) / batch)
    logger.info("training on %d images for %d iterations", len(dataset), cfg.train.max_iter)

    model = build_model(cfg)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    optimized = [p for g in optimizer.param_groups for p in g["params"]]
    logger.info("optimizing %d tensors (%d values)", len(optimized), sum(p.numel() for p in optimized))
    train_loader = instantiate_with(cfg.dataloader.train, dataset=dataset)
    # The folder is the run's (run_folder) before the writers open metrics.json in it.
    with holding_run_folder(cfg.train.output_dir, resume=resume, digest=config_digest(cfg)):
        trainer, checkpointer = build_training(cfg, model, train_loader, optimizer, extra_hooks)
        return run_training(cfg, trainer, checkpointer, resume)


def allows_pickle(cfg: DictConfig) -> bool:
    """``train.weights_init.ALLOW_PICKLE`` (``--allow-pickle``): whether weights_init, init_checkpoint
    and resume may unpickle Python objects besides tensors, which runs code stored in the files."""
    return bool(OmegaConf.select(cfg, "train.weights_init.ALLOW_PICKLE", default=False))


def setup_from_args(args, run: bool = False) -> DictConfig:
    """Config of a launched process: loaded, overridden and checked, then detectron2's
    ``default_setup`` (output dir, config.yaml, seeding, loggers) plus d2ssl's own logger.

    ``run``: the tool trains a run in ``train.output_dir``, which is claimed first
    (``d2ssl.engine.run_folder.claim_run_folder`` with ``--resume`` / ``--start-over``), before
    ``default_setup`` writes config.yaml and the log there: a refused run leaves the folder as it was."""
    cfg = setup_config(args.config_file, args.opts)
    if getattr(args, "allow_pickle", False):  # --allow-pickle
        OmegaConf.update(cfg, "train.weights_init.ALLOW_PICKLE", True, force_add=True)
    claimed = claim_run_folder(cfg.train.output_dir, resume=args.resume, start_over=getattr(
        args, "start_over", False), digest=config_digest(cfg)) if run else None
    default_setup(cfg, args)
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="d2ssl")
    if claimed is not None:
        log_claim(claimed)
    return cfg


def main(args) -> dict[str, float]:
    """Entry point of ``tools/train_net.py`` in each launched process."""
    cfg = setup_from_args(args, run=True)
    # Unlocked at the end, even where training never starts (a bad data path).
    with holding_run_folder(cfg.train.output_dir, resume=args.resume):
        return do_train(cfg, resume=args.resume)
