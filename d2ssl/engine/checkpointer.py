"""detectron2's checkpointer made safe for long runs.

- Atomic saves: a checkpoint is written to ``<name>.pth.tmp``, flushed to disk and renamed; then
  ``last_checkpoint`` is rewritten the same way. A process killed at any point leaves
  ``last_checkpoint`` naming a complete file (the previous one if the kill came mid-save).
- No bad saves: a model holding NaN or inf (weights, BatchNorm statistics, memory bank) is not
  written; ``FloatingPointError`` names the tensors and the last good checkpoint stays the last.
- Strict resume: resuming our own run refuses a file that does not match the model exactly
  (missing, unexpected or differently shaped tensors; no trainer state), where detectron2 only warns
  and loads what fits. Initialising from ``train.init_checkpoint`` may leave some tensors untouched
  (a trunk-only file), but a shape mismatch or a file sharing no tensor with the model is an error.
- Integrity: each saved checkpoint gets a ``<name>.pth.sha256`` beside it; every file loaded
  (resume, ``train.init_checkpoint``) must match its checksum if it has one and pass the CRC32 checks
  of its zip container (``d2ssl.utils.safe_io.verify_integrity``).
- Resume only from the same run: each checkpoint stores its run's identity (``"run"``, see
  ``d2ssl.engine.run_folder``). Resume tries the file ``last_checkpoint`` names, then the run's other
  training checkpoints (periodic and final; never ``model_best.pth`` or other weights), latest
  iteration (as stored in the file) first; a file that is damaged, missing, of another architecture
  or of another run is skipped with a warning. With none left it refuses, naming each file and why.
  A ``.pkl``, ``.pyth`` or any file without trainer state is never resumed from (checked before
  anything is loaded).
- No code from files: every file goes through ``d2ssl.utils.safe_io`` (``torch.load(weights_only=True)``,
  ``.pyth`` files included; for ``.pkl`` files an unpickler that builds only numpy arrays and
  containers), unless ``allow_pickle`` (``--allow-pickle``).
- Unreadable files (truncated, corrupted, missing) raise ``CheckpointLoadError`` naming the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer

from d2ssl.checkpoint.zoo import is_zoo_name
from d2ssl.engine.run_folder import (
    CHECKPOINT_KEY,
    CheckpointIdentity,
    Run,
    checkpoint_identity,
    current_run,
    run_from_folder,
)
from d2ssl.utils.errors import summarize
from d2ssl.utils.safe_io import (
    CHECKSUM_SUFFIX,
    CorruptFileError,
    UnsafeFileError,
    atomic_write,
    load_pickle_file,
    load_torch_file,
    not_a_file_message,
    verify_integrity,
)

_MODULE_PREFIX = "module."  # added by DataParallel / DistributedDataParallel
# Files holding a run's training state: PeriodicCheckpointer's "<prefix>_<iteration>" and "<prefix>_final".
_TRAINING_CHECKPOINT = re.compile(r"^.+_(\d+|final)\.pth$")


class CheckpointLoadError(RuntimeError):
    """A checkpoint cannot be read or does not fit the model; the message names the file."""


class DamagedCheckpointError(CheckpointLoadError):
    """A checkpoint file is damaged, truncated, unreadable or unsafe: nothing of it was loaded."""


class MismatchedCheckpointError(CheckpointLoadError):
    """A checkpoint was written for another model or architecture: nothing of it was loaded."""


def non_finite_tensors(state: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors of ``state`` holding NaN or inf."""
    return [
        k for k, v in state.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]


