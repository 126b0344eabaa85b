"""The command line shared by d2ssl's training tools: detectron2's argument parser and launcher."""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.config import LazyConfig
from detectron2.engine import default_argument_parser, launch
from detectron2.engine.launch import DEFAULT_TIMEOUT, _find_free_port
from detectron2.utils import comm
from omegaconf import DictConfig, OmegaConf
from torch.multiprocessing.spawn import ProcessException

from d2ssl.engine.preemption import stop_signals
from d2ssl.engine.run_folder import RunFolderError, release_all_run_folders
from d2ssl.utils.errors import reporting_errors

logger = logging.getLogger("d2ssl")


def argument_parser() -> argparse.ArgumentParser:
    """detectron2's standard flags (``--config-file``, ``--num-gpus``, ``--num-machines``,
    ``--machine-rank``, ``--dist-url``, ``--resume``, ``--eval-only``) and ``key=value`` overrides,
    plus ``--debug`` (tracebacks), ``--allow-pickle`` (``train.weights_init.ALLOW_PICKLE=True``),
    ``--start-over`` (a training tool moves the run in ``train.output_dir`` aside, see
    ``d2ssl.engine.run_folder``) and ``--random-trunk`` (an evaluation of no weights is a random
    baseline on purpose, ``d2ssl.evaluation.linear.announce_trunk_source``). Parse with
    ``parse_command_line``: flags may come anywhere among the overrides."""
    parser = default_argument_parser()
    # detectron2 takes everything after the first override as overrides (nargs=REMAINDER), so a
    # trailing --resume became a malformed override; "*" with parse_intermixed_args accepts flags anywhere.
    opts = next(a for a in parser._actions if a.dest == "opts")
    opts.nargs, opts.default = "*", []
    opts.help = "config overrides, path.key=value (anywhere among the flags)"
    parser.add_argument("--debug", action="store_true", help="on an error, print the full traceback")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="unpickle Python objects besides tensors in checkpoint and weight files, which "
                             "runs code stored in them (trusted files only); sets "
                             "train.weights_init.ALLOW_PICKLE")
    parser.add_argument("--start-over", action="store_true",
                        help="training tools: if train.output_dir holds a run, move its files to "
                             "<output_dir>/previous_runs/<run id>/ (nothing is deleted) and start a new run "
                             "there; without it (or --resume) a run into an occupied folder is refused")
    parser.add_argument("--random-trunk", action="store_true",
                        help="evaluation tools: a random baseline is meant: no weights are given, and the "
                             "trunk is initialised from train.seed (without it, a trunk without weights "
                             "is warned about)")
    resume = next(a for a in parser._actions if a.dest == "resume")
    resume.help = ("continue the run in train.output_dir (from its last complete checkpoint); a new run "
                   "if the folder holds none")
    return parser


