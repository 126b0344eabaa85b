"""One run per output folder: a fresh run into an occupied folder is refused in one line, --start-over
moves the old run aside (deleting nothing), a lock keeps a second run out while one writes, and
max_to_keep deletes only the run's own checkpoints."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from d2ssl.engine.checkpointer import AtomicCheckpointer
from d2ssl.engine.hooks import PeriodicCheckpointer
from d2ssl.engine.launch import parse_command_line
from d2ssl.engine.run_folder import (
    LOCK_FILE,
    Run,
    RunFolderError,
    claim_run_folder,
    holding_run_folder,
    read_run_file,
    release_run_folder,
)

REPO = Path(__file__).resolve().parents[2]
TINY = ["dataloader.train.dataset.names=digits_train", "dataloader.train.total_batch_size=4",
        "train.checkpointer.period=1", "train.log_period=1"]


@pytest.fixture(autouse=True)
def _logs_reach_caplog(monkeypatch):
    # detectron2's setup_logger (run by the in-process tool below) stops these loggers propagating.
    for name in ("d2ssl", "fvcore"):
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)


def _saved_run(out: Path, iteration: int = 3) -> str:
    """A finished claim of ``out`` that wrote model_<iteration>.pth; returns its run id."""
    run = claim_run_folder(str(out), resume=False)
    try:
        model = nn.Linear(4, 4)
        AtomicCheckpointer(model, str(out), optimizer=torch.optim.SGD(model.parameters(), lr=0.1)).save(
            f"model_{iteration:07d}", iteration=iteration)
    finally:
        release_run_folder(str(out))
    return run.id


def test_a_fresh_run_into_a_folder_holding_a_run_is_refused_in_one_line(tmp_path):
    out = tmp_path / "run"
    run_id = _saved_run(out)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(RunFolderError) as refused:
        claim_run_folder(str(out), resume=False)
    message = str(refused.value)
    assert "\n" not in message
    for part in (str(out), f"run {run_id}", "last checkpoint model_0000003.pth, iteration 3", "--resume",
                 "--start-over", "previous_runs"):
        assert part in message, message
    assert sorted(p.name for p in out.iterdir()) == before  # nothing written, no lock left
    # metrics.json alone (a run that wrote no checkpoint yet) is a run too.
    other = tmp_path / "metrics_only"
    other.mkdir()
    (other / "metrics.json").write_text('{"iteration": 0}\n')
    with pytest.raises(RunFolderError, match=r"metrics_only holds a run written before run ids"):
        claim_run_folder(str(other), resume=False)


def test_the_tool_refuses_before_writing_config_yaml_into_the_folder(tmp_path):
    from d2ssl.engine.train_loop import setup_from_args

    out = tmp_path / "run"
    _saved_run(out)
    (out / "config.yaml").write_text("the first run's config\n")
    args = parse_command_line(["--config-file", str(REPO / "configs/tiny/jigsaw.py"), "--num-gpus", "0",
                               f"train.output_dir={out}"])
    with pytest.raises(RunFolderError, match="--start-over"):
        setup_from_args(args, run=True)
    assert (out / "config.yaml").read_text() == "the first run's config\n"


def test_start_over_moves_the_old_run_aside_and_trains(tmp_path):
    from d2ssl.engine.train_loop import main

    out = tmp_path / "run"
    argv = ["--config-file", str(REPO / "configs/tiny/jigsaw.py"), "--num-gpus", "0",
            f"train.output_dir={out}", "train.max_iter=2", *TINY]
    main(parse_command_line(argv))
    first_id = read_run_file(str(out))["run_id"]
    first_final = (out / "model_final.pth").read_bytes()
    with pytest.raises(RunFolderError, match="--start-over"):
        main(parse_command_line(argv))
    # The tool itself (a fresh process: detectron2 caches its log file per process).
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    started_over = subprocess.run([sys.executable, str(REPO / "tools/train_net.py"), *argv, "--start-over"],
                                  env=env, capture_output=True, text=True, timeout=300)
    assert started_over.returncode == 0, started_over.stderr[-3000:]
    moved = out / "previous_runs" / first_id
    assert (moved / "model_final.pth").read_bytes() == first_final  # nothing of the old run is lost
    assert {"metrics.json", "run.json", "last_checkpoint", "config.yaml"} <= {p.name for p in moved.iterdir()}
    second_id = read_run_file(str(out))["run_id"]
    assert second_id != first_id
    assert torch.load(out / "model_final.pth", weights_only=True)["run"]["id"] == second_id
    assert not (out / LOCK_FILE).exists()
    log = (out / "log.txt").read_text()  # the new run's log says where the old one went
    assert f"--start-over: moved run {first_id}" in log and str(moved) in log


def _lock(out: Path, pid: int, host: str | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                             "run_id": "f" * 32, "started": "20260101T000000Z"}))


def test_a_second_run_on_a_locked_folder_fails_at_once_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    _lock(out, os.getpid())  # a live process holds the folder
    for resume in (False, True):
        with pytest.raises(RunFolderError, match=rf"in use by another run: pid {os.getpid()} on "
                                                 rf"{socket.gethostname()} \(run f{{32}}"):
            claim_run_folder(str(out), resume=resume)
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()  # left to its holder
    assert not (out / "run.json").exists()


def test_a_stale_lock_is_taken_over_and_named_in_the_log(tmp_path, caplog):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                           text=True, check=True)
    dead_pid = int(ended.stdout)
    out = tmp_path / "run"
    _lock(out, dead_pid)
    with holding_run_folder(str(out), resume=False) as run:
        holder = json.loads((out / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid() and holder["run_id"] == run.id
    assert any("stale lock" in r.getMessage() and f"pid {dead_pid}" in r.getMessage() for r in caplog.records)
    assert not (out / LOCK_FILE).exists()


def test_the_lock_is_released_when_training_raises(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ZeroDivisionError), holding_run_folder(str(out), resume=False):
        assert (out / LOCK_FILE).exists()
        1 / 0  # noqa: B018
    assert not (out / LOCK_FILE).exists()
    claim_run_folder(str(out), resume=True)  # the same run continues
    release_run_folder(str(out))


def test_max_to_keep_deletes_only_this_runs_checkpoints(tmp_path):
    out = tmp_path / "run"
    mine, other = Run("a" * 32, str(out)), Run("b" * 32, str(out))
    model = nn.Linear(4, 4)
    AtomicCheckpointer(model, str(out), run=other).save("model_0000000", iteration=0)  # a leftover
    checkpointer = AtomicCheckpointer(model, str(out), run=mine)
    checkpointer.save("model_0000001", iteration=1)
    hook = PeriodicCheckpointer(checkpointer, period=1, max_to_keep=1)
    hook.trainer = SimpleNamespace(iter=2, max_iter=10)
    hook.before_train()
    for iteration in (2, 3):
        hook.step(iteration)
    names = sorted(p.name for p in out.glob("*.pth"))
    assert names == ["model_0000000.pth", "model_0000003.pth"], names


def test_a_refusal_reaches_the_user_as_one_line_from_two_processes(tmp_path):
    out = tmp_path / "run"
    run_id = _saved_run(out)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools/train_net.py"), "--config-file",
         str(REPO / "configs/tiny/jigsaw.py"), "--num-gpus", "2", f"train.output_dir={out}", *TINY],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"holds run {run_id}" in errors[0] and "--start-over" in errors[0], \
        proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "rank 0" not in proc.stderr


def test_a_run_that_saved_and_logged_nothing_does_not_block_the_folder(tmp_path):
    out = tmp_path / "run"
    stopped = claim_run_folder(str(out), resume=False)  # e.g. stopped by a wrong data path
    release_run_folder(str(out))
    (out / "metrics.json").write_text("")  # detectron2's writer creates it before the first iteration
    run = claim_run_folder(str(out), resume=False)
    release_run_folder(str(out))
    assert run.id != stopped.id and read_run_file(str(out))["run_id"] == run.id
    assert any(f"run {stopped.id}" in note and "saved or logged" in note for note in run.notes)


def test_a_tool_that_fails_before_training_unlocks_its_folder_and_a_rerun_may_start(tmp_path):
    from d2ssl.engine.launch import launch_from_command_line
    from d2ssl.engine.train_loop import main

    out = tmp_path / "run"
    (tmp_path / "empty").mkdir()  # a folder that exists passes the launcher's check; listing it fails
    argv = ["--config-file", str(REPO / "configs/tiny/jigsaw.py"), "--num-gpus", "0",
            f"train.output_dir={out}", f"dataloader.train.dataset=folder:{tmp_path / 'empty'}"]
    for _ in range(2):  # the second is not refused: the first saved and logged nothing
        with pytest.raises(SystemExit):
            launch_from_command_line(main, argv)
        assert (out / "run.json").exists() and not (out / LOCK_FILE).exists()