def _examples(keys: list, limit: int = 5) -> str:
    shown = ", ".join(str(k) for k in keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


class AtomicCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with atomic saves, a non-finite guard and strict resume (see the
    module docstring). A drop-in replacement: same constructor, ``save``, ``resume_or_load``;
    ``allow_pickle=True`` unpickles files in full (runs the code they hold: trusted files only)."""

    def __init__(self, model: torch.nn.Module, save_dir: str = "", *, save_to_disk: bool | None = None,
                 allow_pickle: bool = False, run: Run | None = None, **checkpointables: Any):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.allow_pickle = allow_pickle
        # The run whose identity each save stores: given, or the one this process claimed save_dir for.
        self.run = run if run is not None else current_run(save_dir)
        # After resume_or_load: the file resumed from and what it says of itself (None: not resumed).
        self.resumed: CheckpointIdentity | None = None
        self._loading: str | None = None
        self._resuming = False

    # ---------------------------------------------------------------- saving
    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        data = {"model": self.model.state_dict()}
        bad = non_finite_tensors(data["model"])
        if bad:
            raise FloatingPointError(
                f"not writing {save_file}: the model holds NaN or inf in {_examples(bad)}; the last "
                f"complete checkpoint ({self.get_checkpoint_file() or 'none'}) is left as it is"
            )
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        if self.run is not None:
            data[CHECKPOINT_KEY] = self.run.stamp()
        data.update(kwargs)
        self.path_manager.mkdirs(self.save_dir)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write(save_file, lambda f: torch.save(data, f), mode="wb", checksum=True)
        self.tag_last_checkpoint(basename)
        self._remove_stale_checksums()

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        save_file = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(save_file, lambda f: f.write(last_filename_basename), mode="w")

    def _remove_stale_checksums(self) -> None:
        # The periodic checkpointer deletes old checkpoints (max_to_keep), not their checksums.
        for name in self.path_manager.ls(self.save_dir):
            checkpoint = os.path.join(self.save_dir, name[: -len(CHECKSUM_SUFFIX)])
            if name.endswith(".pth" + CHECKSUM_SUFFIX) and not self.path_manager.exists(checkpoint):
                self.path_manager.rm(os.path.join(self.save_dir, name))

    # ---------------------------------------------------------------- loading
    def resume_or_load(self, path: str, *, resume: bool = True) -> dict[str, Any]:
        """Resumes the run in ``save_dir`` (strictly: the file must be the run's, match the model and
        hold the trainer state; see the module docstring) if ``resume`` and it has a checkpoint;
        otherwise initialises the model from ``path``. ``self.resumed`` says which."""
        self.resumed = None
        if resume and (self.has_checkpoint() or self._training_checkpoints()):
            self._resuming = True
            try:
                return self._resume()
            finally:
                self._resuming = False
        return self.load(path, checkpointables=[])

    def _resume_run(self) -> Run:
        """The run to resume: the one this process claimed the folder for, else the one ``run.json``
        names, else (neither) the checkpoints written before run ids."""
        run = self.run or run_from_folder(self.save_dir)
        if run is None:
            self.logger.warning(f"{self.save_dir} has no run.json: resuming from checkpoints that carry no "
                                f"run id (written before run ids) only")
            run = Run(id="", output_dir=self.save_dir, legacy=True)
        return run

    def _resume(self) -> dict[str, Any]:
        run = self._resume_run()
        failures: list[str] = []  # why each file tried was not resumed from
        others: list[str] = []  # files of other runs, not tried
        last = self.get_checkpoint_file() if self.has_checkpoint() else ""
        candidates = []
        if last and self.path_manager.isfile(last):
            candidates.append(last)
        elif self.has_checkpoint():  # missing or empty: the run's other checkpoints are tried
            tag = os.path.join(self.save_dir, "last_checkpoint")
            failures.append(f"{tag} names {os.path.basename(last)!r}, which is not a file")
        candidates += [p for p in self._training_checkpoints() if not last or not _same_file(p, last)]
        identities = {p: checkpoint_identity(p, self.allow_pickle) for p in candidates}
        reached = max((i.iteration for i in identities.values() if i.iteration is not None
                       and run.owns(i.run_id)), default=None)
        for path in candidates:
            identity = identities[path]
            refusal = self._not_a_resume_target(path, identity, run)
            if refusal is not None:
                (others if refusal.startswith("belongs to run") else failures).append(
                    f"{os.path.basename(path)} {refusal}")
                self.logger.warning(f"not resuming from {path}: it {refusal}")
                continue
            try:
                extra = self.load(path)
            except (DamagedCheckpointError, MismatchedCheckpointError) as e:
                failures.append(" ".join(str(e).split()))
                self.logger.warning(f"not resuming from {path}: {failures[-1]}")
                continue
            self.resumed = identity
            self._log_resume(run, path, identity, failures, reached)
            return extra
        who = f"run {run.id}" if run.id else "the checkpoints written before run ids"
        raise CheckpointLoadError(
            f"cannot resume {who} in {self.save_dir}: no checkpoint of it is left to resume from. "
            + "; ".join(failures + others)
            + f". Start a new run with --start-over (moves these files to {self.save_dir}/previous_runs/), "
            f"or from weights with train.init_checkpoint=<file>"
        )

    def _not_a_resume_target(self, path: str, identity: CheckpointIdentity, run: Run) -> str | None:
        """Why ``path`` is not resumed from, before anything of it is loaded (None: try it)."""
        if path.endswith((".pkl", ".pyth")):
            return ("holds weights only (a .pkl/.pyth is never a training checkpoint): not resumed from; "
                    "use train.init_checkpoint to start a new run from its weights")
        if identity.error is not None:
            return None  # damaged or unsafe: loading it names why
        if not run.owns(identity.run_id):
            return f"belongs to run {identity.run_id or '(none: written before run ids)'}, not this one"
        absent = [k for k in self.checkpointables if k not in identity.keys]
        if absent:
            return (f"lacks {absent} (optimizer, scheduler, iteration): not a training checkpoint; use "
                    f"train.init_checkpoint to start a new run from its weights")
        return None

    def _log_resume(self, run: Run, path: str, identity: CheckpointIdentity, failures: list[str],
                    reached: int | None) -> None:
        done = identity.iteration
        who = f"run {run.id}" if run.id else "a run written before run ids"
        if not failures:
            self.logger.info(f"resuming {who} from {path}: iteration {done} done, continuing at {done + 1}"
                             if done is not None else f"resuming {who} from {path}")
            return
        if done is not None and reached is not None and reached > done:
            again = f"iterations {done + 1}..{reached} are trained again"
        elif done is not None and reached is not None:
            again = f"the files above held no later iteration of the run than {done}: none is trained again"
        else:
            again = f"the iterations after {done} that the files above held, if any, are trained again"
        self.logger.warning(
            "\n".join(failures) + f"\nResuming {who} from the previous complete checkpoint {path} "
            f"(iteration {done}) instead: {again}."
        )

    def _training_checkpoints(self) -> list[str]:
        """The training-state checkpoints in ``save_dir``, latest iteration first (as stored in each
        file, never its name or modification time, which a copy of the folder may change): the
        periodic ``<prefix>_<iteration>.pth`` and ``<prefix>_final.pth``; a periodic file first at the
        same iteration; a file whose iteration cannot be read last. Other files (``model_best.pth`` of
        the linear benchmark, converted or copied weights) are not a run's latest state."""
        if not self.save_dir or not self.path_manager.isdir(self.save_dir):
            return []
        ranked = []
        for path in self.get_all_checkpoint_files():
            match = _TRAINING_CHECKPOINT.match(os.path.basename(path))
            if match:
                stored = checkpoint_identity(path, self.allow_pickle).iteration
                ranked.append((-1 if stored is None else stored, match.group(1) != "final", path))
        return [path for *_, path in sorted(ranked, reverse=True)]

    def load(self, path: str, checkpointables: list[str] | None = None) -> dict[str, Any]:
        if is_zoo_name(path):  # published files keep their trunk in foreign layouts: the importer reads them
            raise CheckpointLoadError(
                f"{path!r} is a published checkpoint (d2ssl.checkpoint.zoo), not a d2ssl run's checkpoint: "
                f"load its trunk with train.weights_init.PARAMS_FILE={path} (train.init_checkpoint= empty)"
            )
        if path and "://" not in path and not os.path.isfile(path):
            raise CheckpointLoadError(not_a_file_message(path, "checkpoint"))
        self._loading = path
        try:
            return super().load(path, checkpointables)
        except CheckpointLoadError:
            raise
        except (KeyError, ValueError, RuntimeError, TypeError) as e:
            if not self._resuming:
                raise
            # The optimizer, scheduler or a hook refused its saved state.
            raise CheckpointLoadError(f"cannot resume from {path}: {type(e).__name__}: {e}") from e
        finally:
            self._loading = None
            # detectron2's load() asserts this is None on entry but does not reset it on an error.
            self._parsed_url_during_load = None

    def _load_file(self, filename: str) -> dict[str, Any]:
        try:
            verify_integrity(filename)
            if filename.endswith(".pkl"):
                loaded = _model_zoo_checkpoint(load_pickle_file(filename, self.allow_pickle))
            elif filename.endswith(".pyth"):
                # detectron2 reads pycls files with a bare torch.load (code runs when
                # TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set): the safe loader instead.
                loaded = _pycls_checkpoint(load_torch_file(filename, self.allow_pickle), filename)
            else:
                loaded = super()._load_file(filename)
        except (CorruptFileError, UnsafeFileError) as e:
            raise DamagedCheckpointError(f"{e}{self._other_checkpoints_hint(filename)}") from e
        except Exception as e:
            raise DamagedCheckpointError(
                f"cannot read checkpoint {filename!r}: {type(e).__name__}: {summarize(str(e))}; the file is "
                f"truncated, corrupted or not a checkpoint.{self._other_checkpoints_hint(filename)}"
            ) from e
        if not isinstance(loaded.get("model"), Mapping):
            raise DamagedCheckpointError(
                f"checkpoint {filename!r} holds no state dict under 'model' "
                f"(found {type(loaded.get('model')).__name__})"
            )
        return loaded

    def _torch_load(self, f: str) -> Any:
        return load_torch_file(f, self.allow_pickle)

    def _load_model(self, checkpoint: dict[str, Any]):
        path = self._loading
        if self._resuming or not checkpoint.get("matching_heuristics", False):
            # Checked before anything is copied into the model: an error leaves it untouched.
            self._check_fits(checkpoint, path)
        incompatible = super()._load_model(checkpoint)
        if incompatible.incorrect_shapes:
            raise CheckpointLoadError(
                f"checkpoint {path!r} does not fit the model: shapes differ for "
                f"{_examples([f'{k} {a} vs {b}' for k, a, b in incompatible.incorrect_shapes])}"
            )
        return incompatible

    def _check_fits(self, checkpoint: dict[str, Any], path: str | None) -> None:
        saved = checkpoint["model"]
        names = list(saved.keys())
        if names and all(k.startswith(_MODULE_PREFIX) for k in names):
            names = [k[len(_MODULE_PREFIX):] for k in names]
            saved = dict(zip(names, saved.values()))
        expected = self.model.state_dict()
        missing = [k for k in expected if k not in saved]
        unexpected = [k for k in saved if k not in expected]
        shapes = [
            f"{k} {tuple(saved[k].shape)} in the file, {tuple(v.shape)} in the model"
            for k, v in expected.items()
            if k in saved and hasattr(saved[k], "shape") and tuple(saved[k].shape) != tuple(v.shape)
        ]
        problems = []
        if shapes:
            problems.append(f"shapes differ for {_examples(shapes)}")
        if self._resuming:
            if missing:
                problems.append(f"the model has tensors the file lacks: {_examples(missing)}")
            if unexpected:
                problems.append(f"the file has tensors the model lacks: {_examples(unexpected)}")
            absent = [k for k in self.checkpointables if k not in checkpoint]
            if absent:
                problems.append(
                    f"it lacks {absent} (optimizer, scheduler, iteration): not a training checkpoint; "
                    f"use train.init_checkpoint to start a new run from its weights"
                )
        elif len(missing) == len(expected):
            problems.append(
                f"it shares no tensor name with the model (file: {_examples(list(saved))}; model: "
                f"{_examples(list(expected))}); convert it first (d2ssl.checkpoint)"
            )
        if problems:
            action = "resume from" if self._resuming else "load"
            raise MismatchedCheckpointError(
                f"cannot {action} checkpoint {path!r}: it was written for another model or architecture: "
                + "; ".join(problems)
            )

    def _other_checkpoints_hint(self, bad: str) -> str:
        if self._resuming:  # resume tries the other checkpoints itself
            return ""
        if not self.save_dir or not self.path_manager.isdir(self.save_dir):
            return ""
        others = sorted(os.path.basename(f) for f in self.get_all_checkpoint_files() if f != bad)
        if not others:
            return ""
        return (f" Other checkpoints in {self.save_dir}: {others}; write one of these names into "
                f"last_checkpoint to resume from it.")


def _model_zoo_checkpoint(data: Any) -> dict[str, Any]:
    """What detectron2's ``DetectionCheckpointer._load_file`` makes of an unpickled ``.pkl``: a
    detectron2 model-zoo file as it is, a Caffe2 / Detectron1 one wrapped for the name heuristics."""
    if not isinstance(data, Mapping):
        raise TypeError(f"the pickle holds a {type(data).__name__}, not a dict")
    if "model" in data and "__author__" in data:
        return dict(data)
    if "blobs" in data:  # Detection models have "blobs", ImageNet models do not
        data = data["blobs"]
    data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
    return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}


def _pycls_checkpoint(data: Any, filename: str) -> dict[str, Any]:
    """What detectron2's ``DetectionCheckpointer._load_file`` makes of a pycls ``.pyth`` file: its
    ``model_state`` without BatchNorm's ``num_batches_tracked``, loaded by name heuristics."""
    if not isinstance(data, Mapping) or not isinstance(data.get("model_state"), Mapping):
        raise TypeError(f"{filename} is not a pycls checkpoint: it holds no 'model_state' dict")
    state = {k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")}
    return {"model": state, "__author__": "pycls", "matching_heuristics": True}


def _same_file(a: str, b: str) -> bool:
    return os.path.abspath(a) == os.path.abspath(b)