def parse_command_line(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``argument_parser()``'s flags and overrides, in any order."""
    return argument_parser().parse_intermixed_args(argv)


def launch_from_command_line(main: Callable, argv: Sequence[str] | None = None) -> None:
    """Parses the command line (``parse_command_line``) and runs ``main(args)`` in each process
    through detectron2's ``launch``; an error ends the tool with one message (``reporting_errors``)."""
    args = parse_command_line(argv)
    with reporting_errors(debug=args.debug):
        # The config, its overrides and its data paths are checked here, before any process, folder
        # or rank preamble exists: a typo in a path is the one error line, in a second, not the last
        # line of every rank's output after the spawn.
        cfg = check_before_launch(args.config_file, args.opts)
        wanted = str(OmegaConf.select(cfg, "train.device", default="cuda")) if cfg is not None else "cuda"
        if args.num_gpus > 1 and wanted != "cpu" and not torch.cuda.is_available():
            _tell(f"WARNING: no CUDA device: starting {args.num_gpus} CPU processes (gloo) instead of "
                  f"{args.num_gpus} GPU processes")
        try:
            launch_processes(
                main,
                args.num_gpus,
                num_machines=args.num_machines,
                machine_rank=args.machine_rank,
                dist_url=args.dist_url,
                args=(args,),
                device=config_device(args.config_file, args.opts, cfg),
                num_workers=loader_workers(cfg),
            )
        finally:
            # A run that failed before training (its claim made in setup_from_args) unlocks its folder
            # now, not only when this process exits.
            release_all_run_folders()


def check_before_launch(config_file: str, overrides: Sequence[str] = ()) -> DictConfig | None:
    """The config of ``config_file`` with ``overrides``, checked as each process will check it
    (``setup_config``: unknown keys, types, values) and with every data set path it names present
    (``check_data_paths``); ``None`` without a config file. Creates nothing.

    Raises:
        ConfigError: (or ``ValueError``) naming the key and the value at fault.
    """
    if not config_file:
        return None
    from d2ssl.config import check_data_paths
    from d2ssl.engine.train_loop import setup_config  # train_loop is heavy; tools without a config skip it

    cfg = setup_config(config_file, list(overrides))
    check_data_paths(cfg)
    return cfg


def loader_workers(cfg: DictConfig | None) -> int:
    """``dataloader.train.num_workers`` of ``cfg`` (0 where absent): the loader processes each
    training process starts, which share the cores with it."""
    if cfg is None:
        return 0
    workers = OmegaConf.select(cfg, "dataloader.train.num_workers", default=0)
    return workers if isinstance(workers, int) and workers > 0 else 0


def available_cores() -> int:
    """The cores this process may run on: its CPU affinity (``taskset``, cgroup cpusets), lowered to
    the cgroup v2 CPU quota (``/sys/fs/cgroup/cpu.max``, a container's ``--cpus``) where one is set."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2 or no quota file: the affinity is all we know
        pass
    return max(1, cores)


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class ThreadChoice:
    """Intra-op threads of each training process: ``threads``, chosen (``user_set`` empty) or read
    from the environment variables of ``user_set``."""

    processes: int
    threads: int
    cores: int
    workers: int = 0
    user_set: str = ""

    def describe(self) -> str:
        workers = f" (+ {self.workers} loader workers each)" if self.workers else ""
        how = (f"{self.user_set} set by the user" if self.user_set
               else "OMP_NUM_THREADS unset; set it to choose")
        processes = f"{self.processes} process{'es' if self.processes != 1 else ''}"
        threads = f"{self.threads} thread{'s' if self.threads != 1 else ''}"
        return f"{processes} x {threads}{workers} on {self.cores} cores ({how})"


def choose_threads(processes: int, workers: int = 0, cores: int | None = None,
                   environ: dict | None = None) -> ThreadChoice:
    """The threads of each of ``processes`` training processes, each with ``workers`` loader
    processes: the ``OMP_NUM_THREADS`` (else ``MKL_NUM_THREADS``) the user set, else the cores
    divided among all of them (at least 1). torch's default, one thread per core in every process,
    oversubscribes a shared machine: a tiny run went 19x slower on 2 busy cores."""
    environ = os.environ if environ is None else environ
    cores = available_cores() if cores is None else cores
    processes = max(1, processes)
    for variable in THREAD_VARIABLES:
        value = environ.get(variable, "").strip()
        if value:
            try:
                threads = int(value)
            except ValueError:
                raise ValueError(f"{variable}={value!r} is not a whole number of threads: set it to one "
                                 f"(e.g. {variable}=1) or unset it to let d2ssl choose") from None
            if threads <= 0:
                raise ValueError(f"{variable}={value!r}: set it to a positive number of threads or unset it")
            return ThreadChoice(processes, threads, cores, workers, user_set=f"{variable}={threads}")
    return ThreadChoice(processes, max(1, cores // (processes * (1 + workers))), cores, workers)


def apply_threads(choice: ThreadChoice) -> None:
    """Sets ``choice.threads`` in this process (``torch.set_num_threads``) and, for the processes it
    starts (which read them when torch starts), in ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` where
    the user set neither."""
    if not choice.user_set:
        for variable in THREAD_VARIABLES:
            os.environ[variable] = str(choice.threads)
    torch.set_num_threads(choice.threads)


def _tell(line: str) -> None:
    """A line for the terminal from the launcher, which has no logger set up yet (detectron2's are
    set up in each process after the spawn)."""
    print(f"[d2ssl] {line}", file=sys.stderr, flush=True)


class WorkerFailedError(RuntimeError):
    """A launched process failed; the message names its global rank and how it ended."""


def config_device(config_file: str, overrides: Sequence[str] = (), cfg: DictConfig | None = None) -> str:
    """``train.device`` of a config after its overrides (``cuda`` where the config has no
    ``train.device``, as detectron2's configs), or ``cpu`` on a machine without CUDA. ``cfg``: the
    config already loaded with its overrides (``check_before_launch``), read instead of the file."""
    if not torch.cuda.is_available():
        return "cpu"
    if cfg is not None:
        return str(OmegaConf.select(cfg, "train.device", default="cuda"))
    for override in reversed(list(overrides)):
        if override.startswith("train.device="):
            return override.split("=", 1)[1].strip().strip("'\"")
    if not config_file:
        return "cuda"
    return str(OmegaConf.select(LazyConfig.load(config_file), "train.device", default="cuda"))


def launch_processes(
    main: Callable,
    num_processes_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str | None = "auto",
    args: tuple = (),
    device: str = "cuda",
    timeout: timedelta = DEFAULT_TIMEOUT,
    num_workers: int = 0,
) -> None:
    """Runs ``main(*args)`` in ``num_processes_per_machine`` processes on each of ``num_machines``.

    On CUDA: detectron2's ``launch`` (NCCL, one process per GPU). On CPU (``device="cpu"``, or no
    GPU): the same spawn and rendezvous with the gloo backend and no CUDA call, so that multi-process
    training runs, and is tested, on any machine. Where a process fails, the others are stopped and
    ``WorkerFailedError`` names the rank that failed first (a rank killed by a signal before a
    rank that raised, since the survivors' collectives then fail too). ``SIGTERM``/``SIGUSR2`` sent
    to this launcher are passed on to the processes, which write a checkpoint and stop
    (``d2ssl.engine.preemption``).

    Each process runs ``choose_threads`` intra-op threads (the cores divided among the processes and
    their ``num_workers`` loader workers, unless ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` is set),
    announced in one line on stderr.
    """
    world_size = num_machines * num_processes_per_machine
    on_cuda = device != "cpu" and torch.cuda.is_available()
    choice = choose_threads(max(1, num_processes_per_machine), num_workers)
    apply_threads(choice)
    _tell(choice.describe())
    if on_cuda:
        try:
            launch(main, num_processes_per_machine, num_machines, machine_rank, dist_url, args, timeout)
        except ProcessException as e:
            _raise_refusal(str(e))
            raise
        return
    if world_size <= 1:
        main(*args)
        return
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("--dist-url auto needs --num-machines 1; give tcp://HOST:PORT of machine 0")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    context = mp.start_processes(
        _cpu_worker,
        nprocs=num_processes_per_machine,
        args=(main, world_size, num_processes_per_machine, machine_rank, dist_url, args, timeout),
        join=False,
        start_method="spawn",
    )
    previous = _pass_signals_on(context.processes)
    try:
        while not context.join(grace_period=10):
            pass
    except ProcessException as e:
        _raise_refusal(str(e))
        raise WorkerFailedError(
            _describe_failure(context.processes, machine_rank * num_processes_per_machine, str(e))
        ) from e
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _pass_signals_on(processes: Sequence) -> dict:
    """Sends the stop signals this process receives on to ``processes`` (instead of ending this one
    and leaving them to run); returns the handlers replaced."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def pass_on(signum: int, frame) -> None:
        logger.warning("launcher received %s: passed on to the %d processes", signal.Signals(signum).name,
                       len(processes))
        for process in processes:
            try:
                os.kill(process.pid, signum)
            except ProcessLookupError:  # already ended
                pass

    return {signum: signal.signal(signum, pass_on) for signum in stop_signals()}


