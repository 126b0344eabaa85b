"""One training run per output folder: the run's identity, and a lock while it writes.

A training run (``tools/train_net.py``, ``train_linear.py``, ``train_detection.py``) owns
``train.output_dir``. What this module guarantees, and why:

- Identity: a fresh run gets a run id (``uuid4`` hex). It is written to ``<output_dir>/run.json``
  (atomically, with the config digest and ``max_iter``) and into every checkpoint the run saves (the
  top-level key ``"run"``). Resume continues the run ``run.json`` names and only from checkpoints
  that carry its id, so a leftover checkpoint of another run (a higher iteration in its name, another
  architecture) is never resumed from. Checkpoints written before run ids (no ``"run"`` key) resume
  when the folder has no ``run.json`` either ("legacy"), with a warning.
- One run per folder: a fresh run (no ``--resume``) into a folder holding a run (``*.pth``
  checkpoints, ``last_checkpoint`` or a non-empty ``metrics.json``) is refused in one line naming the
  run and the two ways on: ``--resume`` (continue it) or ``--start-over`` (move its files to
  ``<output_dir>/previous_runs/<run id>/``, nothing deleted, then start a new run). Otherwise the two
  runs' ``metrics.json`` interleave and ``max_to_keep`` deletes the other run's checkpoints. A run
  that stopped before it saved or logged anything (a wrong data path) leaves only ``run.json``: a
  fresh run takes the folder over, with a note in its log.
- A lock while a run writes: ``<output_dir>/run.lock``, created with ``O_CREAT|O_EXCL``, holds the
  pid, host and run id. A second run on the folder fails at once naming the holder; a lock whose pid
  no longer runs on this host is stale and taken over (logged). Only the main process (rank 0)
  decides and holds the lock; the other ranks get its decision (or its refusal) before training.
  The lock is released when training ends (normally or by an exception) and, as a backstop, at exit.

Folders of read-only tools (feature extraction, kNN) are not runs and are not claimed.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import hashlib
import json
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from detectron2.utils import comm

from d2ssl.utils.safe_io import atomic_write, load_torch_file

logger = logging.getLogger("d2ssl")

RUN_FILE = "run.json"
LOCK_FILE = "run.lock"
PREVIOUS_RUNS = "previous_runs"
LAST_CHECKPOINT = "last_checkpoint"
CHECKPOINT_KEY = "run"  # the top-level key of a checkpoint holding Run.stamp()
# What a run leaves that another run would spoil (besides *.pth checkpoints): a run.json alone (a run
# that stopped before it logged or saved anything: a bad data path) holds nothing to protect, nor does
# the empty metrics.json detectron2's writer creates before the first iteration.
_RUN_MARKERS = (LAST_CHECKPOINT, "metrics.json")
_PROCEED = ("continue it with --resume, or start a new run with --start-over (moves its files to "
            "{dir}/previous_runs/, deleting nothing)")


class RunFolderError(RuntimeError):
    """A run cannot start in its output folder (occupied, locked, unreadable); one line, naming the
    folder and how to proceed."""


@dataclass
class Run:
    """The run training in ``output_dir``. ``legacy``: it continues checkpoints written before run
    ids, so a checkpoint without one is its own."""

    id: str
    output_dir: str
    config_digest: str = ""
    max_iter: int | None = None
    legacy: bool = False
    created: str = field(default_factory=lambda: _now())
    # What claiming the folder did (a stale lock taken over, a run moved aside), logged by whoever
    # claimed it once its log file is open.
    notes: list[str] = field(default_factory=list, compare=False)

    def owns(self, stored_id: str | None) -> bool:
        """Whether a checkpoint carrying ``stored_id`` (None: written before run ids) is this run's."""
        return stored_id == self.id or (stored_id is None and self.legacy)

    def stamp(self) -> dict[str, Any]:
        """What each checkpoint of the run stores under ``"run"``."""
        return {"id": self.id, "config_digest": self.config_digest, "max_iter": self.max_iter}

    def record(self) -> dict[str, Any]:
        return {"run_id": self.id, "config_digest": self.config_digest, "max_iter": self.max_iter,
                "legacy_checkpoints": self.legacy, "created": self.created}


