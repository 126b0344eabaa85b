"""A signal during training: checkpoint of the current iteration, stop, exact resume from there."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.engine import SimpleTrainer
from detectron2.utils import comm

from d2ssl.engine.launch import launch_processes
from d2ssl.engine.preemption import StopOnSignal, TrainingStopped, stop_signals
from d2ssl.engine.train_loop import do_train, setup_config

REPO = Path(__file__).resolve().parents[2]
MAX_ITER, SIGNAL_AT = 8, 3
# No periodic checkpoint before the end: a resume can only start from the signal-time checkpoint.
OVERRIDES = ["dataloader.train.dataset.names=digits_train", "dataloader.train.total_batch_size=8",
             f"train.max_iter={MAX_ITER}", "train.checkpointer.period=100", "train.log_period=100"]


def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def _cfg(output: Path):
    return setup_config(str(REPO / "configs/tiny/jigsaw.py"), [*OVERRIDES, f"train.output_dir={output}"])


@pytest.fixture
def signal_during_step(monkeypatch):
    """Sends ``signum`` to this process in the middle of iteration ``SIGNAL_AT``'s step."""
    def arm(signum: int) -> None:
        run_step = SimpleTrainer.run_step

        def step_and_signal(trainer):
            if trainer.iter == SIGNAL_AT:
                os.kill(os.getpid(), signum)
            run_step(trainer)

        monkeypatch.setattr(SimpleTrainer, "run_step", step_and_signal)
    return arm


@pytest.fixture
def _one_thread():
    # The same arithmetic in the three runs.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_signal_writes_a_checkpoint_stops_and_resume_is_exact(tmp_path, signal_during_step, monkeypatch,
                                                               _one_thread):
    signum = signal.SIGTERM  # what `kill` sends a plain tools/train_net.py run
    _seed()
    do_train(_cfg(tmp_path / "straight"))

    # A Python handler installed before training (submitit's requeue handler, say) gets the signal
    # once training stopped, when the checkpoint is on disk.
    handed_on = []
    stopped_dir = tmp_path / "stopped"
    previous = signal.signal(signum, lambda s, f: handed_on.append(
        (s, (stopped_dir / "last_checkpoint").read_text())))
    try:
        signal_during_step(signum)
        _seed()
        with pytest.raises(TrainingStopped, match=rf"{signal.Signals(signum).name} after iteration "
                                                  rf"{SIGNAL_AT}; checkpoint .*model_{SIGNAL_AT:07d}.pth"):
            do_train(_cfg(stopped_dir))
        assert handed_on == [(signum, f"model_{SIGNAL_AT:07d}.pth")]
        assert signal.getsignal(signum) is not None and signal.getsignal(signum).__name__ == "<lambda>"
    finally:
        signal.signal(signum, previous)
    monkeypatch.undo()
    assert sorted(p.name for p in stopped_dir.glob("*.pth")) == [f"model_{SIGNAL_AT:07d}.pth"]
    saved = torch.load(stopped_dir / f"model_{SIGNAL_AT:07d}.pth", weights_only=True)
    assert saved["iteration"] == SIGNAL_AT and saved["trainer"]["iteration"] == SIGNAL_AT

    _seed()  # resume restores the random states of the checkpoint, whatever the seed
    do_train(_cfg(stopped_dir), resume=True)
    final = torch.load(stopped_dir / "model_final.pth", weights_only=True)
    reference = torch.load(tmp_path / "straight/model_final.pth", weights_only=True)
    assert final["iteration"] == MAX_ITER - 1
    assert [k for k in reference["model"] if not torch.equal(final["model"][k], reference["model"][k])] == []


def test_signal_names(monkeypatch):
    monkeypatch.delenv("SUBMITIT_PREEMPT_SIGNAL", raising=False)
    assert stop_signals() == (signal.SIGTERM, signal.SIGUSR2)
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR1")
    assert stop_signals() == (signal.SIGTERM, signal.SIGUSR2, signal.SIGUSR1)
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR9")
    with pytest.raises(ValueError, match="SUBMITIT_PREEMPT_SIGNAL='USR9'"):
        stop_signals()


def test_handlers_are_restored_and_a_late_signal_is_handed_on():
    """A signal during the last iteration does not stop the run (it ends anyway), but is handed on."""
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda s, f: calls.append(s))
    try:
        hook = StopOnSignal(checkpointer=None, signals=[signal.SIGUSR2])
        hook.trainer = type("Trainer", (), {"iter": MAX_ITER - 1, "max_iter": MAX_ITER})()
        hook.before_train()
        assert signal.getsignal(signal.SIGUSR2) == hook._record
        os.kill(os.getpid(), signal.SIGUSR2)
        hook.after_step()  # the last iteration: no stop
        assert hook.stopped is None and calls == []
        hook.after_train()
        assert calls == [signal.SIGUSR2] and signal.getsignal(signal.SIGUSR2).__name__ == "<lambda>"
    finally:
        signal.signal(signal.SIGUSR2, previous)


def _wait_for_stop_signal(folder: str) -> None:
    received = []
    signal.signal(signal.SIGUSR2, lambda s, f: received.append(s))
    Path(folder, f"ready{comm.get_rank()}").touch()
    deadline = time.monotonic() + 60
    while not received and time.monotonic() < deadline:
        time.sleep(0.01)
    Path(folder, f"rank{comm.get_rank()}").write_text(",".join(signal.Signals(s).name for s in received))


def test_launcher_passes_stop_signals_on_to_its_processes(tmp_path):
    """``kill -USR2 <launcher>`` (or -TERM) reaches every training process of a CPU launch."""
    at_launcher = []
    # Were the signal not passed on, this handler (not the default one) would get it: pytest lives on.
    previous = signal.signal(signal.SIGUSR2, lambda s, f: at_launcher.append(s))

    def signal_the_launcher_when_ready() -> None:
        deadline = time.monotonic() + 300
        while not all((tmp_path / f"ready{r}").exists() for r in range(2)) and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGUSR2)

    threading.Thread(target=signal_the_launcher_when_ready, daemon=True).start()
    try:
        launch_processes(_wait_for_stop_signal, 2, dist_url="auto", args=(str(tmp_path),), device="cpu")
        assert signal.getsignal(signal.SIGUSR2).__name__ == "<lambda>"  # restored
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert [(tmp_path / f"rank{r}").read_text() for r in range(2)] == ["SIGUSR2", "SIGUSR2"]
    assert at_launcher == []
