"""Running d2ssl's tools on SLURM (or locally) through submitit: one task per GPU, rendezvous from
submitit's ``JobEnvironment``, requeue on preemption or time-out, job arrays, dry runs.

A ``ToolJob`` is a picklable callable that runs one tool (``tools/train_net.py``,
``tools/train_detection.py``, an evaluation tool: any thin tool whose module has ``main(args)``)
with its arguments unchanged, in every task of the job. Each task joins the process group at
``tcp://<first host of the job>:<port from the job id>`` with its global rank, as ``launch`` would.

Preemption and time-out (submitit's protocol, as ``dvlab-research/JigsawClustering``'s and MoCo's
SLURM launchers use): SLURM sends ``SIGUSR2`` to every task ahead of the kill
(``--signal=USR2@<delay>``). During training, ``d2ssl.engine.preemption.StopOnSignal`` takes the
signal first: every rank finishes its iteration, the ranks agree on it, the main process writes a
checkpoint of that iteration; then submitit's handler calls ``ToolJob.checkpoint`` in the rank-0
task, which returns the same job with ``--resume`` and the requeue count increased, and requeues it;
the other tasks end without error. The requeued job resumes from the signal-time checkpoint (no
iteration lost); the training loop's exact resume makes the run end as an uninterrupted one would.
A signal outside the training loop (setup, evaluation) requeues at once, from the last complete
checkpoint. At most ``max_requeues`` requeues (preemptions and time-outs together), each logged.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import shlex
import signal
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import submitit
import torch
import torch.distributed as dist
from detectron2.utils import comm
from submitit.slurm import slurm as submitit_slurm

from d2ssl.engine.launch import config_device, parse_command_line
from d2ssl.engine.preemption import TrainingStopped

logger = logging.getLogger("d2ssl")

REPO_TOOLS = Path(__file__).resolve().parents[2] / "tools"


def resolve_tool(tool: str) -> Path:
    """``train_net``, ``train_net.py`` or a path -> the tool's file; an unknown name lists the tools."""
    for candidate in (Path(tool), REPO_TOOLS / tool, REPO_TOOLS / f"{tool}.py"):
        if candidate.is_file():
            return candidate.resolve()
    known = sorted(p.stem for p in REPO_TOOLS.glob("*.py"))
    raise FileNotFoundError(f"no tool {tool!r}: give a file or one of {known}")


def load_tool_main(tool: Path):
    """The ``main(args)`` a thin tool hands to ``launch_from_command_line`` (imported, not run)."""
    spec = importlib.util.spec_from_file_location(f"d2ssl_tool_{tool.stem}", tool)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "main", None)):
        raise AttributeError(f"{tool} has no main(args) function to run in the job's tasks")
    return module.main


def rendezvous_port(key: str) -> int:
    """A port in [20000, 60000) derived from ``key`` (job id and start): the same in every task of a
    job, different for the jobs of an array."""
    return 20000 + zlib.crc32(key.encode()) % 40000


