"""Training hooks that make a d2ssl run resume exactly and keep its checkpoints safe."""

from __future__ import annotations

import logging
import os
import random
import re
from collections.abc import Mapping

import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.engine import HookBase, hooks
from detectron2.utils import comm

from d2ssl.config import ConfigError
from d2ssl.engine.run_folder import checkpoint_identity

logger = logging.getLogger(__name__)


class ResumeDataOrder(HookBase):
    """Before training starts (at iteration 0 or after a resume), moves the loader's
    ``ResumableTrainingSampler`` to the trainer's start iteration, so the resumed run sees the
    samples and augmentations an uninterrupted run would.

    Its state (data set size, batch size, seed, number of processes) goes into checkpoints: resuming
    on a data set of another size is an error (the stream, and NPID/PIRL memory-bank indices, would
    not continue); another batch size or seed only warns, since the run can go on, just not
    identically. On another number of processes with the same total batch size, every step reads the
    same global batch (only its split over the ranks changes); with another total batch size too
    (linear scaling to the new world size), the resumed stream would skip or repeat images: refused.
    """

    def __init__(self, sampler):
        self.sampler = sampler

    def before_train(self) -> None:
        self.sampler.set_start_iter(self.trainer.iter)

    def state_dict(self) -> dict:
        return {
            "dataset_size": self.sampler.size,
            "total_batch_size": self.sampler.total_batch_size,
            "seed": self.sampler.seed,
            "world_size": self.sampler.world_size,
        }

    def load_state_dict(self, state: dict) -> None:
        if state["dataset_size"] != self.sampler.size:
            raise ValueError(
                f"the checkpoint was trained on a data set of {state['dataset_size']} images, this run has "
                f"{self.sampler.size}: resume needs the same data set (use train.init_checkpoint to start "
                f"a new run from its weights)"
            )
        world_size = state.get("world_size", self.sampler.world_size)  # absent in older checkpoints
        if world_size != self.sampler.world_size:
            if state["total_batch_size"] != self.sampler.total_batch_size:
                raise ValueError(
                    f"the checkpoint was trained with dataloader.train.total_batch_size="
                    f"{state['total_batch_size']} on {world_size} processes, this run has "
                    f"total_batch_size={self.sampler.total_batch_size} on {self.sampler.world_size}: resume "
                    f"on another number of processes needs the same total batch size (set "
                    f"dataloader.train.total_batch_size={state['total_batch_size']} and "
                    f"train.reference_world_size=0), or start a new run with train.init_checkpoint"
                )
            logger.warning(
                "resuming a run of %d processes on %d: the same images per step (data order exact), split "
                "differently over the ranks", world_size, self.sampler.world_size,
            )
        for key, now in (("total_batch_size", self.sampler.total_batch_size), ("seed", self.sampler.seed)):
            if state[key] != now:
                logger.warning(
                    "resuming with dataloader.train.%s=%s, the checkpoint's run used %s: the data order "
                    "will differ from an uninterrupted run", key, now, state[key],
                )


