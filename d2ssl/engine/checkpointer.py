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
  of its zip container (``d2ssl.utils.safe_io.verify_integrity``). Resuming from a damaged or
  unreadable file falls back, with a warning, to the run's other training checkpoints (periodic and
  final, latest iteration first; never ``model_best.pth`` or other weights in the folder).
- No code from files: ``torch.load(weights_only=True)`` and, for ``.pkl`` files, an unpickler that
  builds only numpy arrays and containers, unless ``allow_pickle`` (``--allow-pickle``).
- Unreadable files (truncated, corrupted, missing) raise ``CheckpointLoadError`` naming the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer

from d2ssl.utils.safe_io import (
    CHECKSUM_SUFFIX,
    CorruptFileError,
    UnsafeFileError,
    atomic_write,
    load_pickle_file,
    load_torch_file,
    verify_integrity,
)

_MODULE_PREFIX = "module."  # added by DataParallel / DistributedDataParallel
# Files holding a run's training state: PeriodicCheckpointer's "<prefix>_<iteration>" and "<prefix>_final".
_TRAINING_CHECKPOINT = re.compile(r"^.+_(\d+|final)\.pth$")


class CheckpointLoadError(RuntimeError):
    """A checkpoint cannot be read or does not fit the model; the message names the file."""


class DamagedCheckpointError(CheckpointLoadError):
    """A checkpoint file is damaged, truncated, unreadable or unsafe: nothing of it was loaded."""


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
                 allow_pickle: bool = False, **checkpointables: Any):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.allow_pickle = allow_pickle
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
        """Resumes from ``last_checkpoint`` (strictly: the file must match the model and hold the
        trainer state) if ``resume`` and there is one; otherwise initialises the model from ``path``."""
        if resume and self.has_checkpoint():
            last = self.get_checkpoint_file()
            if not last or not self.path_manager.isfile(last):
                raise CheckpointLoadError(
                    f"{os.path.join(self.save_dir, 'last_checkpoint')} names {last!r}, which is not a file"
                    f"{self._other_checkpoints_hint(last)}"
                )
            self._resuming = True
            try:
                return self._resume_from(last)
            finally:
                self._resuming = False
        return self.load(path, checkpointables=[])

    def _resume_from(self, last: str) -> dict[str, Any]:
        try:
            return self.load(last)
        except DamagedCheckpointError as damaged:
            error = damaged
        # Each candidate is checked the same way before anything is loaded.
        for candidate in self._training_checkpoints(exclude=last):
            self.logger.warning(
                f"{error}\nResuming from the previous complete checkpoint {candidate} instead; the "
                f"iterations after it are trained again."
            )
            try:
                return self.load(candidate)
            except DamagedCheckpointError as e:
                error = e
        raise error

    def _training_checkpoints(self, exclude: str) -> list[str]:
        """The run's training-state checkpoints in ``save_dir`` but ``exclude``, latest iteration first:
        the periodic ``<prefix>_<iteration>.pth`` (iteration from the name) and ``<prefix>_final.pth``
        (the iteration it stores). Other files (``model_best.pth`` of the linear benchmark, converted
        or copied weights) are not the run's latest state and are never resumed from. The order does
        not rely on modification times, which a copy of the folder may change."""
        ranked = []
        for path in self.get_all_checkpoint_files():
            match = _TRAINING_CHECKPOINT.match(os.path.basename(path))
            if not match or os.path.abspath(path) == os.path.abspath(exclude):
                continue
            if match.group(1) == "final":
                ranked.append((self._stored_iteration(path), 0, path))
            else:
                ranked.append((int(match.group(1)), 1, path))  # a periodic file first at the same iteration
        return [path for *_, path in sorted(ranked, reverse=True)]

    def _stored_iteration(self, path: str) -> int:
        """The ``iteration`` saved in ``path``; -1 if it cannot be read (tried last)."""
        try:
            return int(load_torch_file(path).get("iteration", -1))
        except Exception:  # noqa: BLE001  (a damaged file is refused when it is loaded)
            return -1

    def load(self, path: str, checkpointables: list[str] | None = None) -> dict[str, Any]:
        if path and "://" not in path and not os.path.isfile(path):
            raise CheckpointLoadError(f"checkpoint {path!r} does not exist")
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
            else:
                loaded = super()._load_file(filename)
        except (CorruptFileError, UnsafeFileError) as e:
            raise DamagedCheckpointError(f"{e}{self._other_checkpoints_hint(filename)}") from e
        except Exception as e:
            raise DamagedCheckpointError(
                f"cannot read checkpoint {filename!r}: {type(e).__name__}: {str(e)[:500]}\nThe file is "
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
        if not checkpoint.get("matching_heuristics", False):
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
            raise CheckpointLoadError(
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