def init_distributed(env: Any, device: str, requeues: int = 0) -> None:
    """Joins the job's process group from submitit's ``JobEnvironment`` (SLURM variables on a
    cluster): world size = number of tasks, rank = global rank, master = first host; NCCL with one
    GPU per task, gloo on CPU. Nothing to do for a one-task job."""
    if env.num_tasks == 1:
        return
    cuda = device != "cpu" and torch.cuda.is_available()
    # A requeued job keeps its id: a fresh port per start avoids the previous start's sockets.
    master = "127.0.0.1" if env.num_nodes == 1 else env.hostnames[0]
    url = f"tcp://{master}:{rendezvous_port(f'{env.job_id}:{requeues}')}"
    logger.info("rank %d of %d (local %d) joins %s", env.global_rank, env.num_tasks, env.local_rank, url)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=url, world_size=env.num_tasks,
                            rank=env.global_rank)
    comm.create_local_process_group(env.num_tasks // env.num_nodes)
    if cuda:
        torch.cuda.set_device(env.local_rank)
    comm.synchronize()


@dataclasses.dataclass
class ToolJob:
    """``tool``'s ``main`` with ``argv`` (its command line, ``--config-file`` and ``key=value``
    overrides unchanged) in every task of a submitit job; requeued with ``--resume`` when preempted."""

    tool: str
    argv: list[str]
    max_requeues: int = 3
    requeues: int = 0

    def __call__(self) -> Any:
        args = parse_command_line(self.argv)
        env = submitit.JobEnvironment()
        init_distributed(env, config_device(args.config_file, args.opts), self.requeues)
        if self.requeues:
            logger.warning("requeued run %d of at most %d: resuming from the last checkpoint",
                           self.requeues, self.max_requeues)
        try:
            return load_tool_main(Path(self.tool))(args)
        except TrainingStopped as stopped:
            # Rank 0 requeues the job (submitit's handler, called by StopOnSignal); the others end
            # without error, so that SLURM (KillOnBadExit) does not kill rank 0 before it requeued.
            if env.global_rank == 0 or stopped.signum != getattr(signal, f"SIG{env.USR_SIG}"):
                raise
            logger.info("rank %d: %s; rank 0 requeues the job", env.global_rank, stopped)
            return None

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission | None:
        """Called by submitit in the rank-0 task on preemption / time-out: the same job with
        ``--resume`` (the signal-time checkpoint, or outside training the last complete one, is on
        disk), or None once the requeues are spent."""
        if self.requeues >= self.max_requeues:
            logger.error("preempted or timed out after %d requeues (max_requeues=%d): not requeued",
                         self.requeues, self.max_requeues)
            return None
        argv = self.argv if "--resume" in self.argv else [*self.argv, "--resume"]
        logger.warning("preempted or timed out: requeue %d of at most %d with --resume",
                       self.requeues + 1, self.max_requeues)
        requeued = dataclasses.replace(self, argv=argv, requeues=self.requeues + 1)
        return submitit.helpers.DelayedSubmission(requeued)

    def command(self) -> str:
        """The command line this job runs in each task."""
        return shlex.join(["python", str(self.tool), *self.argv])


@dataclasses.dataclass
class Resources:
    """What a job asks SLURM for (submitit's ``AutoExecutor`` parameter in brackets)."""

    nodes: int = 1
    gpus_per_node: int = 8
    tasks_per_node: int | None = None  # None: one task per GPU (CPU-only jobs: give it)
    cpus_per_task: int = 10
    mem_gb: float | None = None  # per node
    timeout_min: int = 72 * 60
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    job_name: str = "d2ssl"
    extra_sbatch: Sequence[str] = ()  # e.g. "--exclusive", "--mail-type=END"
    signal_delay_s: int = 120  # SIGUSR2 this long before the kill: time to stop cleanly

    @property
    def num_tasks_per_node(self) -> int:
        return self.tasks_per_node if self.tasks_per_node is not None else max(self.gpus_per_node, 1)

    def sbatch_parameters(self) -> dict[str, Any]:
        """The same request in the names of submitit's SLURM script writer."""
        params: dict[str, Any] = dict(
            nodes=self.nodes, gpus_per_node=self.gpus_per_node, ntasks_per_node=self.num_tasks_per_node,
            cpus_per_task=self.cpus_per_task, time=self.timeout_min, job_name=self.job_name,
            signal_delay_s=self.signal_delay_s, partition=self.partition, account=self.account,
            qos=self.qos, constraint=self.constraint,
            additional_parameters=parse_sbatch_lines(self.extra_sbatch) or None,
        )
        if self.mem_gb is not None:
            params["mem"] = submitit_slurm._convert_mem(self.mem_gb)
        return {k: v for k, v in params.items() if v is not None}

    def executor_parameters(self) -> dict[str, Any]:
        """The request as submitit ``AutoExecutor.update_parameters`` arguments."""
        params: dict[str, Any] = dict(
            nodes=self.nodes, gpus_per_node=self.gpus_per_node, tasks_per_node=self.num_tasks_per_node,
            cpus_per_task=self.cpus_per_task, timeout_min=self.timeout_min, name=self.job_name,
            slurm_signal_delay_s=self.signal_delay_s,
        )
        if self.mem_gb is not None:
            params["mem_gb"] = self.mem_gb
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(self, key) is not None:
                params[f"slurm_{key}"] = getattr(self, key)
        extra = parse_sbatch_lines(self.extra_sbatch)
        if extra:
            params["slurm_additional_parameters"] = extra
        return params


def parse_sbatch_lines(lines: Sequence[str]) -> dict[str, Any]:
    """``["--exclusive", "--mail-type=END", "#SBATCH --comment=x"]`` -> submitit's
    ``slurm_additional_parameters`` (``{"exclusive": True, "mail_type": "END", "comment": "x"}``)."""
    extra: dict[str, Any] = {}
    for line in lines:
        flag = line.strip().removeprefix("#SBATCH").strip()
        if not flag.startswith("--") or flag == "--":
            raise ValueError(f"extra sbatch line {line!r} must look like --key=value or --flag")
        key, _, value = flag[2:].partition("=")
        extra[key.replace("-", "_")] = value if value else True
    return extra


def build_executor(folder: str | Path, resources: Resources, max_requeues: int = 3,
                   cluster: str | None = None) -> submitit.AutoExecutor:
    """submitit's ``AutoExecutor`` (``cluster``: None = SLURM when ``sbatch`` exists, else local;
    "slurm", "local", "debug") writing its logs and pickles to ``folder`` (``%j`` = job id)."""
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster, slurm_max_num_timeout=max_requeues)
    params = resources.executor_parameters()
    if executor.cluster != "slurm":
        params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
    executor.update_parameters(**params)
    return executor