def capture_random_state() -> dict:
    """This process's python/numpy/torch(/CUDA) random states, in types that
    ``torch.load(weights_only=True)`` accepts (no numpy arrays)."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_random_state(state: dict) -> None:
    """Inverse of ``capture_random_state``."""
    random.setstate(state["python"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["bit_generator"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RandomStateCheckpoint(HookBase):
    """Stores the random states of the training processes in every checkpoint (the trainer saves the
    ``state_dict`` of its hooks) and restores them on resume, so random choices made inside the
    model (e.g. NCE negatives) continue identically.

    Each rank has its own state (detectron2 seeds rank ``r`` with ``seed + r``) but only the main
    process writes checkpoints: at every checkpoint iteration (each ``period``-th and the last, as
    ``PeriodicCheckpointer``) the states of all ranks are gathered to it, and on resume each rank
    restores its own. Resuming on another number of processes keeps the freshly seeded states.
    """

    def __init__(self, period: int | None = None):
        self.period = period
        self._gathered: list[dict] | None = None

    def after_step(self) -> None:
        if comm.get_world_size() == 1 or not self.period:
            return
        next_iter = self.trainer.iter + 1
        if next_iter % self.period == 0 or next_iter >= self.trainer.max_iter:
            self.gather()

    def gather(self) -> None:
        """Gathers every rank's random state for the next checkpoint (a collective: all ranks call
        it; also at a checkpoint outside the period, ``d2ssl.engine.preemption.StopOnSignal``)."""
        if comm.get_world_size() > 1:
            self._gathered = comm.all_gather(capture_random_state())

    def state_dict(self) -> dict:
        if comm.get_world_size() > 1 and self._gathered is not None:
            return {"ranks": self._gathered}
        return {"ranks": [capture_random_state()]}

    def load_state_dict(self, state: dict) -> None:
        ranks, world_size = state["ranks"], comm.get_world_size()
        if len(ranks) != world_size:
            logger.warning(
                "the checkpoint holds the random states of %d processes, this run has %d: random choices "
                "will differ from an uninterrupted run", len(ranks), world_size,
            )
            return
        restore_random_state(ranks[comm.get_rank()])


class PeriodicCheckpointer(hooks.PeriodicCheckpointer):
    """detectron2's periodic checkpointer, with two guarantees added:

    - ``max_to_keep`` holds across restarts: the periodic checkpoints already in the output folder
      (up to the resumed iteration) count towards it, so a run resumed many times still keeps K;
    - after training stopped on an exception (e.g. a non-finite loss), ``after_train`` writes
      nothing, whatever the base class would do there, so the last good checkpoint stays the last.
    """

    def before_train(self) -> None:
        super().before_train()
        if self.max_to_keep is not None:
            self.recent_checkpoints = self._existing_periodic_checkpoints(before_iter=self.trainer.iter)

    def step(self, iteration: int, **kwargs) -> None:
        super().step(iteration, **kwargs)
        if self.max_to_keep is not None:
            while len(self.recent_checkpoints) > self.max_to_keep:
                stale = self.recent_checkpoints.pop(0)
                if self.path_manager.exists(stale):
                    self.path_manager.rm(stale)

    def after_train(self) -> None:
        # detectron2's loop leaves iter at max_iter (or beyond) only when every step succeeded.
        if self.trainer.iter < self.trainer.max_iter:
            logger.warning(
                "training stopped at iteration %d by an exception: no checkpoint written after it "
                "(last complete checkpoint: %s)",
                self.trainer.iter, self.checkpointer.get_checkpoint_file() or "none",
            )
            return
        super().after_train()

    def _existing_periodic_checkpoints(self, before_iter: int) -> list[str]:
        save_dir = self.checkpointer.save_dir
        if not save_dir or not self.path_manager.isdir(save_dir):
            return []
        pattern = re.compile(rf"^{re.escape(self.file_prefix)}_(\d+)\.pth$")
        # Only this run's files count (and may be deleted): the run id each stores (run_folder).
        run = getattr(self.checkpointer, "run", None)
        found = []
        for name in self.path_manager.ls(save_dir):
            match = pattern.match(name)
            if match and int(match.group(1)) < before_iter:
                path = os.path.join(save_dir, name)
                if run is None or run.owns(checkpoint_identity(path).run_id):
                    found.append((int(match.group(1)), path))
        return [path for _, path in sorted(found)]


def instantiate_hook(node, key: str) -> HookBase | None:
    """The hook a config's lazy call ``node`` at ``key`` builds (``None``: no node, a node whose
    ``period`` is 0, or a call that returns no hook).

    Hooks that evaluate during training (``d2ssl.evaluation.knn_monitor``) build on the engine; the
    config names them as ``L(...)`` calls so that the engine instantiates them without importing
    ``d2ssl.evaluation`` (imports run one way: evaluation -> engine).
    """
    if node is None:
        return None
    if not isinstance(node, Mapping) or "_target_" not in node:
        raise ConfigError(
            f"{key} must be a lazy call that returns a training hook or None, such as "
            f"L(build_knn_monitor)(period=..., ...) from d2ssl.evaluation.knn_monitor (see "
            f"configs/common/train.py), or null; got {node!r}"
        )
    if node.get("period", None) == 0:
        # A periodic hook turned off is not built: its arguments (a monitor's data sets) are not loaded.
        return None
    hook = instantiate(node)
    if hook is not None and not isinstance(hook, HookBase):
        raise ConfigError(f"{key}: {node['_target_']} returned a {type(hook).__name__}, not a detectron2 "
                          "HookBase (or None)")
    return hook