def _cpu_worker(local_rank, main, world_size, num_local, machine_rank, dist_url, args, timeout) -> None:
    rank = machine_rank * num_local + local_rank
    # The spawned interpreter read the thread variables (apply_threads) when torch started; set the
    # count again in case anything imported before changed it.
    threads = [os.environ.get(v, "").strip() for v in THREAD_VARIABLES]
    threads = [int(t) for t in threads if t.isdigit() and int(t) > 0]
    if threads:
        torch.set_num_threads(threads[0])
    dist.init_process_group("gloo", init_method=dist_url, world_size=world_size, rank=rank, timeout=timeout)
    comm.create_local_process_group(num_local)
    comm.synchronize()
    main(*args)


def _raise_refusal(cause: str) -> None:
    """Raises a run-folder refusal a worker raised (every rank raises the same one, see
    ``run_folder.claim_run_folder``) as the one line it is, instead of a rank's failure report."""
    for line in reversed(cause.strip().splitlines()):
        prefix = f"{RunFolderError.__module__}.{RunFolderError.__name__}: "
        if line.startswith(prefix):
            raise RunFolderError(line[len(prefix):]) from None


def _describe_failure(processes: Sequence, first_rank: int, cause: str) -> str:
    """One line per failed process, the likely first failure first: killed by an outside signal,
    then raised (often only because a peer vanished), then stopped by the launcher (SIGTERM)."""

    def order(process) -> int:
        if process.exitcode is not None and process.exitcode < 0 and -process.exitcode != signal.SIGTERM:
            return 0
        return 1 if process.exitcode and process.exitcode > 0 else 2

    failed = sorted((p for p in processes if p.exitcode != 0), key=order)
    lines = []
    for process in failed:
        rank = first_rank + processes.index(process)
        code = process.exitcode
        how = f"killed by signal {signal.Signals(-code).name}" if code is not None and code < 0 \
            else f"exited with code {code}"
        lines.append(f"rank {rank} (pid {process.pid}) {how}")
    first = lines[0] if lines else "a process failed"
    return f"{first}; the job stopped. All failed processes: {'; '.join(lines)}.\nFirst error seen:\n{cause}"
