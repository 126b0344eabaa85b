"""Detection fine-tuning of a pretrained trunk: detectron2's ``tools/lazyconfig_train_net.py`` recipe.

``train_detector`` trains and evaluates a detectron2 LazyConfig (``configs/detection/*.py``) with
detectron2's own data sets, trainer, hooks and evaluators. What it adds, and why:

- ``train.init_checkpoint`` may be any checkpoint ``d2ssl.checkpoint`` recognises (a d2ssl
  pretraining run, torchvision, VISSL, JigClu, MoCo): it is converted once to a detectron2 ``.pkl``
  in the output folder (``prepare_init_checkpoint``), since detectron2 would otherwise load a
  ``trunk.*``-named file into nothing, silently;
- ``train.precise_bn`` runs detectron2's ``PreciseBN`` before each evaluation, as the MoCo / VISSL /
  JigClu detection configs do (``TEST.PRECISE_BN.ENABLED``);
- the linear scaling of batch size and learning rate to the number of processes, as pretraining;
- the pretraining loop's trainer, checkpointer and hooks (``d2ssl.engine.train_loop.build_training``):
  atomic checkpoints, random states in checkpoints, a checkpoint on a stop signal; detectron2's
  detection loader restarts its stream on resume (the data order is not resumed exactly);

SyncBN ("SyncBN", ``torch.nn.SyncBatchNorm``) runs on a single CPU process as plain BatchNorm (it
synchronises only when a process group of several ranks exists), so the CPU configs keep the
protocol's norms.
"""

from __future__ import annotations

import logging
import os
import pickle

from detectron2.config import instantiate
from detectron2.engine import hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from omegaconf import DictConfig
from torch import nn

from d2ssl.checkpoint.export import to_detectron2
from d2ssl.checkpoint.layouts import find_trunk
from d2ssl.checkpoint.load import read_state_dict
from d2ssl.engine.checkpointer import AtomicCheckpointer
from d2ssl.engine.run_folder import config_digest, holding_run_folder
from d2ssl.engine.train_loop import (
    allows_pickle,
    build_model,
    build_training,
    run_training,
    scale_to_world_size,
    setup_from_args,
)
from d2ssl.utils.distributed import create_ddp_model
from d2ssl.utils.safe_io import atomic_write

logger = logging.getLogger("d2ssl")

# Keys of a whole detectron2 detector: such checkpoints are loaded as they are.
DETECTOR_KEY_PREFIXES = ("backbone.", "proposal_generator.", "roi_heads.")


def prepare_init_checkpoint(path: str, output_dir: str, allow_pickle: bool = False) -> str:
    """Returns a file ``DetectionCheckpointer`` loads with the pretrained trunk in place.

    ``.pkl`` files and whole detectron2 detectors are returned as they are; any other checkpoint
    whose ResNet ``d2ssl.checkpoint`` finds is written (atomically) as
    ``<output_dir>/<name>_detectron2.pkl``. ``allow_pickle``: see ``read_checkpoint``.
    """
    if not path or path.endswith(".pkl"):
        return path
    state_dict, _ = read_state_dict(path, allow_pickle=allow_pickle)
    if any(k.startswith(DETECTOR_KEY_PREFIXES) for k in state_dict):
        return path
    name = os.path.splitext(os.path.basename(path))[0]
    converted = os.path.join(output_dir, f"{name}_detectron2.pkl")
    if comm.is_main_process():
        trunk = find_trunk(state_dict)
        PathManager.mkdirs(output_dir)
        content = to_detectron2(trunk)
        atomic_write(converted, lambda f: pickle.dump(content, f), mode="wb", checksum=True)
        logger.info("converted %s (%s layout, %d tensors) to %s", path, trunk.layout, len(trunk.trunk),
                    converted)
    comm.synchronize()
    return converted


def evaluate_detector(cfg: DictConfig, model: nn.Module) -> dict:
    """Runs ``cfg.dataloader.evaluator`` on ``cfg.dataloader.test``; ``{}`` without an evaluator."""
    if "evaluator" not in cfg.dataloader:
        return {}
    results = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    if comm.is_main_process() and results:
        print_csv_format(results)
    return results


def train_detector(cfg: DictConfig, resume: bool = False) -> dict[str, float]:
    """Fine-tunes and evaluates the detector of ``cfg``; returns the latest logged scalars, including
    the final evaluation's (``bbox/AP``, ``bbox/AP50``, ...).

    With ``resume=True`` it continues from ``train.output_dir/last_checkpoint`` if there is one.
    """
    scale_to_world_size(cfg, comm.get_world_size())
    model = build_model(cfg)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)

    def evaluation_hooks(trainer, wrapped_model: nn.Module, checkpointer) -> list:
        precise_bn = cfg.train.get("precise_bn") or {}
        eval_period = cfg.train.get("eval_period", 0)
        precise_bn_hook = None
        if precise_bn.get("enabled"):
            # Its own loader over the training set, as detectron2's DefaultTrainer does.
            bn_loader = instantiate(cfg.dataloader.train)
            precise_bn_hook = hooks.PreciseBN(eval_period, wrapped_model, bn_loader,
                                              precise_bn.get("num_iter", 200))
        # PreciseBN first, so each evaluation sees the recomputed statistics; both before the periodic
        # checkpointer, so a checkpoint holds them (detectron2's DefaultTrainer: PreciseBN before it).
        return [precise_bn_hook, hooks.EvalHook(eval_period, lambda: evaluate_detector(cfg, wrapped_model))]

    # The folder is the run's (run_folder) before the writers open metrics.json in it.
    with holding_run_folder(cfg.train.output_dir, resume=resume, digest=config_digest(cfg)):
        trainer, checkpointer = build_training(cfg, model, instantiate(cfg.dataloader.train), optimizer,
                                               extra_hooks=evaluation_hooks)
        init = "" if resume and checkpointer.has_checkpoint() else cfg.train.init_checkpoint
        init = prepare_init_checkpoint(init, cfg.train.output_dir, allow_pickle=allows_pickle(cfg))
        return run_training(cfg, trainer, checkpointer, resume, init_checkpoint=init)


def main(args) -> dict:
    """Entry point of ``tools/train_detection.py`` in each launched process."""
    cfg = setup_from_args(args, run=not args.eval_only)  # an evaluation alone is not a run
    if not args.eval_only:
        return train_detector(cfg, resume=args.resume)
    model = create_ddp_model(build_model(cfg), cfg.train.device)
    allow_pickle = allows_pickle(cfg)
    AtomicCheckpointer(model, cfg.train.output_dir, allow_pickle=allow_pickle).load(
        prepare_init_checkpoint(cfg.train.init_checkpoint, cfg.train.output_dir, allow_pickle=allow_pickle)
    )
    return evaluate_detector(cfg, model)
