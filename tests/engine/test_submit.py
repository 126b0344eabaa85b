"""SLURM through submitit: the sbatch script asks for what was requested, and submitit's local
executor runs a tiny two-task pretraining to the end, also when preempted and requeued."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import time
from pathlib import Path

import pytest
import submitit
import torch

from d2ssl.engine.slurm import Resources, ToolJob, build_executor, make_jobs, parse_sbatch_lines, submit

REPO = Path(__file__).resolve().parents[2]
NPID = str(REPO / "configs/tiny/npid.py")
# No periodic checkpoint before the end: the requeued job can only resume from the one written at
# the signal.
MAX_ITER, PERIOD = 16, 100
TRAIN_ARGS = [
    "--config-file", NPID, "dataloader.train.dataset.limit=256", "dataloader.train.total_batch_size=16",
    f"train.max_iter={MAX_ITER}", f"train.checkpointer.period={PERIOD}", "train.log_period=4",
    "model.loss.negative_sampling_params.num_negatives=64",
]


def _submit_tool():
    spec = importlib.util.spec_from_file_location("submit_tool", REPO / "tools/submit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_sbatch_script_has_the_requested_resources(capsys, tmp_path):
    _submit_tool().main([
        "--nodes", "4", "--gpus-per-node", "8", "--cpus-per-task", "10", "--mem-gb", "480", "--time", "4320",
        "--partition", "learnfair", "--account", "ssl", "--qos", "high", "--constraint", "volta32gb",
        "--job-name", "pirl_R50", "--log-folder", str(tmp_path / "%j"), "--sbatch=--exclusive",
        "--sbatch=--mail-type=END", "--max-requeues", "5", "--dry-run",
        "train_net", "--config-file", "configs/pirl_R50.py", "--num-gpus", "8", "train.output_dir=out/pirl",
        "optimizer.lr=0.12",
    ])
    script = capsys.readouterr().out
    for line in ["#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --cpus-per-task=10", "#SBATCH --mem=480GB", "#SBATCH --time=4320",
                 "#SBATCH --partition=learnfair", "#SBATCH --account=ssl", "#SBATCH --qos=high",
                 "#SBATCH --constraint=volta32gb", "#SBATCH --job-name=pirl_R50", "#SBATCH --exclusive",
                 "#SBATCH --mail-type=END", "#SBATCH --signal=USR2@120", f"#SBATCH --output={tmp_path}/%j/"]:
        assert line in script, line
    assert "srun" in script and "submitit.core._submit" in script
    assert "Each of the 32 tasks" in script and "at most 5 times" in script
    # The tool's arguments pass unchanged, but for the launch flags the job's tasks replace.
    assert f"{REPO}/tools/train_net.py --config-file configs/pirl_R50.py train.output_dir=out/pirl " \
           "optimizer.lr=0.12" in script
    assert "--num-gpus" not in script and "--array" not in script


def test_dry_run_of_an_array(capsys, tmp_path):
    _submit_tool().main([
        "--gpus-per-node", "8", "--log-folder", str(tmp_path), "--dry-run",
        "--array-overrides", "optimizer.lr=0.1 train.output_dir=a", "optimizer.lr=0.2 train.output_dir=b",
        "--", "train_net", "--config-file", "configs/jigsaw_R50.py",
    ])
    script = capsys.readouterr().out
    assert "#SBATCH --array=0-1%2" in script
    assert "[0] " in script and "optimizer.lr=0.1 train.output_dir=a" in script
    assert "[1] " in script and "optimizer.lr=0.2 train.output_dir=b" in script


def test_jobs_of_an_array():
    jobs = make_jobs("train_net", ["--config-file", "x.py", "--num-gpus", "8", "a=1"],
                     array_configs=["npid.py", "pirl.py"])
    assert [j.argv for j in jobs] == [["--config-file", c, "a=1"] for c in ("npid.py", "pirl.py")]
    assert jobs[0].tool == str(REPO / "tools/train_net.py")
    with pytest.raises(FileNotFoundError, match="no tool 'trian_net'.*train_net"):
        make_jobs("trian_net", [])
    with pytest.raises(ValueError, match="same arguments"):
        submit(make_jobs("train_net", ["a=1"], array_overrides=["b=2", "b=2"]), executor=None)
    extra = parse_sbatch_lines(["#SBATCH --comment=x y", "--exclusive"])
    assert extra == {"comment": "x y", "exclusive": True}
    with pytest.raises(ValueError, match="'exclusive'"):
        parse_sbatch_lines(["exclusive"])


def test_checkpoint_requeues_with_resume_a_bounded_number_of_times():
    job = ToolJob("tools/train_net.py", ["--config-file", "c.py"], max_requeues=2)
    first = job.checkpoint().function
    assert first.argv == ["--config-file", "c.py", "--resume"] and first.requeues == 1
    second = first.checkpoint().function
    assert second.argv == first.argv and second.requeues == 2
    assert second.checkpoint() is None


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            if ppid == pid:
                found.append(int(entry.name))
    return found


def _run_local(tmp_path: Path, name: str, preempt: bool) -> tuple[Path, str]:
    output = tmp_path / name
    executor = build_executor(tmp_path / f"{name}_logs", Resources(gpus_per_node=0, tasks_per_node=2),
                              max_requeues=2, cluster="local")
    executor.update_parameters(timeout_min=20)
    job = submit([ToolJob(str(REPO / "tools/train_net.py"), [*TRAIN_ARGS, f"train.output_dir={output}"],
                          max_requeues=2)], executor)[0]
    deadline = time.monotonic() + 600
    if preempt:
        # As SLURM does before preempting: SIGUSR2 to every task, here once iteration 3 was logged.
        metrics = output / "metrics.json"
        while not (metrics.exists() and metrics.stat().st_size > 0):
            assert not job.done() and time.monotonic() < deadline, "the run ended before iteration 3"
            time.sleep(0.01)
        tasks = _children(int(job.job_id))
        assert len(tasks) == 2
        for pid in tasks:
            os.kill(pid, signal.SIGUSR2)
    while not job.done():
        assert time.monotonic() < deadline, "the job did not end in time"
        time.sleep(0.2)
    log = (job.stdout() or "") + (job.stderr() or "")
    assert job.state == "FINISHED" and (output / "model_final.pth").exists(), log[-6000:]
    return output, log


@pytest.fixture
def _one_thread(monkeypatch):
    # The same arithmetic in both jobs: one thread per task.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")


def test_local_executor_preempted_job_requeues_and_resumes_exactly(tmp_path, _one_thread):
    straight, straight_log = _run_local(tmp_path, "straight", preempt=False)
    assert "requeue" not in straight_log
    preempted, log = _run_local(tmp_path, "preempted", preempt=True)
    assert "preempted or timed out: requeue 1 of at most 2 with --resume" in log
    assert "requeued run 1 of at most 2" in log
    # Both tasks stopped after the same iteration S, where the main task wrote a checkpoint; the
    # requeued job started at S + 1 from it (with period 100 there is no other to start from).
    stops = re.findall(r"training stopped by SIGUSR2 after iteration (\d+)", log)
    assert stops, log[-6000:]
    stop = int(stops[0])
    assert 3 <= stop < MAX_ITER - 1
    assert f"Starting training from iteration {stop + 1}" in log
    written = sorted(p.name for p in preempted.glob("model_*.pth"))
    assert written == [f"model_{stop:07d}.pth", "model_final.pth"]
    assert torch.load(preempted / f"model_{stop:07d}.pth", weights_only=True)["iteration"] == stop
    final = torch.load(preempted / "model_final.pth")["model"]
    reference = torch.load(straight / "model_final.pth")["model"]
    assert final.keys() == reference.keys()
    assert [k for k in final if not torch.equal(final[k], reference[k])] == []


def test_rendezvous_from_job_environment(monkeypatch):
    """Rank, world size and master come from submitit's JobEnvironment (SLURM variables)."""
    calls = {}
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *a, **k: calls.update(a=a, k=k))
    monkeypatch.setattr("detectron2.utils.comm.create_local_process_group", lambda n: calls.update(local=n))
    monkeypatch.setattr("detectron2.utils.comm.synchronize", lambda: None)
    for key, value in dict(SLURM_JOB_ID="77", SLURM_NTASKS="16", SLURM_JOB_NUM_NODES="2", SLURM_NODEID="1",
                           SLURM_PROCID="9", SLURM_LOCALID="1", SLURM_JOB_NODELIST="gpu[3-4]").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    from d2ssl.engine.slurm import init_distributed, rendezvous_port

    env = submitit.JobEnvironment()
    init_distributed(env, "cpu")
    assert calls["a"] == ("gloo",) and calls["local"] == 8
    assert calls["k"] == dict(init_method=f"tcp://gpu3:{rendezvous_port('77:0')}", world_size=16, rank=9)
