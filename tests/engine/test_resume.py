"""Exact resume: a run killed with SIGKILL and resumed ends where an uninterrupted run ends."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from detectron2.utils import comm
from tolerances import assert_equal

from d2ssl.data.build import ResumableTrainingSampler, build_ssl_train_loader
from d2ssl.data.datasets import get_dataset_dicts
from d2ssl.data.mappers import JigsawMapper
from d2ssl.data.permutations import generate_permutations
from d2ssl.engine.hooks import (
    RandomStateCheckpoint,
    ResumeDataOrder,
    capture_random_state,
    restore_random_state,
)

REPO = Path(__file__).resolve().parents[2]
MAX_ITER = 16
PERIOD = 4
# scikit-learn's digits (1,348 training images) start faster than Fashion-MNIST; PIRL needs fewer
# negatives than that bank holds. (NPID shares PIRL's memory bank and loss.)
COMMON = ["dataloader.train.dataset.names=digits_train", f"train.max_iter={MAX_ITER}",
          f"train.checkpointer.period={PERIOD}", "train.log_period=4", "dataloader.train.total_batch_size=8"]
RUNS = {
    # config: (extra overrides, checkpoint after which the run is killed)
    "jigsaw": ([], "model_0000007.pth"),
    "pirl": (["model.loss.negative_sampling_params.num_negatives=256"], "model_0000003.pth"),
}


def _train_command(config: str, output: Path, resume: bool = False) -> list[str]:
    extra, _ = RUNS[config]
    return [sys.executable, "-W", "ignore", str(REPO / "tools/train_net.py"), "--config-file",
            str(REPO / "configs/tiny" / f"{config}.py"), "--num-gpus", "0", *(["--resume"] if resume else []),
            f"train.output_dir={output}", *COMMON, *extra]


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    # One thread per process: the two runs share the two cores, and every run computes the same way.
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=log.parent, env=env)


def _kill_when_tagged(proc: subprocess.Popen, output: Path, checkpoint: str, timeout: float = 300) -> None:
    """SIGKILLs ``proc`` as soon as ``last_checkpoint`` names ``checkpoint``: the run is then somewhere
    in the iterations after it, as a machine failure would find it."""
    tag = output / "last_checkpoint"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tag.exists() and tag.read_text() == checkpoint:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before {checkpoint} appeared")
        time.sleep(0.002)
    proc.kill()
    raise AssertionError(f"{checkpoint} did not appear within {timeout} s")


def _assert_same(a, b, where: str = "") -> None:
    """Recursive bitwise equality of checkpoint contents: the resumed run does the same float32
    operations in the same order, on the same number of processes, as the uninterrupted one."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert_equal(a, b, where)
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("config", sorted(RUNS))
def test_resume_after_kill_matches_straight_run(tmp_path, config):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    kill_after = RUNS[config][1]
    straight_proc = _start(_train_command(config, straight), tmp_path / "straight.log")
    killed_proc = _start(_train_command(config, killed), tmp_path / "killed.log")
    _kill_when_tagged(killed_proc, killed, kill_after)
    assert killed_proc.returncode == -signal.SIGKILL
    assert not (killed / "model_final.pth").exists(), "the kill came after the run had finished"
    assert straight_proc.wait(timeout=300) == 0, (tmp_path / "straight.log").read_text()[-3000:]

    resumed_log = tmp_path / "resumed.log"
    resumed = _start(_train_command(config, killed, resume=True), resumed_log)
    assert resumed.wait(timeout=300) == 0, resumed_log.read_text()[-3000:]
    # It really resumed (a run from scratch would also end at the same weights).
    start = int(re.search(r"Starting training from iteration (\d+)", resumed_log.read_text()).group(1))
    assert start > int(kill_after[6:13]) and start % PERIOD == 0

    a = torch.load(straight / "model_final.pth", map_location="cpu", weights_only=True)
    b = torch.load(killed / "model_final.pth", map_location="cpu", weights_only=True)
    # Weights, BatchNorm statistics and (NPID/PIRL) the memory bank ...
    _assert_same(a["model"], b["model"], "model")
    # ... and optimizer momentum, LR-scheduler state, random states, iteration.
    _assert_same(a["trainer"], b["trainer"], "trainer")
    banks = [k for k in a["model"] if k.endswith("memory")]
    assert bool(banks) == (config != "jigsaw")
    at_kill = torch.load(killed / kill_after, map_location="cpu", weights_only=True)
    for key in banks:  # the bank moved after the resume point, so the comparison above means something
        assert not torch.equal(at_kill["model"][key], b["model"][key])


@pytest.fixture(scope="module")
def digits_small() -> list[dict]:
    return [dict(d, image_id=i) for i, d in enumerate(get_dataset_dicts("digits_train")[:40])]


