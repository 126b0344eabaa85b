"""Initialising a model's trunk from weights of another code base (VISSL's ``MODEL.WEIGHTS_INIT``).

``load_pretrained_weights`` reads a file (any iopath URI), finds the state dict in it, finds the
ResNet in that (torchvision, VISSL, Jigsaw Clustering, MoCo, d2ssl or detectron2 layout, see
``d2ssl.checkpoint.layouts``), renames it to detectron2 names and copies it into the model's trunk,
then logs a table of what was loaded, missing, unexpected or of another shape. Configs reach it
through ``train.weights_init`` (``load_weights_init``), with VISSL's field names.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from detectron2.utils.file_io import PathManager
from tabulate import tabulate
from torch import nn

from d2ssl.checkpoint.layouts import TrunkWeights, UnknownLayoutError, as_tensor, find_trunk
from d2ssl.checkpoint.zoo import ZooError, is_zoo_name, local_zoo_file
from d2ssl.utils.errors import summarize
from d2ssl.utils.safe_io import CorruptFileError, UnsafeFileError, load_weights_file, not_a_file_message

logger = logging.getLogger("d2ssl")

# Wrappers around the state dict, in the order they are looked for: VISSL, VISSL's converted files,
# JigClu / MoCo / most PyTorch training scripts, detectron2 / d2ssl.
STATE_DICT_WRAPPERS = ("classy_state_dict", "model_state_dict", "state_dict", "model")
WEIGHTS_INIT_FIELDS = (
    "PARAMS_FILE", "STATE_DICT_KEY_NAME", "SKIP_LAYERS", "REMOVE_PREFIX", "APPEND_PREFIX", "ALLOW_PICKLE",
)


class WeightsLoadError(ValueError):
    """Weights cannot be loaded; the message names the file and the first keys that did not match."""


def read_checkpoint(path: str, allow_pickle: bool = False) -> Any:
    """Reads a checkpoint from any iopath URI: detectron2 ``.pkl`` pickles or ``torch.save`` files.

    The file's integrity is checked first (``d2ssl.utils.safe_io.verify_integrity``). Only tensors,
    numpy arrays and plain containers are unpickled; files that also hold other Python objects (some
    VISSL and MoCo checkpoints) are refused naming what they hold, unless ``allow_pickle``, which
    runs whatever code the file's pickle holds: only for files you trust. ``zoo:<name>`` is a
    published checkpoint, downloaded and checked by ``d2ssl.checkpoint.zoo``.
    """
    if is_zoo_name(path):  # the one place every weights path is opened: zoo names work everywhere
        try:
            path = local_zoo_file(path)
        except ZooError as e:
            raise WeightsLoadError(str(e)) from e
    try:
        local = PathManager.get_local_path(path)
    except Exception as e:  # noqa: BLE001  (iopath raises many types for unreachable URIs)
        raise WeightsLoadError(f"cannot fetch weights file {path!r}: {e}") from e
    if not os.path.isfile(local):
        raise WeightsLoadError(not_a_file_message(local).replace(local, path))
    try:
        # The local copy of a remote file: iopath handlers need not implement open().
        return load_weights_file(local, allow_pickle)
    except (CorruptFileError, UnsafeFileError) as e:
        raise WeightsLoadError(str(e).replace(local, path)) from e
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise WeightsLoadError(
            f"cannot read weights file {path!r}: {type(e).__name__}: {summarize(str(e))}; the file is "
            f"truncated, corrupted or not a checkpoint"
        ) from e


def _is_tensor_like(value: Any) -> bool:
    return isinstance(value, (torch.Tensor, np.ndarray))


def _is_state_dict(node: Any) -> bool:
    return isinstance(node, Mapping) and len(node) > 0 and all(_is_tensor_like(v) for v in node.values())


def unwrap_state_dict(
    checkpoint: Any, state_dict_key_name: str | Sequence[str] | None = None, params_file: str = "<checkpoint>"
) -> tuple[dict[str, Any], str]:
    """Returns ``(state_dict, where)``: the state dict inside a checkpoint and the keys that led to it.

    ``state_dict_key_name`` (VISSL's ``STATE_DICT_KEY_NAME``) is a key, or a list of nested keys; as
    in VISSL, ``classy_state_dict`` also descends to ``base_model.model.trunk``. Empty, it finds the
    state dict itself: a flat dict of tensors is used as is, else the first of
    ``STATE_DICT_WRAPPERS`` present is descended into.
    """
    node, path = checkpoint, []
    names = [state_dict_key_name] if isinstance(state_dict_key_name, str) else list(state_dict_key_name or [])
    for name in [n for n in names if n]:
        if not isinstance(node, Mapping) or name not in node:
            have = sorted(node.keys()) if isinstance(node, Mapping) else type(node).__name__
            at = ".".join(path) or "<top>"
            raise WeightsLoadError(f"{params_file}: no key {name!r} at '{at}'; keys there: {have}")
        node, path = node[name], [*path, name]
    while isinstance(node, Mapping) and not _is_state_dict(node):
        if "base_model" in node:  # inside VISSL's classy_state_dict
            node, path = node["base_model"]["model"]["trunk"], [*path, "base_model", "model", "trunk"]
            continue
        wrapper = next((w for w in STATE_DICT_WRAPPERS if isinstance(node.get(w), Mapping)), None)
        if wrapper is None:
            break
        node, path = node[wrapper], [*path, wrapper]
    if not isinstance(node, Mapping):
        kind = type(node).__name__
        raise WeightsLoadError(f"{params_file}: '{'.'.join(path)}' holds a {kind}, not a state dict")
    state_dict = {k: v for k, v in node.items() if _is_tensor_like(v)}
    if not state_dict:
        raise WeightsLoadError(
            f"{params_file}: no tensors at '{'.'.join(path) or '<top>'}' (keys: {sorted(node)[:10]}); set "
            f"STATE_DICT_KEY_NAME to the key holding the state dict"
        )
    return state_dict, ".".join(path)


def find_trunk_in_file(
    params_file: str, state_dict_key_name: str | Sequence[str] | None = None,
    remove_prefix: str | None = None,
    allow_pickle: bool = False,
) -> tuple[TrunkWeights, str]:
    """Reads ``params_file`` and returns the ResNet found in it, with where its state dict was."""
    state_dict, where = read_state_dict(params_file, state_dict_key_name, remove_prefix, allow_pickle)
    try:
        return find_trunk(state_dict), where
    except UnknownLayoutError as e:
        raise WeightsLoadError(f"{params_file} ('{where or '<top>'}'): {e}") from e


def read_state_dict(
    params_file: str, state_dict_key_name: str | Sequence[str] | None = None,
    remove_prefix: str | None = None,
    allow_pickle: bool = False,
) -> tuple[dict[str, Any], str]:
    """``unwrap_state_dict`` of the file's content, with ``remove_prefix`` stripped from its keys."""
    checkpoint = read_checkpoint(params_file, allow_pickle)
    state_dict, where = unwrap_state_dict(checkpoint, state_dict_key_name, params_file)
    if remove_prefix:
        n = len(remove_prefix)
        state_dict = {k[n:] if k.startswith(remove_prefix) else k: v for k, v in state_dict.items()}
    return state_dict, where


def model_trunk_prefix(model_keys: Sequence[str]) -> str:
    """Where a model keeps its ResNet: ``trunk.`` in d2ssl meta-architectures, ``""`` for a bare trunk,
    ``backbone.bottom_up.`` in a detectron2 FPN detector."""
    prefixes = [k[: -len("stem.conv1.weight")] for k in model_keys if k.endswith("stem.conv1.weight")]
    prefixes = [p for p in prefixes if p == "" or p.endswith(".")]
    for preferred in ("trunk.", ""):
        if preferred in prefixes:
            return preferred
    if len(prefixes) == 1:
        return prefixes[0]
    raise WeightsLoadError(
        f"the model has {'no' if not prefixes else 'several'} ResNet trunks ({prefixes}); say where to load "
        f"the weights with APPEND_PREFIX"
    )


@dataclass
class LoadReport:
    """What ``load_pretrained_weights`` did. Keys are the model's names (``trunk.res2.0.conv1.weight``)
    except ``unused``, which are the checkpoint's."""

    params_file: str
    layout: str
    source: str
    target_prefix: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def table(self, examples: int = 3) -> str:
        def first(keys):
            return ", ".join(keys[:examples]) + (", ..." if len(keys) > examples else "")

        mismatches = [f"{k} {tuple(c)} vs model {tuple(m)}" for k, c, m in self.shape_mismatch]
        rows = [
            ("loaded", len(self.loaded), first(self.loaded)),
            ("missing (model keys without weights)", len(self.missing), first(self.missing)),
            ("unexpected (no such key in the model)", len(self.unexpected), first(self.unexpected)),
            ("shape mismatch (not loaded)", len(self.shape_mismatch), first(mismatches)),
            ("skipped (SKIP_LAYERS)", len(self.skipped), first(self.skipped)),
            ("not used (outside the ResNet)", len(self.unused), first(self.unused)),
        ]
        header = (
            f"Weights from {self.params_file} ({self.layout} layout, ResNet at '{self.source}') "
            f"into model prefix '{self.target_prefix}':\n"
        )
        return header + tabulate(rows, headers=["", "count", f"first {examples} keys"], tablefmt="pipe")

    def __str__(self) -> str:
        return self.table()


def load_pretrained_weights(
    model: nn.Module,
    params_file: str,
    state_dict_key_name: str | Sequence[str] | None = None,
    skip_layers: Sequence[str] = ("num_batches_tracked",),
    remove_prefix: str | None = None,
    append_prefix: str | None = None,
    allow_pickle: bool = False,
) -> LoadReport:
    """Copies the ResNet of ``params_file`` into ``model``'s trunk and logs what happened.

    Args:
        model: a d2ssl meta-architecture (trunk under ``trunk.``), a bare trunk, or any module
            holding one detectron2 ResNet.
        params_file: any iopath URI; torchvision, VISSL, JigClu, MoCo, d2ssl and detectron2 layouts
            are recognised from their keys.
        state_dict_key_name: key (or nested keys) of the state dict in the file; empty: found
            automatically (see ``unwrap_state_dict``).
        skip_layers: model keys containing any of these strings are not loaded (VISSL's ``SKIP_LAYERS``).
        remove_prefix: stripped from the checkpoint's keys first (e.g. a wrapper this module does
            not know).
        append_prefix: where in the model the (detectron2-named) weights go, instead of the trunk
            found automatically; with it, a state dict holding no recognisable ResNet is loaded
            under its own names.
        allow_pickle: unpickle Python objects other than tensors and arrays too, which runs code
            stored in the file (VISSL's ``ALLOW_PICKLE`` has no counterpart; trusted files only).

    Returns:
        a ``LoadReport``, also logged as a table.

    Raises:
        WeightsLoadError: the file is missing or unreadable, or nothing was loaded; the message names
            the file and the first keys that did not match.
    """
    state_dict, where = read_state_dict(params_file, state_dict_key_name, remove_prefix, allow_pickle)
    model_state = model.state_dict()
    try:
        found = find_trunk(state_dict)
    except UnknownLayoutError as e:
        if not append_prefix:
            raise WeightsLoadError(f"{params_file} ('{where or '<top>'}'): {e}") from e
        found = None
    if found is not None:
        target = append_prefix or model_trunk_prefix(list(model_state))
        mapped = {target + k: v for k, v in found.trunk.items()}
        location = resnet_location(where, found.prefix)
        report = LoadReport(params_file, found.layout, location, target, unused=list(found.unused))
    else:
        target = append_prefix
        mapped = {target + k: as_tensor(v) for k, v in state_dict.items()}
        report = LoadReport(params_file, "unrecognised (loaded as named)", where, target)

    def skip(key: str) -> bool:
        return any(s in key for s in skip_layers)

    to_load = {}
    for key, value in mapped.items():
        if skip(key):
            report.skipped.append(key)
        elif key not in model_state:
            report.unexpected.append(key)
        elif tuple(model_state[key].shape) != tuple(value.shape):
            report.shape_mismatch.append((key, tuple(value.shape), tuple(model_state[key].shape)))
        else:
            to_load[key] = value
            report.loaded.append(key)
    report.missing = [k for k in model_state if k.startswith(target) and k not in mapped and not skip(k)]
    if not to_load:
        not_matched = report.unexpected + [k for k, _, _ in report.shape_mismatch]
        raise WeightsLoadError(
            f"{params_file}: nothing was loaded into the model ({report.layout} layout, ResNet at "
            f"'{report.source}', model prefix '{target}'). First checkpoint keys that did not match: "
            f"{not_matched[:5]}; first model keys left without weights: {report.missing[:5]}"
        )
    model.load_state_dict(to_load, strict=False)
    problems = report.missing or report.unexpected or report.shape_mismatch
    (logger.warning if problems else logger.info)("%s", report.table())
    return report


def resnet_location(where: str, prefix: str) -> str:
    """``state_dict`` + ``module.encoder.`` -> ``state_dict.module.encoder``, for messages."""
    return ".".join(p for p in (where, prefix.rstrip(".")) if p) or "<top>"


def load_weights_init(model: nn.Module, weights_init: Mapping[str, Any] | None) -> LoadReport | None:
    """Applies a config's ``train.weights_init`` block (VISSL's field names); ``None`` when
    ``PARAMS_FILE`` is empty."""
    if not weights_init or not weights_init.get("PARAMS_FILE"):
        return None
    unknown = sorted(set(weights_init) - set(WEIGHTS_INIT_FIELDS))
    if unknown:
        raise WeightsLoadError(
            f"train.weights_init has unknown fields {unknown}; known: {list(WEIGHTS_INIT_FIELDS)}"
        )
    key_name = weights_init.get("STATE_DICT_KEY_NAME") or None
    if key_name is not None and not isinstance(key_name, str):
        key_name = list(key_name)
    return load_pretrained_weights(
        model,
        weights_init["PARAMS_FILE"],
        state_dict_key_name=key_name,
        skip_layers=tuple(weights_init.get("SKIP_LAYERS") or ()),
        remove_prefix=weights_init.get("REMOVE_PREFIX") or None,
        append_prefix=weights_init.get("APPEND_PREFIX") or None,
        allow_pickle=bool(weights_init.get("ALLOW_PICKLE", False)),
    )


def check_one_trunk_source(train: Mapping[str, Any] | None) -> None:
    """Raises ``ValueError`` when a config's ``train`` section names its starting weights twice:
    ``train.weights_init.PARAMS_FILE`` and ``train.init_checkpoint`` both non-empty.

    One rule for every tool (training, linear benchmarks, feature extraction, clustering): which
    of the two won used to depend on the tool (extraction loaded PARAMS_FILE and recorded
    init_checkpoint; training loaded PARAMS_FILE, then let init_checkpoint overwrite it), so a
    number could come from other weights than the ones a run reports."""
    if not train:
        return
    weights_init = train.get("weights_init") or {}
    params_file = weights_init.get("PARAMS_FILE") or ""
    init_checkpoint = train.get("init_checkpoint") or ""
    if params_file and init_checkpoint:
        raise ValueError(
            f"train.weights_init.PARAMS_FILE={params_file!r} and train.init_checkpoint={init_checkpoint!r} "
            f"are both set, and only one can give the starting weights: keep one and clear the other on the "
            f"command line (train.init_checkpoint= or train.weights_init.PARAMS_FILE=)"
        )
