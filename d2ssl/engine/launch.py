"""The command line shared by d2ssl's training tools: detectron2's argument parser and launcher."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from collections.abc import Callable, Sequence
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.config import LazyConfig
from detectron2.engine import default_argument_parser, launch
from detectron2.engine.launch import DEFAULT_TIMEOUT, _find_free_port
from detectron2.utils import comm
from omegaconf import OmegaConf
from torch.multiprocessing.spawn import ProcessException

from d2ssl.engine.preemption import stop_signals
from d2ssl.utils.errors import reporting_errors

logger = logging.getLogger("d2ssl")


def argument_parser() -> argparse.ArgumentParser:
    """detectron2's standard flags (``--config-file``, ``--num-gpus``, ``--num-machines``,
    ``--machine-rank``, ``--dist-url``, ``--resume``, ``--eval-only``) and ``key=value`` overrides,
    plus ``--debug`` (tracebacks) and ``--allow-pickle`` (``train.weights_init.ALLOW_PICKLE=True``).
    Parse with ``parse_command_line``: flags may come anywhere among the overrides."""
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
    return parser


def parse_command_line(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``argument_parser()``'s flags and overrides, in any order."""
    return argument_parser().parse_intermixed_args(argv)


def launch_from_command_line(main: Callable, argv: Sequence[str] | None = None) -> None:
    """Parses the command line (``parse_command_line``) and runs ``main(args)`` in each process
    through detectron2's ``launch``; an error ends the tool with one message (``reporting_errors``)."""
    args = parse_command_line(argv)
    with reporting_errors(debug=args.debug):
        launch_processes(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
            device=config_device(args.config_file, args.opts),
        )


class WorkerFailedError(RuntimeError):
    """A launched process failed; the message names its global rank and how it ended."""


def config_device(config_file: str, overrides: Sequence[str] = ()) -> str:
    """``train.device`` of a config after its overrides (``cuda`` where the config has no
    ``train.device``, as detectron2's configs), or ``cpu`` on a machine without CUDA."""
    if not torch.cuda.is_available():
        return "cpu"
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
) -> None:
    """Runs ``main(*args)`` in ``num_processes_per_machine`` processes on each of ``num_machines``.

    On CUDA: detectron2's ``launch`` (NCCL, one process per GPU). On CPU (``device="cpu"``, or no
    GPU): the same spawn and rendezvous with the gloo backend and no CUDA call, so that multi-process
    training runs, and is tested, on any machine. Where a process fails, the others are stopped and
    ``WorkerFailedError`` names the rank that failed first (a rank killed by a signal before a
    rank that raised, since the survivors' collectives then fail too). ``SIGTERM``/``SIGUSR2`` sent
    to this launcher are passed on to the processes, which write a checkpoint and stop
    (``d2ssl.engine.preemption``).
    """
    world_size = num_machines * num_processes_per_machine
    if device != "cpu" and torch.cuda.is_available():
        launch(main, num_processes_per_machine, num_machines, machine_rank, dist_url, args, timeout)
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
    dist.init_process_group("gloo", init_method=dist_url, world_size=world_size, rank=rank, timeout=timeout)
    comm.create_local_process_group(num_local)
    comm.synchronize()
    main(*args)


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