def _jigsaw_mapper() -> JigsawMapper:
    return JigsawMapper(generate_permutations(4, 24, seed=0), grid=2, resize_size=32, crop_size=32,
                        tile_size=14, grayscale_prob=0.5)


def _batches(loader, count: int) -> list[list[dict]]:
    it = iter(loader)
    return [next(it) for _ in range(count)]


def _assert_same_batches(x: list[list[dict]], y: list[list[dict]]) -> None:
    assert len(x) == len(y)
    for bx, by in zip(x, y):
        assert [d["image_id"] for d in bx] == [d["image_id"] for d in by]
        assert [d["perm_index"] for d in bx] == [d["perm_index"] for d in by]
        assert all(torch.equal(dx["tiles"], dy["tiles"]) for dx, dy in zip(bx, by))


def test_sample_stream_is_the_same_with_two_workers(digits_small):
    single = build_ssl_train_loader(digits_small, _jigsaw_mapper(), 16, num_workers=0, seed=3)
    workers = build_ssl_train_loader(digits_small, _jigsaw_mapper(), 16, num_workers=2, seed=3)
    # 5 batches of 16 cross the epoch boundary of the 40 images.
    _assert_same_batches(_batches(single, 5), _batches(workers, 5))


def test_resumed_loader_continues_the_stream_at_the_start_iteration(digits_small):
    straight = _batches(build_ssl_train_loader(digits_small, _jigsaw_mapper(), 16, seed=3), 5)
    loader = build_ssl_train_loader(digits_small, _jigsaw_mapper(), 16, num_workers=2, seed=3)
    loader.batch_sampler.sampler.set_start_iter(3)
    _assert_same_batches(straight[3:], _batches(loader, 2))
    # Epochs are reshuffled: the second pass over the 40 images is in another order.
    first_epochs = [d["image_id"] for b in straight for d in b]
    assert sorted(first_epochs[:40]) == list(range(40)) and first_epochs[:40] != first_epochs[40:80]


def test_loader_iterator_leaves_the_global_random_state_alone(digits_small):
    # Creating the iterator after the RNG hook restored the state must not shift it (else a resumed
    # run draws other NCE negatives than an uninterrupted one).
    loader = build_ssl_train_loader(digits_small, _jigsaw_mapper(), 16, seed=0)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    next(iter(loader))
    assert torch.equal(torch.rand(3), expected)


def _draw() -> tuple:
    return random.random(), np.random.standard_normal(3), torch.rand(3)


def _assert_draws(expected: tuple) -> None:
    got = _draw()
    assert got[0] == expected[0]
    np.testing.assert_array_equal(got[1], expected[1])
    assert torch.equal(got[2], expected[2])


def test_random_states_survive_a_weights_only_checkpoint(tmp_path):
    hook = RandomStateCheckpoint()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    torch.save({"rng": hook.state_dict()}, tmp_path / "state.pth")
    expected = _draw()
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    hook.load_state_dict(torch.load(tmp_path / "state.pth", weights_only=True)["rng"])
    _assert_draws(expected)


def test_each_rank_gets_its_own_random_state_back(monkeypatch):
    # Two ranks, simulated: rank 1's state reaches the main process at the checkpoint iteration,
    # and on resume rank 1 restores it (not the main process's).
    states = []
    for seed in (10, 11):
        torch.manual_seed(seed), np.random.seed(seed), random.seed(seed)
        states.append(capture_random_state())
    expected = []
    for state in states:
        restore_random_state(state)
        expected.append(_draw())
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(comm, "all_gather", lambda state: states)
    hook = RandomStateCheckpoint(period=4)
    hook.trainer = SimpleNamespace(iter=6, max_iter=100)
    hook.after_step()  # iteration 6: no checkpoint follows
    assert hook._gathered is None
    hook.trainer.iter = 7
    hook.after_step()
    saved = hook.state_dict()
    assert len(saved["ranks"]) == 2
    for rank in (1, 0):
        monkeypatch.setattr(comm, "get_rank", lambda rank=rank: rank)
        torch.manual_seed(0), np.random.seed(0), random.seed(0)
        RandomStateCheckpoint(period=4).load_state_dict(saved)
        _assert_draws(expected[rank])


def test_resume_on_a_data_set_of_another_size_is_an_error():
    hook = ResumeDataOrder(ResumableTrainingSampler(100, 8, seed=0))
    state = hook.state_dict()
    ResumeDataOrder(ResumableTrainingSampler(100, 8, seed=0)).load_state_dict(state)
    with pytest.raises(ValueError, match="100 images, this run has 120"):
        ResumeDataOrder(ResumableTrainingSampler(120, 8, seed=0)).load_state_dict(state)
