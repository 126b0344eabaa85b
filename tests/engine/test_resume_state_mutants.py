"""What the mutation run of d2ssl/engine/hooks.py (benchmarks/mutation.py) found the other tests let
through: where a resumed loader starts, what the data-order state stores and warns about, when the random
states of the ranks are gathered and restored (CUDA's included, checked with a stand-in), and what the
periodic checkpointer keeps and says after training."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from detectron2.utils import comm
from torch import nn

from d2ssl.data.build import ResumableTrainingSampler
from d2ssl.engine.checkpointer import AtomicCheckpointer
from d2ssl.engine.hooks import (
    PeriodicCheckpointer,
    RandomStateCheckpoint,
    ResumeDataOrder,
    capture_random_state,
    restore_random_state,
)
from d2ssl.engine.run_folder import Run


@pytest.fixture(autouse=True)
def _logs_reach_caplog(monkeypatch):
    # detectron2's setup_logger (run by any in-process tool test) stops these loggers propagating.
    for name in ("d2ssl", "fvcore"):
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# ------------------------------------------------------------------ data order


def test_the_loader_of_a_resumed_run_starts_at_the_trainers_iteration_times_the_batch():
    sampler = ResumableTrainingSampler(100, 8, seed=0)
    hook = ResumeDataOrder(sampler)
    hook.trainer = SimpleNamespace(iter=3)
    hook.before_train()
    assert sampler.start_position == 3 * 8


def test_the_data_order_state_is_what_the_sampler_was_made_with():
    assert ResumeDataOrder(ResumableTrainingSampler(100, 8, seed=5)).state_dict() == {
        "dataset_size": 100, "total_batch_size": 8, "seed": 5, "world_size": 1}


@pytest.mark.parametrize("batch, seed, changed", [(16, 0, "total_batch_size=16, the checkpoint's run used 8"),
                                                  (8, 3, "seed=3, the checkpoint's run used 0")])
def test_resuming_with_another_batch_or_seed_warns_naming_both_values(caplog, batch, seed, changed):
    state = ResumeDataOrder(ResumableTrainingSampler(100, 8, seed=0)).state_dict()
    ResumeDataOrder(ResumableTrainingSampler(100, batch, seed=seed)).load_state_dict(state)
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and changed in warnings[0] and "data order will differ" in warnings[0], warnings


def test_resuming_the_same_data_order_says_nothing(caplog):
    state = ResumeDataOrder(ResumableTrainingSampler(100, 8, seed=0)).state_dict()
    ResumeDataOrder(ResumableTrainingSampler(100, 8, seed=0)).load_state_dict(state)
    del state["world_size"]  # a checkpoint written before the world size was stored
    ResumeDataOrder(ResumableTrainingSampler(100, 8, seed=0)).load_state_dict(state)
    assert _warnings(caplog) == []


# ------------------------------------------------------------------ random states


class _FakeCuda:
    """Stands in for torch.cuda on a machine without a GPU: records what is set, hands out a state."""

    def __init__(self, monkeypatch, available: bool, initialized: bool):
        self.set_to = None
        monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: initialized)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: ["cuda state"])
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: setattr(self, "set_to", states))


@pytest.mark.parametrize("available, initialized, stored", [(True, True, True), (True, False, False),
                                                            (False, False, False)])
def test_the_cuda_states_are_stored_only_once_cuda_is_in_use(monkeypatch, available, initialized, stored):
    _FakeCuda(monkeypatch, available, initialized)
    state = capture_random_state()
    assert ("cuda" in state) is stored
    if stored:
        assert state["cuda"] == ["cuda state"]


@pytest.mark.parametrize("available, has_cuda, restored", [(True, True, True), (True, False, False),
                                                           (False, True, False)])
def test_the_cuda_states_are_restored_when_stored_and_a_gpu_is_there(monkeypatch, available, has_cuda,
                                                                      restored):
    fake = _FakeCuda(monkeypatch, available, initialized=False)
    state = capture_random_state()
    if has_cuda:
        state["cuda"] = ["saved cuda state"]
    restore_random_state(state)
    assert fake.set_to == (["saved cuda state"] if restored else None)


def _draws() -> tuple:
    return random.random(), float(np.random.standard_normal()), float(torch.rand(1))


def test_restoring_brings_back_numpys_cached_gaussian():
    np.random.seed(4)
    np.random.standard_normal()  # draws two, keeps the second for the next call
    state = capture_random_state()
    assert state["numpy"]["has_gauss"] == 1
    expected = _draws()
    np.random.seed(9), random.seed(9), torch.manual_seed(9)
    restore_random_state(state)
    assert _draws() == expected


def _gathering_hook(monkeypatch, world_size: int, period: int | None, max_iter: int = 10):
    gathered = []
    monkeypatch.setattr(comm, "get_world_size", lambda: world_size)
    monkeypatch.setattr(comm, "all_gather", lambda state: gathered.append(state) or [state] * world_size)
    hook = RandomStateCheckpoint(period=period)
    hook.trainer = SimpleNamespace(iter=0, max_iter=max_iter)
    return hook, gathered


def _steps_gathered_at(hook, gathered, iterations) -> list[int]:
    at = []
    for iteration in iterations:
        hook.trainer.iter = iteration
        before = len(gathered)
        hook.after_step()
        if len(gathered) > before:
            at.append(iteration)
    return at


def test_the_ranks_states_are_gathered_at_each_checkpoint_iteration_and_the_last(monkeypatch):
    hook, gathered = _gathering_hook(monkeypatch, world_size=2, period=4, max_iter=10)
    # Checkpoints follow iterations 3 and 7 (period 4) and 9 (the last, max_iter 10).
    assert _steps_gathered_at(hook, gathered, range(10)) == [3, 7, 9]


@pytest.mark.parametrize("world_size, period", [(1, 4), (2, None), (2, 0)])
def test_nothing_is_gathered_by_one_process_or_without_a_period(monkeypatch, world_size, period):
    hook, gathered = _gathering_hook(monkeypatch, world_size, period)
    assert _steps_gathered_at(hook, gathered, range(10)) == []
    hook.gather()  # a checkpoint outside the period (a stop signal)
    assert gathered == ([] if world_size == 1 else [gathered[0]])


def test_before_any_gathering_a_checkpoint_holds_this_processes_state(monkeypatch):
    hook, _ = _gathering_hook(monkeypatch, world_size=2, period=4)
    torch.manual_seed(3)
    saved = hook.state_dict()
    assert len(saved["ranks"]) == 1 and torch.equal(saved["ranks"][0]["torch"], torch.get_rng_state())


def test_states_of_another_number_of_processes_are_not_restored_and_it_is_said(monkeypatch, caplog):
    torch.manual_seed(1)
    saved = {"ranks": [capture_random_state(), capture_random_state()]}  # two processes
    torch.manual_seed(2)
    expected = torch.get_rng_state()
    RandomStateCheckpoint().load_state_dict(saved)
    assert torch.equal(torch.get_rng_state(), expected)
    assert any("random states of 2 processes, this run has 1" in w for w in _warnings(caplog))


# ------------------------------------------------------------------ periodic checkpoints


def _checkpointer(out: Path, run: Run | None = None) -> AtomicCheckpointer:
    return AtomicCheckpointer(nn.Linear(2, 2), str(out), run=run or Run("a" * 32, str(out)))


def test_a_complete_run_ends_without_the_stopped_by_an_exception_warning(tmp_path, caplog):
    checkpointer = _checkpointer(tmp_path / "run")
    hook = PeriodicCheckpointer(checkpointer, period=5)
    hook.trainer = SimpleNamespace(iter=10, max_iter=10)
    hook.after_train()
    assert not any("stopped" in w for w in _warnings(caplog)), _warnings(caplog)
    hook.trainer.iter = 7
    hook.after_train()
    assert any("stopped at iteration 7" in w and "(last complete checkpoint: none)" in w
               for w in _warnings(caplog)), _warnings(caplog)
    checkpointer.save("model_0000004", iteration=4)
    hook.after_train()
    last = str(tmp_path / "run" / "model_0000004.pth")
    assert any(f"(last complete checkpoint: {last})" in w for w in _warnings(caplog)), _warnings(caplog)


def test_checkpoints_at_or_after_the_resumed_iteration_do_not_count_towards_max_to_keep(tmp_path):
    out = tmp_path / "run"
    checkpointer = _checkpointer(out)
    for iteration in (1, 3, 5):
        checkpointer.save(f"model_{iteration:07d}", iteration=iteration)
    hook = PeriodicCheckpointer(checkpointer, period=2, max_to_keep=5)
    hook.trainer = SimpleNamespace(iter=3, max_iter=100)  # resumed after iteration 2: 3 and 5 are ahead
    hook.before_train()
    assert hook.recent_checkpoints == [str(out / "model_0000001.pth")]


def test_without_max_to_keep_no_checkpoint_is_ever_deleted(tmp_path):
    out = tmp_path / "run"
    checkpointer = _checkpointer(out)
    checkpointer.save("model_0000001", iteration=1)
    hook = PeriodicCheckpointer(checkpointer, period=1)
    hook.trainer = SimpleNamespace(iter=2, max_iter=100)
    hook.before_train()
    assert hook.recent_checkpoints == []
    for iteration in (2, 3, 4):
        hook.step(iteration)
    assert sorted(p.name for p in out.glob("*.pth")) == [f"model_{i:07d}.pth" for i in (1, 2, 3, 4)]


def test_max_to_keep_keeps_the_newest_k_across_a_restart(tmp_path):
    out = tmp_path / "run"
    checkpointer = _checkpointer(out)
    for iteration in (1, 3):
        checkpointer.save(f"model_{iteration:07d}", iteration=iteration)
    hook = PeriodicCheckpointer(checkpointer, period=2, max_to_keep=2)
    hook.trainer = SimpleNamespace(iter=4, max_iter=100)
    hook.before_train()
    hook.step(5)
    assert sorted(p.name for p in out.glob("*.pth")) == ["model_0000003.pth", "model_0000005.pth"]


def test_a_restart_with_a_smaller_max_to_keep_deletes_down_to_it(tmp_path):
    out = tmp_path / "run"
    checkpointer = _checkpointer(out)
    for iteration in (1, 3, 5):
        checkpointer.save(f"model_{iteration:07d}", iteration=iteration)
    hook = PeriodicCheckpointer(checkpointer, period=2, max_to_keep=1)  # the first run kept 3
    hook.trainer = SimpleNamespace(iter=6, max_iter=100)
    hook.before_train()
    hook.step(7)
    assert sorted(p.name for p in out.glob("*.pth")) == ["model_0000007.pth"]


def test_a_run_whose_output_folder_is_not_made_yet_counts_no_checkpoint(tmp_path):
    hook = PeriodicCheckpointer(_checkpointer(tmp_path / "not_made_yet"), period=2, max_to_keep=2)
    hook.trainer = SimpleNamespace(iter=0, max_iter=100)
    hook.before_train()
    assert hook.recent_checkpoints == []
