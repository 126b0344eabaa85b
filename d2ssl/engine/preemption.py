"""Stopping a training run on a signal with a checkpoint written at the signal, so that ``--resume``
continues from there instead of from the last periodic checkpoint.

A cluster signals a job ahead of preemption or of its time limit (SLURM through submitit: ``SIGUSR2``,
``--signal=USR2@<delay>``); an operator stops a run with ``SIGTERM``. ``StopOnSignal`` turns either
into an exact stop point:

1. the signal handler only records the signal (any rank, at any moment of the step);
2. after each iteration the ranks agree whether any of them was signalled (one all-reduce of an
   integer), so every rank stops after the same iteration;
3. the random states of all ranks are gathered (``RandomStateCheckpoint.gather``), the main process
   writes a complete, atomic checkpoint ``<prefix>_<iteration>.pth`` (named as the periodic ones, so
   ``max_to_keep`` counts it after a resume), and every rank waits until it is on disk;
4. training stops with ``TrainingStopped`` (its message names the checkpoint); ``--resume`` continues
   from it exactly (iteration, data order, random states, memory bank).

Signals: ``SIGTERM`` and ``SIGUSR2``, and submitit's preemption signal where ``SUBMITIT_PREEMPT_SIGNAL``
names another. ``SIGINT`` (Ctrl-C) still interrupts at once. The handlers are installed for the
training loop only (``before_train`` to ``after_train``); outside it, the handlers the process had
before act as before.

After training (stopped, finished or failed), a signal received during it is handed on to the handler
that was installed before, where that is a Python function: under submitit, its checkpoint-and-requeue
handler, which requeues the job with ``--resume`` (``d2ssl.engine.slurm.ToolJob.checkpoint``); the
requeued job then finds the signal-time checkpoint. With the default handler, a run that was stopped
ends with ``TrainingStopped`` (status 1, one message); one the signal reached only after its last
iteration ends as the signal asks.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Sequence

import torch
import torch.distributed as dist
from detectron2.engine import HookBase
from detectron2.utils import comm
from fvcore.common.checkpoint import Checkpointer

from d2ssl.engine.hooks import RandomStateCheckpoint

logger = logging.getLogger(__name__)


class TrainingStopped(RuntimeError):
    """Training stopped on ``signum`` after ``iteration``, with the checkpoint ``checkpoint`` written
    by the main process; ``--resume`` continues it."""

    def __init__(self, signum: int, iteration: int, checkpoint: str):
        self.signum, self.iteration, self.checkpoint = signum, iteration, checkpoint
        super().__init__(
            f"training stopped by {signal.Signals(signum).name} after iteration {iteration}; checkpoint "
            f"{checkpoint} written: continue with --resume"
        )


def stop_signals() -> tuple[signal.Signals, ...]:
    """``SIGTERM``, ``SIGUSR2`` and the signal ``SUBMITIT_PREEMPT_SIGNAL`` names (submitit's
    ``JobEnvironment.USR_SIG``, e.g. ``USR1``), if any."""
    names = ["SIGTERM", "SIGUSR2"]
    preempt = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "").strip().upper()
    if preempt:
        names.append(preempt if preempt.startswith("SIG") else f"SIG{preempt}")
    if not all(hasattr(signal, n) for n in names):
        raise ValueError(f"SUBMITIT_PREEMPT_SIGNAL={preempt!r} is not a signal name (e.g. USR2)")
    return tuple(dict.fromkeys(getattr(signal, n) for n in names))


class StopOnSignal(HookBase):
    """Stops training after the iteration during which a stop signal arrived, with a checkpoint of
    that iteration (see the module docstring). Register it on every rank, after the other hooks
    (its ``after_train`` may end the process); ``checkpointer`` on the main process only (None on the
    others), ``random_states`` the run's ``RandomStateCheckpoint``."""

    def __init__(self, checkpointer: Checkpointer | None, random_states: RandomStateCheckpoint | None = None,
                 signals: Sequence[int] | None = None, file_prefix: str = "model"):
        self.checkpointer = checkpointer
        self.random_states = random_states
        self.signals = tuple(signals) if signals is not None else stop_signals()
        self.file_prefix = file_prefix
        self.received: int | None = None
        self.stopped: TrainingStopped | None = None
        self._previous: dict[int, object] = {}

    def before_train(self) -> None:
        self.received, self.stopped = None, None
        if threading.current_thread() is not threading.main_thread():
            logger.warning("training outside the main thread: no checkpoint on %s (Python handles signals "
                           "in the main thread only)", [signal.Signals(s).name for s in self.signals])
            return
        self._previous = {s: signal.signal(s, self._record) for s in self.signals}

    def _record(self, signum: int, frame) -> None:
        if self.received is None:
            self.received = signum
            logger.warning("received %s: stopping after this iteration with a checkpoint",
                           signal.Signals(signum).name)

    def after_step(self) -> None:
        signum = self._agreed_signal()
        # On the last iteration the run ends anyway, with its final checkpoint.
        if not signum or self.trainer.iter + 1 >= self.trainer.max_iter or self.stopped is not None:
            return
        iteration = self.trainer.iter
        if self.random_states is not None:
            self.random_states.gather()  # a collective: every rank's state for this checkpoint
        name = f"{self.file_prefix}_{iteration:07d}.pth"
        path = self._save(name, iteration) if self.checkpointer is not None else name
        comm.synchronize()  # no rank ends before the checkpoint is complete
        self.stopped = TrainingStopped(signum, iteration, path)
        raise self.stopped

    def _agreed_signal(self) -> int:
        """The largest signal number any rank received (0: none); the same on every rank."""
        local = self.received or 0
        if comm.get_world_size() == 1:
            return local
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        flag = torch.tensor([local], dtype=torch.int64, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def _save(self, name: str, iteration: int) -> str:
        path = os.path.join(self.checkpointer.save_dir, name)
        last = self.checkpointer.get_checkpoint_file() if self.checkpointer.has_checkpoint() else ""
        if os.path.basename(last) != name:  # else the periodic checkpointer just wrote this iteration
            self.checkpointer.save(name[: -len(".pth")], iteration=iteration)
        return path

    def after_train(self) -> None:
        previous, self._previous = self._previous, {}
        for s, handler in previous.items():
            signal.signal(s, handler)
        signum = self.stopped.signum if self.stopped is not None else self.received
        if signum is None or signum not in previous:
            return
        handler = previous[signum]
        if callable(handler):
            logger.info("handing %s on to the handler installed before training", signal.Signals(signum).name)
            handler(signum, None)  # submitit's requeue: the checkpoint is on disk now; it may exit
        elif handler == signal.SIG_DFL and self.stopped is None:
            signal.raise_signal(signum)  # the signal came too late to stop training: act as it asks