def submit(jobs: Sequence[ToolJob], executor: submitit.AutoExecutor) -> list[submitit.Job]:
    """One job, or one job array when there are several (``executor.batch``)."""
    if len({tuple(j.argv) for j in jobs}) != len(jobs):
        raise ValueError(
            "two jobs of the array have the same arguments: give each its own config or overrides"
        )
    if len(jobs) == 1:
        return [executor.submit(jobs[0])]
    with executor.batch():
        submitted = [executor.submit(job) for job in jobs]
    return submitted


def sbatch_script(
    jobs: Sequence[ToolJob], folder: str | Path, resources: Resources, max_requeues: int = 3
) -> str:
    """The sbatch script ``submit`` would hand to SLURM for ``jobs`` (an array when several), and the
    command each task runs; nothing is submitted, no SLURM needed (submitit's own script writer)."""
    folder = Path(folder).absolute()
    params = resources.sbatch_parameters()
    if len(jobs) > 1:
        params["map_count"] = len(jobs)
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    script = submitit_slurm._make_sbatch_string(command=command, folder=folder, **params)
    tasks = resources.nodes * resources.num_tasks_per_node
    lines = [script.rstrip(), "", f"# Each of the {tasks} tasks runs (rank and world size from submitit's "
             f"JobEnvironment, requeued with --resume at most {max_requeues} times):"]
    for i, job in enumerate(jobs):
        lines.append(f"#   [{i}] {job.command()}" if len(jobs) > 1 else f"#   {job.command()}")
    return "\n".join(lines) + "\n"


def make_jobs(tool: str, argv: Sequence[str], array_configs: Sequence[str] = (),
              array_overrides: Sequence[str] = (), max_requeues: int = 3) -> list[ToolJob]:
    """The jobs of one submission: ``tool argv``; or one per config of ``array_configs`` (replacing
    ``--config-file``); or one per entry of ``array_overrides`` (space-separated ``key=value``,
    appended: the trials of a sweep). ``--num-gpus`` and friends are dropped: the job's tasks set them."""
    path = str(resolve_tool(tool))
    base = _without_launch_flags(argv)
    if array_configs and array_overrides:
        raise ValueError("give either --array-configs or --array-overrides, not both")
    if array_configs:
        stripped = _without_flag(base, "--config-file")
        return [ToolJob(path, ["--config-file", c, *stripped], max_requeues) for c in array_configs]
    if array_overrides:
        return [ToolJob(path, [*base, *shlex.split(trial)], max_requeues) for trial in array_overrides]
    return [ToolJob(path, list(base), max_requeues)]


def _without_flag(argv: Sequence[str], flag: str) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(f"{flag}="):
            out.append(arg)
    return out


def _without_launch_flags(argv: Sequence[str]) -> list[str]:
    for flag in ("--num-gpus", "--num-machines", "--machine-rank", "--dist-url"):
        if any(a == flag or a.startswith(f"{flag}=") for a in argv):
            print(f"note: {flag} is set by the job's resources, ignored", file=sys.stderr)
        argv = _without_flag(argv, flag)
    return list(argv)
