"""The launcher chooses each process's threads and checks the config and data paths before spawning."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from d2ssl.engine import launch
from d2ssl.engine.launch import choose_threads, launch_from_command_line, launch_processes

REPO = Path(__file__).resolve().parents[2]
TINY_ROTNET = str(REPO / "configs" / "tiny" / "rotnet.py")


def _record_threads(folder: str) -> None:
    """Runs in each launched process: writes its intra-op thread count to <folder>/<pid>."""
    Path(folder, str(os.getpid())).write_text(str(torch.get_num_threads()))


def _do_nothing(args) -> None:
    pass


@pytest.fixture
def restore_threads(monkeypatch):
    for variable in launch.THREAD_VARIABLES:  # monkeypatch puts back what the launcher sets
        monkeypatch.setenv(variable, "1")
        monkeypatch.delenv(variable)
    before = torch.get_num_threads()
    yield monkeypatch
    torch.set_num_threads(before)


def test_threads_divide_the_cores_among_processes_and_loader_workers_unless_the_user_set_them():
    assert choose_threads(2, workers=0, cores=8, environ={}).threads == 4
    assert choose_threads(2, workers=3, cores=16, environ={}).threads == 2  # 2 x (1 + 3) share 16
    assert choose_threads(8, workers=0, cores=2, environ={}).threads == 1  # never 0
    chosen = choose_threads(2, cores=8, environ={})
    assert chosen.describe() == "2 processes x 4 threads on 8 cores (OMP_NUM_THREADS unset; set it to choose)"
    user = choose_threads(2, cores=8, environ={"OMP_NUM_THREADS": "3"})
    assert (user.threads, user.user_set) == (3, "OMP_NUM_THREADS=3")
    assert choose_threads(2, cores=8, environ={"MKL_NUM_THREADS": "5"}).threads == 5
    with pytest.raises(ValueError, match="OMP_NUM_THREADS='many'"):
        choose_threads(2, cores=8, environ={"OMP_NUM_THREADS": "many"})


def test_each_spawned_process_runs_the_chosen_threads_and_the_choice_is_one_line(restore_threads, tmp_path,
                                                                                   capfd):
    restore_threads.setattr(launch, "available_cores", lambda: 4)
    launch_processes(_record_threads, 2, args=(str(tmp_path),), device="cpu")
    assert sorted(p.read_text() for p in tmp_path.iterdir()) == ["2", "2"]  # 4 cores / 2 processes
    err = capfd.readouterr().err
    assert "2 processes x 2 threads on 4 cores (OMP_NUM_THREADS unset; set it to choose)" in err


def test_the_users_omp_num_threads_is_kept_in_every_process(restore_threads, tmp_path, capfd):
    restore_threads.setattr(launch, "available_cores", lambda: 4)
    restore_threads.setenv("OMP_NUM_THREADS", "1")
    launch_processes(_record_threads, 2, args=(str(tmp_path),), device="cpu")
    assert sorted(p.read_text() for p in tmp_path.iterdir()) == ["1", "1"]
    assert "2 processes x 1 thread on 4 cores (OMP_NUM_THREADS=1 set by the user)" in capfd.readouterr().err


def test_a_single_process_run_gets_the_chosen_threads_too(restore_threads, tmp_path):
    restore_threads.setattr(launch, "available_cores", lambda: 3)
    launch_processes(_record_threads, 0, args=(str(tmp_path),), device="cpu")
    assert [p.read_text() for p in tmp_path.iterdir()] == ["3"]


def test_missing_data_folder_fails_before_any_process_with_the_key_first_and_no_output_folder(tmp_path):
    missing, out = tmp_path / "no_such_photos", tmp_path / "out"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "tools/train_net.py", "--config-file", TINY_ROTNET, "--num-gpus", "2",
         f"dataloader.train.dataset=folder:{missing}", f"train.output_dir={out}"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
        env=dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"),
    )
    # Before: 2 ranks spawned, each printing detectron2's preamble, and the error came last (43 s
    # at 8 ranks); the check needs only the imports and the config.
    assert time.monotonic() - started < 60
    assert result.returncode == 1
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == [f"error: dataloader.train.dataset.root='{missing}': image folder '{missing}' does not "
                      f"exist (relative paths are from {REPO}); fix the path or override "
                      f"dataloader.train.dataset.root=..."], lines
    assert not any("Rank of current process" in line or "Command line arguments" in line for line in lines)
    assert not any("processes x" in line for line in lines)  # nothing was launched
    assert not out.exists()


def test_a_registered_data_set_whose_folder_is_missing_is_named_before_the_spawn(tmp_path, capsys):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from d2ssl.data.datasets import register_image_folder

    name = f"h11_missing_{os.getpid()}"
    register_image_folder(name, str(tmp_path / "gone"))
    try:
        with pytest.raises(SystemExit):
            launch_from_command_line(_do_nothing, [
                "--config-file", TINY_ROTNET, "--num-gpus", "2", f"train.output_dir={tmp_path / 'out'}",
                f"dataloader.train.dataset.names={name}"])
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    err = capsys.readouterr().err
    assert err.startswith(f"error: dataloader.train.dataset.names='{name}': the image folder "
                          f"'{tmp_path / 'gone'}' of data set '{name}' does not exist"), err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the warning is for machines without CUDA")
def test_gpus_asked_for_without_cuda_says_cpu_processes_are_started(restore_threads, tmp_path, capfd):
    launch_from_command_line(_do_nothing, [
        "--config-file", TINY_ROTNET, "--num-gpus", "2", f"train.output_dir={tmp_path / 'out'}",
        "train.device=cuda"])  # a GPU config (the tiny ones ask for the CPU)
    err = capfd.readouterr().err
    assert "WARNING: no CUDA device: starting 2 CPU processes (gloo) instead of 2 GPU processes" in err