@dataclass
class CheckpointIdentity:
    """What a checkpoint file says about itself, read without loading its tensors. ``error``: why it
    could not be read (then the other fields are None)."""

    path: str
    run_id: str | None = None
    iteration: int | None = None
    max_iter: int | None = None
    keys: tuple[str, ...] = ()
    error: str | None = None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def checkpoint_identity(path: str, allow_pickle: bool = False) -> CheckpointIdentity:
    """The run id, iteration and top-level keys stored in the checkpoint ``path`` (tensors mapped,
    not read; through the safe loader)."""
    try:
        data = load_torch_file(path, allow_pickle, mmap=True)
    except Exception as e:  # noqa: BLE001  (damaged or unsafe: the load proper names why)
        return CheckpointIdentity(path, error=f"{type(e).__name__}: {str(e)[:300]}")
    if not isinstance(data, dict):
        return CheckpointIdentity(path, error=f"holds a {type(data).__name__}, not a checkpoint dict")
    run = data.get(CHECKPOINT_KEY) if isinstance(data.get(CHECKPOINT_KEY), dict) else {}
    iteration = data.get("iteration")
    return CheckpointIdentity(
        path, run_id=run.get("id"), iteration=int(iteration) if isinstance(iteration, int) else None,
        max_iter=run.get("max_iter"), keys=tuple(str(k) for k in data),
    )


def config_digest(cfg: Any) -> str:
    """sha256 (first 16 hex digits) of the config's values; an object put into it (a library caller's
    model) counts by its type, a callable ``_target_`` by its qualified name."""
    from omegaconf import OmegaConf

    def name(obj: Any) -> str:
        kind = obj if callable(obj) and hasattr(obj, "__qualname__") else type(obj)
        return f"<{getattr(kind, '__module__', '')}.{getattr(kind, '__qualname__', repr(kind))}>"

    try:
        values = OmegaConf.to_container(cfg, resolve=False)
        text = json.dumps(values, sort_keys=True, default=name)
    except Exception:  # noqa: BLE001  (only used in messages)
        return ""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- run.json
def read_run_file(output_dir: str) -> dict[str, Any] | None:
    """``<output_dir>/run.json``, or None if absent. An unreadable one is an error naming it."""
    path = os.path.join(output_dir, RUN_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
        if not isinstance(record, dict) or not isinstance(record.get("run_id"), str):
            raise ValueError("no 'run_id' string")
    except (OSError, ValueError) as e:
        raise RunFolderError(
            f"{path} is unreadable ({e}): it names the run in {output_dir}; restore it, or start a new run "
            f"with --start-over (moves the folder's files to {output_dir}/previous_runs/)"
        ) from e
    return record


def write_run_file(run: Run) -> None:
    """Writes ``run.json`` of ``run`` atomically (main process only)."""
    atomic_write(os.path.join(run.output_dir, RUN_FILE),
                 lambda f: f.write(json.dumps(run.record(), indent=2) + "\n"), mode="w")


def run_from_folder(output_dir: str) -> Run | None:
    """The run ``run.json`` names, or None without one."""
    record = read_run_file(output_dir)
    if record is None:
        return None
    return Run(id=record["run_id"], output_dir=output_dir, config_digest=record.get("config_digest", ""),
               max_iter=record.get("max_iter"), legacy=bool(record.get("legacy_checkpoints")),
               created=record.get("created", ""))


def _checkpoint_files(output_dir: str) -> list[str]:
    if not os.path.isdir(output_dir):
        return []
    return sorted(n for n in os.listdir(output_dir) if n.endswith(".pth"))


def _run_files(output_dir: str) -> list[str]:
    if not os.path.isdir(output_dir):
        return []
    markers = [n for n in _RUN_MARKERS if os.path.isfile(os.path.join(output_dir, n))
               and os.path.getsize(os.path.join(output_dir, n)) > 0]
    return [*_checkpoint_files(output_dir), *markers]


def _last_checkpoint_name(output_dir: str) -> str:
    try:
        with open(os.path.join(output_dir, LAST_CHECKPOINT)) as f:
            return f.read().strip()
    except OSError:
        return ""


def describe_run(output_dir: str) -> str:
    """``run <id>`` (or ``a run written before run ids``) and its last checkpoint's iteration."""
    try:
        record = read_run_file(output_dir)
        who = f"run {record['run_id']}" if record else "a run written before run ids (no run.json)"
    except RunFolderError:
        who = "a run with an unreadable run.json"
    last = _last_checkpoint_name(output_dir)
    if last and os.path.isfile(os.path.join(output_dir, last)):
        identity = checkpoint_identity(os.path.join(output_dir, last))
        at = f"iteration {identity.iteration}" if identity.iteration is not None else "iteration unknown"
        return f"{who} (last checkpoint {last}, {at})"
    files = _checkpoint_files(output_dir)
    return f"{who} ({len(files)} checkpoint file(s), no readable last_checkpoint)" if files else \
        f"{who} (no checkpoint yet)"


def move_run_aside(output_dir: str) -> str | None:
    """Moves every file and folder of ``output_dir`` but ``previous_runs/`` and the lock into
    ``<output_dir>/previous_runs/<run id or legacy-<time>>/``; returns that folder (None if nothing
    was there). Nothing is deleted."""
    names = [n for n in sorted(os.listdir(output_dir)) if n not in (PREVIOUS_RUNS, LOCK_FILE)]
    if not names:
        return None
    try:
        record = read_run_file(output_dir)
        name = record["run_id"] if record else f"legacy-{_now()}"
    except RunFolderError:
        name = f"unreadable-{_now()}"
    target = os.path.join(output_dir, PREVIOUS_RUNS, name)
    if os.path.exists(target):  # the same run moved aside twice (it was resumed in between)
        target = f"{target}-{_now()}-{uuid.uuid4().hex[:6]}"
    os.makedirs(target)
    for n in names:
        os.rename(os.path.join(output_dir, n), os.path.join(target, n))
    return target


# ---------------------------------------------------------------- lock
def _read_lock(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            holder = json.load(f)
        return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None
    except (OSError, ValueError):
        return None


def _alive_here(holder: dict[str, Any]) -> bool:
    """Whether the lock's holder may still run: its pid runs on this host, or it is on another host
    (which cannot be checked from here)."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _describe_holder(holder: dict[str, Any]) -> str:
    return (f"pid {holder.get('pid')} on {holder.get('host')} (run {holder.get('run_id') or '?'}, since "
            f"{holder.get('started') or '?'})")


def acquire_lock(output_dir: str, run_id: str, notes: list[str] | None = None) -> str:
    """Creates ``<output_dir>/run.lock`` for this process (``O_CREAT|O_EXCL``: one winner); takes over a
    stale one (its pid no longer runs on this host, noted in ``notes``); refuses a live or unreadable
    one, naming it."""
    path = os.path.join(output_dir, LOCK_FILE)
    content = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "run_id": run_id,
                          "started": _now()})
    for _ in range(5):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_lock(path)
            if holder is None:
                raise RunFolderError(
                    f"{output_dir} is locked by an unreadable {path} (a run starting right now, or one that "
                    f"crashed while creating it): if no run uses the folder, remove {path} and run again"
                ) from None
            if _alive_here(holder):
                raise RunFolderError(
                    f"{output_dir} is in use by another run: {_describe_holder(holder)} holds {path}; wait "
                    f"for it to end, use another train.output_dir, or remove {path} if that process has ended"
                ) from None
            # Stale: renamed first, so that of two processes taking it over only one removes it.
            taken = f"{path}.stale-{os.getpid()}"
            try:
                os.rename(path, taken)
            except FileNotFoundError:
                continue  # another process took it over first: try again
            if _read_lock(taken) != holder:  # a fresh lock created meanwhile: give it back
                os.rename(taken, path)
                continue
            os.remove(taken)
            note = f"took over the stale lock {path} of {_describe_holder(holder)}: that process has ended"
            if notes is not None:
                notes.append(note)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        return path
    raise RunFolderError(f"could not lock {output_dir}: {path} kept changing; run again")


def release_lock(output_dir: str) -> None:
    """Removes ``run.lock`` if this process holds it."""
    path = os.path.join(output_dir, LOCK_FILE)
    holder = _read_lock(path)
    if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


# ---------------------------------------------------------------- claiming a folder
_HELD: dict[str, Run] = {}  # output folders this process claimed, by absolute path


def current_run(output_dir: str) -> Run | None:
    """The run this process claimed ``output_dir`` for, if any."""
    return _HELD.get(os.path.abspath(output_dir)) if output_dir else None


def claim_run_folder(output_dir: str, *, resume: bool, start_over: bool = False, digest: str = "") -> Run:
    """Claims ``output_dir`` for one run and returns it (see the module docstring): the main process
    locks the folder and decides (a new run, the run to resume, or a refusal); every rank gets the
    same decision (a collective: all ranks call it). Held until ``release_run_folder``; a second
    claim of a folder this process holds returns the same run."""
    if resume and start_over:
        raise RunFolderError("--resume and --start-over exclude each other: --resume continues the run in "
                             f"{output_dir}, --start-over moves it aside and starts a new one")
    key = os.path.abspath(output_dir)
    if key in _HELD:
        return _HELD[key]
    outcome: tuple[str, Any] = ("ok", None)
    error: BaseException | None = None
    if comm.is_main_process():
        try:
            outcome = ("ok", _claim_on_main(output_dir, resume=resume, start_over=start_over, digest=digest))
        except Exception as e:  # noqa: BLE001  (every rank must hear of it, or they wait forever)
            text = str(e) if isinstance(e, RunFolderError) else f"{type(e).__name__}: {e}"
            error, outcome = e, ("error", text)
    if comm.get_world_size() > 1:
        outcome = comm.all_gather(outcome)[0]  # rank 0 decides for all
    if error is not None:
        raise error
    if outcome[0] == "error":
        raise RunFolderError(outcome[1])
    run = outcome[1]
    _HELD[key] = run
    return run


def _claim_on_main(output_dir: str, *, resume: bool, start_over: bool, digest: str) -> Run:
    os.makedirs(output_dir, exist_ok=True)
    new_id = uuid.uuid4().hex
    notes: list[str] = []
    acquire_lock(output_dir, new_id, notes)
    try:
        run = _decide(output_dir, new_id, resume=resume, start_over=start_over, digest=digest, notes=notes)
        run.notes = notes
        if run.id != new_id:  # resuming: the lock names the run that writes
            atomic_write(os.path.join(output_dir, LOCK_FILE), lambda f: f.write(json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "run_id": run.id, "started": _now()})),
                mode="w")
        write_run_file(run)
    except BaseException:
        release_lock(output_dir)
        raise
    return run


def _decide(output_dir: str, new_id: str, *, resume: bool, start_over: bool, digest: str,
            notes: list[str]) -> Run:
    fresh = Run(id=new_id, output_dir=output_dir, config_digest=digest)
    if start_over:
        described = describe_run(output_dir)
        moved = move_run_aside(output_dir)
        if moved:
            notes.append(f"--start-over: moved {described} from {output_dir} to {moved}")
        return fresh
    if not resume:
        if _run_files(output_dir):
            raise RunFolderError(f"{output_dir} holds {describe_run(output_dir)}: "
                                 + _PROCEED.format(dir=output_dir))
        previous = read_run_file(output_dir)
        if previous is not None:
            notes.append(f"run {previous['run_id']} in {output_dir} stopped before it saved or logged "
                         f"anything: starting a new run there")
        return fresh
    run = run_from_folder(output_dir)
    if run is not None:
        if digest and run.config_digest and digest != run.config_digest:
            # Not refused: changing max_iter or the number of loader workers on resume is legitimate; but
            # the numbers of a run whose settings changed midway are not those of either config.
            notes.append(f"resuming run {run.id} with a config whose digest {digest} differs from the "
                         f"one it was trained with so far ({run.config_digest}): its later iterations follow "
                         f"the new settings; start a new run (--start-over or another train.output_dir) to "
                         f"get the numbers of one config")
        run.config_digest = digest or run.config_digest
        return run
    checkpoints = _checkpoint_files(output_dir)
    if not checkpoints:
        return fresh  # nothing to resume: a new run
    # No run.json: checkpoints of a run that predates run ids, or run.json lost. The file
    # last_checkpoint names tells which run wrote last.
    last = _last_checkpoint_name(output_dir)
    stored = checkpoint_identity(os.path.join(output_dir, last)).run_id if last in checkpoints else None
    if stored is not None:
        notes.append(f"{output_dir} has no {RUN_FILE}: resuming run {stored}, which wrote {last}")
        return Run(id=stored, output_dir=output_dir, config_digest=digest)
    notes.append(f"{output_dir} holds checkpoints written before run ids (no {RUN_FILE}): resuming them as "
                 f"run {new_id}; checkpoints of other runs must not be in this folder")
    return Run(id=new_id, output_dir=output_dir, config_digest=digest, legacy=True)


def log_claim(run: Run) -> None:
    """Logs what claiming the folder did (call once the run's log file is open)."""
    for note in run.notes:
        logger.warning(note)
    logger.info("run %s in %s (config digest %s)", run.id, run.output_dir, run.config_digest or "-")


def release_run_folder(output_dir: str) -> None:
    """Ends this process's claim on ``output_dir`` (the main process removes the lock)."""
    run = _HELD.pop(os.path.abspath(output_dir), None)
    if run is not None and comm.is_main_process():
        release_lock(output_dir)


@contextlib.contextmanager
def holding_run_folder(output_dir: str, *, resume: bool, digest: str = "") -> Iterator[Run]:
    """The run of ``output_dir`` for one training: the claim this process already holds (made before
    ``default_setup`` wrote to the folder, ``setup_from_args``) or a new one; released at the end."""
    new = current_run(output_dir) is None
    run = claim_run_folder(output_dir, resume=resume, digest=digest)
    if new:
        log_claim(run)
    try:
        yield run
    finally:
        release_run_folder(output_dir)


def note_max_iter(run: Run, max_iter: int, resumed_max_iter: int | None) -> None:
    """Records ``max_iter`` in the run (and ``run.json``); warns when a resumed run's schedule changes."""
    if resumed_max_iter is not None and resumed_max_iter != max_iter:
        logger.warning(
            "resuming run %s with train.max_iter=%d; its checkpoint was trained towards max_iter=%d: the "
            "learning-rate schedule is stretched to the new length (the LR may jump back up). To train a "
            "finished run further, start a new run from its weights instead: train.init_checkpoint="
            "%s/model_final.pth with its own schedule, in another train.output_dir",
            run.id, max_iter, resumed_max_iter, run.output_dir,
        )
    run.max_iter = max_iter
    if comm.is_main_process() and os.path.isdir(run.output_dir):
        write_run_file(run)


@atexit.register
def release_all_run_folders() -> None:
    """Ends every claim this process holds (a tool's end; at exit as a backstop)."""
    for key in list(_HELD):
        release_run_folder(key)

