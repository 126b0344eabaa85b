"""Frozen-trunk feature extraction: one implementation for kNN, the fast linear path and ClusterFit.

``extract_features`` runs a trunk (an ``SSLMetaArch``'s ``.trunk`` or a bare detectron2 ``ResNet``)
in eval mode over a data set, through a mapper's deterministic view, and writes for every image, in
data set order::

    {output_dir}/{split}_{layer}.npy     float32 (N, D), written through a memory map
    {output_dir}/{split}_labels.npy      int64 (N,), when every image has a label
    {output_dir}/{split}_indices.npy     int64 (N,), the data set index of each row (0..N-1)
    {output_dir}/{split}_meta.json       the reuse key (below), dims, and the checkpoint's path (for
                                         information); written last, so it marks a finished extraction

Reuse is by content, never by path: a finished extraction is reused only when its meta file holds
the same key, made of everything that determines the features: ``weights_digest`` (sha256 of the
trunk's state dict as loaded, BatchNorm buffers included: a checkpoint overwritten at the same path,
or a random trunk of another seed, is other weights), ``dataset_digest`` (sha256 of every field of
every dict, in order: file names, in-memory pixels, labels, ids), ``view`` (the mapper's class and
parameters), ``layers``, ``pooling`` and ``EXTRACTION_VERSION`` (this code). Otherwise the features
are recomputed, and one log line names the fields that differ (old -> new).

The feature files are preallocated with real blocks on disk (``preallocate_npy``) before any page of
their memory maps is written: a full disk then fails with ``No space left on device: <file>``
instead of killing the process with SIGBUS when the kernel writes the pages back.

Rows are placed by data set index, so the result does not depend on the loader's order, its
number of workers or the number of processes: with several processes detectron2's
``InferenceSampler`` gives each rank a contiguous shard, every rank writes its rows into the same
memory-mapped files (created by rank 0), and the files are complete once all ranks are done.

Layers are the trunk's ``res2``..``res5``, ``stem`` (after the stem's max pool) and ``conv1``
(VISSL's ``conv1``: the first convolution + BN + ReLU, before the max pool). ``pooling="avg"`` is a
global average; a mapping ``{layer: [kernel, stride, padding]}`` is VISSL's ``AvgPool2d`` spec of its
linear benchmark (``eval_resnet_8gpu_transfer_in1k_linear.yaml``: conv1 ``[[10, 10], 10, 4]``, res2
``[[16, 16], 8, 0]``, res3 ``[[13, 13], 5, 0]``, res4 ``[[8, 8], 3, 0]``, res5 ``[[6, 6], 1, 0]``), then
flattened; layers missing from the mapping are averaged globally.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch
import tqdm
from detectron2.config import instantiate
from detectron2.data import DatasetFromList, MapDataset
from detectron2.data.build import trivial_batch_collator
from detectron2.data.samplers import InferenceSampler
from detectron2.modeling.backbone import ResNet
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from omegaconf import DictConfig
from torch import nn

from d2ssl.checkpoint.load import check_one_trunk_source, load_weights_init
from d2ssl.utils.safe_io import atomic_write

logger = logging.getLogger(__name__)

LAYERS = ("conv1", "stem", "res2", "res3", "res4", "res5")
# Part of the reuse key: raise it whenever a change of this module changes the features written.
EXTRACTION_VERSION = 2
# The meta fields that decide reuse, with how the log names them.
KEY_FIELDS = {
    "extraction_version": "extraction version",
    "weights_digest": "weights digest",
    "dataset_digest": "data set digest",
    "num_images": "number of images",
    "has_labels": "labels",
    "view": "view",
    "layers": "layers",
    "pooling": "pooling",
}
Pooling = Union[str, Mapping[str, Sequence[Any]]]


@dataclass
class FeatureSet:
    """Features of one split: ``features[layer]`` is ``(N, D)`` float32 (possibly memory-mapped),
    ``labels`` ``(N,)`` int64 or None, ``indices`` ``(N,)`` the data set index of each row."""

    features: dict[str, np.ndarray]
    labels: np.ndarray | None
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    def subset(self, rows: np.ndarray) -> FeatureSet:
        """The rows ``rows`` (an index or boolean array), loaded into memory."""
        return FeatureSet(
            {k: np.asarray(v[rows]) for k, v in self.features.items()},
            None if self.labels is None else self.labels[rows],
            self.indices[rows],
        )


def get_trunk(model: nn.Module) -> ResNet:
    """The ResNet trunk of a d2ssl model (``model.trunk``, DDP unwrapped) or ``model`` itself."""
    model = getattr(model, "module", model)
    trunk = getattr(model, "trunk", model)
    if not isinstance(trunk, ResNet):
        raise TypeError(
            f"feature extraction needs a detectron2 ResNet trunk or a model with one as .trunk, got "
            f"{type(model).__name__}"
        )
    return trunk


def trunk_layer_outputs(
    trunk: ResNet, images: torch.Tensor, layers: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Runs ``trunk`` on ``(N, 3, H, W)`` images up to the deepest of ``layers`` and returns their
    ``(N, C, h, w)`` maps, whatever the trunk's ``out_features``."""
    unknown = [layer for layer in layers if layer not in LAYERS]
    if unknown:
        raise ValueError(f"unknown layers {unknown}; choose among {list(LAYERS)}")
    outputs: dict[str, torch.Tensor] = {}
    stem = trunk.stem
    x = stem.conv1(images)
    x = torch.relu(x)
    outputs["conv1"] = x
    x = nn.functional.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    outputs["stem"] = x
    for name, stage in zip(trunk.stage_names, trunk.stages):
        if all(layer in outputs for layer in layers):
            break
        x = stage(x)
        outputs[name] = x
    return {layer: outputs[layer] for layer in layers}


def pool_features(feature_map: torch.Tensor, layer: str, pooling: Pooling = "avg") -> torch.Tensor:
    """``(N, C, h, w) -> (N, D)``: global average, or VISSL's ``AvgPool2d`` spec for ``layer``."""
    if isinstance(pooling, str):
        if pooling != "avg":
            raise ValueError(f"pooling must be 'avg' or a {{layer: [kernel, stride, padding]}} mapping, "
                             f"got {pooling!r}")
        spec = None
    else:
        spec = pooling.get(layer)
    if spec is None:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(feature_map, 1), 1)
    kernel, stride, padding = spec
    pooled = nn.functional.avg_pool2d(feature_map, tuple(kernel) if not isinstance(kernel, int) else kernel,
                                      stride=stride, padding=padding)
    return torch.flatten(pooled, 1)


class _IndexedMapper:
    """Mapper output plus the data set index of the dict, so rows land in data set order."""

    def __init__(self, mapper: Callable[[dict], dict]):
        self.mapper = mapper

    def __call__(self, item: tuple[int, dict]) -> dict:
        index, dataset_dict = item
        out = self.mapper(dataset_dict)
        out["dataset_index"] = index
        return out


def build_feature_loader(
    dataset: Sequence[dict],
    mapper: Callable[[dict], dict],
    batch_size: int = 256,
    num_workers: int = 0,
    sampler: torch.utils.data.Sampler | None = None,
) -> torch.utils.data.DataLoader:
    """Batches (lists) of mapped dicts with a ``dataset_index`` key; ``sampler`` defaults to
    detectron2's ``InferenceSampler`` (this rank's contiguous shard)."""
    items = DatasetFromList(list(enumerate(dataset)), copy=False, serialize=True)
    mapped = MapDataset(items, _IndexedMapper(mapper))
    return torch.utils.data.DataLoader(
        mapped,
        batch_size=batch_size,
        sampler=sampler if sampler is not None else InferenceSampler(len(dataset)),
        num_workers=num_workers,
        collate_fn=trivial_batch_collator,
        # The loader's own generator: creating its iterator must not draw from the global RNG (a
        # kNN monitor inside a training run would otherwise shift the run's random stream).
        generator=torch.Generator().manual_seed(0),
    )


@torch.no_grad()
def compute_features(
    model: nn.Module,
    loader: Any,
    outputs: Mapping[str, np.ndarray] | None,
    layers: Sequence[str] = ("res5",),
    pooling: Pooling = "avg",
    num_images: int | None = None,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Fills ``outputs[layer][dataset_index]`` with pooled features for every batch of ``loader``
    (from ``build_feature_loader``). With ``outputs=None`` allocates ``(num_images, D)`` arrays.

    The model is put in eval mode and restored to its previous mode afterwards. Returns ``outputs``.
    """
    trunk = get_trunk(model)
    was_training = trunk.training
    trunk.eval()
    device = next(trunk.parameters()).device
    arrays = dict(outputs) if outputs is not None else None
    try:
        for batch in tqdm.tqdm(loader, desc="features", disable=not progress, mininterval=5):
            images = torch.stack([x["image"] for x in batch]).to(device)
            rows = np.array([x["dataset_index"] for x in batch])
            maps = trunk_layer_outputs(trunk, images, layers)
            for layer in layers:
                pooled = pool_features(maps[layer], layer, pooling).float().cpu().numpy()
                if arrays is None or layer not in arrays:
                    if num_images is None:
                        raise ValueError("compute_features needs num_images when outputs is None")
                    arrays = arrays or {}
                    arrays[layer] = np.zeros((num_images, pooled.shape[1]), np.float32)
                arrays[layer][rows] = pooled
    finally:
        trunk.train(was_training)
    return arrays or {}


def _feature_dims(trunk: ResNet, sample: dict, layers: Sequence[str], pooling: Pooling) -> dict[str, int]:
    was_training = trunk.training
    trunk.eval()
    try:
        with torch.no_grad():
            image = sample["image"][None].to(next(trunk.parameters()).device)
            maps = trunk_layer_outputs(trunk, image, layers)
            return {layer: int(pool_features(maps[layer], layer, pooling).shape[1]) for layer in layers}
    finally:
        trunk.train(was_training)


def _paths(output_dir: str, split: str) -> dict[str, str]:
    prefix = os.path.join(output_dir, split)
    return {
        "meta": f"{prefix}_meta.json", "labels": f"{prefix}_labels.npy", "indices": f"{prefix}_indices.npy"
    }


def _layer_path(output_dir: str, split: str, layer: str) -> str:
    return os.path.join(output_dir, f"{split}_{layer}.npy")


# ---------------------------------------------------------------- what decides reuse

def _record(digest: Any, tag: bytes, payload: bytes) -> None:
    # Tagged and length-prefixed, so that no two different values feed the same bytes.
    digest.update(tag + len(payload).to_bytes(8, "little") + payload)


def _feed_array(digest: Any, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array)
    _record(digest, b"A", f"{array.dtype.str}{array.shape}".encode())
    _record(digest, b"a", array.tobytes())


_PLAIN_TYPES = (str, int, float, bool, type(None))  # exact types, whose repr is their value


def _feed_value(digest: Any, value: Any) -> None:
    if value is None or isinstance(value, (bool, np.bool_)):
        _record(digest, b"B", repr(None if value is None else bool(value)).encode())
    elif isinstance(value, (int, np.integer)):
        _record(digest, b"I", str(int(value)).encode())
    elif isinstance(value, (float, np.floating)):
        _record(digest, b"F", repr(float(value)).encode())
    elif isinstance(value, str):
        _record(digest, b"S", value.encode("utf-8", "surrogatepass"))
    elif isinstance(value, (bytes, bytearray)):
        _record(digest, b"Y", bytes(value))
    elif isinstance(value, torch.Tensor):
        _feed_tensor(digest, value)
    elif isinstance(value, np.ndarray) or hasattr(value, "__array_interface__"):  # PIL images too
        _feed_array(digest, np.asarray(value))
    elif isinstance(value, Mapping):
        # Plain fields (file names, labels, ids) in one repr: a data set of a million dicts takes
        # seconds, not the minute that one record per field takes.
        plain, other = [], []
        for key in sorted(value, key=str):
            item = value[key]
            (plain if type(item) in _PLAIN_TYPES else other).append((str(key), item))
        _record(digest, b"D", repr(plain).encode("utf-8", "surrogatepass"))
        for key, item in other:
            _feed_value(digest, key)
            _feed_value(digest, item)
    elif isinstance(value, (list, tuple)):
        _record(digest, b"L", str(len(value)).encode())
        for item in value:
            _feed_value(digest, item)
    else:  # e.g. a pathlib.Path; a repr holding an address differs each run: recomputed, never wrong
        _record(digest, b"R", f"{type(value).__qualname__}:{value!r}".encode())


def _feed_tensor(digest: Any, tensor: torch.Tensor) -> None:
    tensor = tensor.detach().cpu().contiguous()
    _record(digest, b"T", f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    # Bytes through uint8, which every dtype can be viewed as (bfloat16 has no numpy counterpart).
    _record(digest, b"t", tensor.reshape(-1).view(torch.uint8).numpy().tobytes())


def array_digest(array: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and bytes (e.g. the features a clustering was run on)."""
    digest = hashlib.sha256()
    _feed_array(digest, np.asarray(array))
    return digest.hexdigest()


def weights_digest(module: nn.Module) -> str:
    """sha256 of ``module.state_dict()`` (parameters and buffers, BatchNorm statistics included):
    names, dtypes, shapes and bytes, in sorted key order. Computed on the weights actually in the
    module, so it names them whatever file (or random seed) they came from."""
    digest = hashlib.sha256()
    state = module.state_dict()
    for name in sorted(state):
        _feed_value(digest, name)
        _feed_tensor(digest, state[name])
    return digest.hexdigest()


def dataset_digest(dicts: Iterable[Mapping[str, Any]]) -> str:
    """sha256 of a data set's dicts in order, every field of each (file names, in-memory pixels,
    labels, ids, annotations): two data sets of the same length differ unless their dicts do not.
    Image files are named, not read: rewriting a file in place is not seen."""
    digest = hashlib.sha256()
    count, texts = 0, []

    def flush() -> None:
        # A run of dicts of plain fields, as one record: the concatenated reprs parse back unambiguously.
        if texts:
            _record(digest, b"P", "".join(texts).encode("utf-8", "surrogatepass"))
            texts.clear()

    for d in dicts:
        count += 1
        if type(d) is dict and all(type(k) is str and type(v) in _PLAIN_TYPES for k, v in d.items()):
            texts.append(repr(sorted(d.items())))  # file_name, label, image_id: the common case, fast
            if len(texts) == 4096:
                flush()
        else:
            flush()
            _feed_value(digest, d)
    flush()
    _record(digest, b"N", str(count).encode())
    return digest.hexdigest()


def _unidentified(name: str) -> str:
    # Something whose content cannot be named: a fresh token each time, so it never matches (the
    # features are recomputed, and the log shows which part of the view could not be named).
    return f"{name}<unidentified {os.urandom(4).hex()}>"


def _code_digest(code: Any) -> str:
    # Bytecode, names and constants; nested functions' code by their own digest (a code object's
    # repr holds its address).
    consts = [_code_digest(c) if hasattr(c, "co_code") else repr(c) for c in code.co_consts]
    return hashlib.sha256(code.co_code + repr((consts, code.co_names)).encode()).hexdigest()


def _describe(value: Any, depth: int = 0) -> str:
    if depth > 8:
        return _unidentified(type(value).__qualname__)
    if value is None or isinstance(value, (bool, int, float, str, np.generic)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_describe(v, depth + 1) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_describe(value[k], depth + 1)}" for k in sorted(value, key=str)) + "}"
    if isinstance(value, (np.ndarray, torch.Tensor)):
        digest = hashlib.sha256()
        _feed_value(digest, value)
        return f"array{tuple(value.shape)}:{digest.hexdigest()[:16]}"
    if isinstance(value, functools.partial):
        return (f"partial({_describe(value.func, depth + 1)}, {_describe(list(value.args), depth + 1)}, "
                f"{_describe(dict(value.keywords), depth + 1)})")
    code = getattr(value, "__code__", None)
    if code is not None:  # a function or method: its compiled body, constants, defaults and closure
        body = _code_digest(code)[:12]
        bound = [_describe(c.cell_contents, depth + 1) for c in (getattr(value, "__closure__", None) or ())]
        bound += [_describe(getattr(value, attr, None), depth + 1)
                  for attr in ("__defaults__", "__kwdefaults__", "__self__")]
        return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', '')}#{body}{bound}"
    name = type(value).__qualname__
    if type(value).__repr__ is not object.__repr__:
        text = repr(value)
        if " at 0x" not in text:  # torchvision's transforms: their repr lists their parameters
            return " ".join(text.split())
    if not hasattr(value, "__dict__"):
        return _unidentified(name)
    fields = ", ".join(f"{k}={_describe(v, depth + 1)}" for k, v in sorted(vars(value).items()))
    return f"{name}({fields})"


def view_description(mapper: Any) -> str:
    """One line naming the view a mapper gives: its class and every attribute, recursively (sizes,
    crops, normalisation, the transforms' parameters), so that reuse never hands back features of
    another view. Functions are named with a digest of their code."""
    return _describe(mapper)


def _reserve_space(f: Any, offset: int, nbytes: int) -> None:
    """Allocates ``nbytes`` of real blocks after ``offset`` of the open file ``f``: a full disk raises
    ``OSError(ENOSPC)`` here rather than later, when a memory-mapped page is written back (SIGBUS)."""
    if nbytes == 0:
        return
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is not None:
        try:
            fallocate(f.fileno(), offset, nbytes)
            return
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
    # No fallocate on this file system: write the zeros (fsync: NFS reports a full disk only there).
    f.seek(offset)
    chunk = memoryview(bytes(min(nbytes, 1 << 24)))
    remaining = nbytes
    while remaining:
        remaining -= f.write(chunk[: min(remaining, len(chunk))])
    f.flush()
    os.fsync(f.fileno())


def preallocate_npy(path: str, shape: Sequence[int], dtype: Any = np.float32) -> None:
    """Writes a ``.npy`` file of zeros of ``shape`` and ``dtype`` with all its blocks allocated, to be
    filled through ``np.lib.format.open_memmap(path, "r+")``.

    Raises:
        OSError: ``No space left on device: <path>`` (ENOSPC, or EDQUOT for a quota) when the file
            does not fit; the partial file is removed.
    """
    dtype = np.dtype(dtype)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
              "shape": tuple(int(n) for n in shape)}
    nbytes = int(np.prod(header["shape"], dtype=np.int64)) * dtype.itemsize
    try:
        with open(path, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            f.flush()
            _reserve_space(f, f.tell(), nbytes)
    except OSError as e:
        try:
            os.remove(path)  # free what was allocated
        except OSError:
            pass
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(e.errno, os.strerror(e.errno), path) from e
        raise


def _changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """``weights digest 3fa1c0d2e4b5.. -> 9bc2...; view ...``: the key fields that differ."""
    def show(field: str, value: Any) -> str:
        if field.endswith("_digest") and isinstance(value, str):
            return value[:12] + ".."
        return json.dumps(value) if not isinstance(value, str) else value

    return "; ".join(
        f"{label} {show(field, old.get(field))} -> {show(field, new.get(field))}"
        for field, label in KEY_FIELDS.items() if old.get(field) != new.get(field)
    )


def _read_meta(meta_path: str) -> dict | None:
    if not PathManager.exists(meta_path):
        return None
    try:
        with PathManager.open(meta_path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None  # unreadable: treated as no finished extraction


def _reusable(output_dir: str, split: str, key: dict) -> tuple[bool, str]:
    """Whether the finished extraction in ``output_dir`` has ``key``, and why not."""
    meta = _read_meta(_paths(output_dir, split)["meta"])
    if meta is None:
        return False, "no finished extraction there"
    changes = _changes(meta, key)
    if changes:
        return False, changes
    try:
        load_features(output_dir, split, key["layers"])
    except (OSError, ValueError, KeyError) as e:
        return False, f"its files do not match its meta file ({e})"
    return True, ""


def extract_features(
    model: nn.Module,
    dataset: Sequence[dict],
    mapper: Callable[[dict], dict],
    output_dir: str,
    split: str = "train",
    layers: Sequence[str] = ("res5",),
    pooling: Pooling = "avg",
    batch_size: int = 256,
    num_workers: int = 0,
    reuse: bool = True,
    checkpoint: str = "",
    sampler: torch.utils.data.Sampler | None = None,
) -> FeatureSet:
    """Extracts pooled ``layers`` of every image of ``dataset`` (viewed through ``mapper(dict)``)
    into ``output_dir`` (see the module docstring) and returns them as a memory-mapped ``FeatureSet``.

    Args:
        model: an ``SSLMetaArch`` (its ``.trunk`` is used) or a bare detectron2 ``ResNet``.
        checkpoint: where the weights came from, stored in the meta file for information only:
            reuse is decided by the digest of the weights in the trunk.
        reuse: if the meta file of a finished extraction has the same key (weights digest, data set
            digest, view, layers, pooling, extraction version), load it instead of recomputing.
        sampler: the loader's sampler (default: ``InferenceSampler``, this rank's shard); rows are
            placed by data set index whatever order it yields.
    """
    layers = list(layers)
    if not dataset:
        raise ValueError(f"cannot extract features of an empty data set (split {split!r})")
    paths = _paths(output_dir, split)
    trunk = get_trunk(model)
    key = {
        "extraction_version": EXTRACTION_VERSION,
        "weights_digest": weights_digest(trunk),
        "dataset_digest": dataset_digest(dataset),
        "num_images": len(dataset),
        "has_labels": all("label" in d for d in dataset),
        "view": view_description(mapper),
        "layers": layers,
        "pooling": pooling if isinstance(pooling, str) else {k: list(v) for k, v in dict(pooling).items()},
    }
    key = json.loads(json.dumps(key, default=list))
    # Every rank must take the same decision (they meet in comm.synchronize below), on the same weights.
    reusable, why = _reusable(output_dir, split, key) if reuse else (False, "reuse=False")
    decisions = comm.all_gather((key["weights_digest"], reusable))
    digests = [d for d, _ in decisions]
    if len(set(digests)) > 1:
        raise ValueError(
            f"the trunk holds other weights on each process (weights digests {[d[:12] for d in digests]}): "
            f"features of split {split!r} would mix them; load the same weights on every rank"
        )
    if all(r for _, r in decisions):
        logger.info("reusing the %s features in %s (same weights %s.., data set %s.., view, layers, "
                    "pooling)", split, output_dir, key["weights_digest"][:12], key["dataset_digest"][:12])
        return load_features(output_dir, split, layers)
    if comm.is_main_process():
        logger.info("%s features in %s: %s; computing", split, output_dir, why)

    dims = _feature_dims(trunk, mapper(dict(dataset[0])), layers, pooling)
    n = len(dataset)
    if comm.is_main_process():
        PathManager.mkdirs(output_dir)
        if PathManager.exists(paths["meta"]):
            PathManager.rm(paths["meta"])  # the files are about to change: not reusable until done
        for layer in layers:
            path = _layer_path(output_dir, split, layer)
            if os.path.exists(path):
                # Unlinked, not truncated: memory maps of the old features stay valid (and their
                # blocks are freed once unmapped).
                os.remove(path)
            preallocate_npy(path, (n, dims[layer]), np.float32)
    comm.synchronize()
    outputs = {
        layer: np.lib.format.open_memmap(_layer_path(output_dir, split, layer), "r+") for layer in layers
    }
    loader = build_feature_loader(dataset, mapper, batch_size, num_workers, sampler)
    start = time.perf_counter()
    compute_features(model, loader, outputs, layers, pooling, progress=comm.is_main_process())
    for array in outputs.values():
        array.flush()
    del outputs
    logger.info("extracted %s features of %d images (%s) in %.1f s", split, n,
                ", ".join(f"{k}: {v}-d" for k, v in dims.items()), time.perf_counter() - start)
    comm.synchronize()
    if comm.is_main_process():
        atomic_write(paths["indices"], lambda f: np.save(f, np.arange(n, dtype=np.int64)))
        if key["has_labels"]:
            labels = np.array([int(d["label"]) for d in dataset], dtype=np.int64)
            atomic_write(paths["labels"], lambda f: np.save(f, labels))
        elif PathManager.exists(paths["labels"]):
            PathManager.rm(paths["labels"])
        meta = {**key, "dims": dims, "checkpoint": checkpoint}
        atomic_write(paths["meta"], lambda f: json.dump(meta, f, indent=2), mode="w")
    comm.synchronize()
    return load_features(output_dir, split, layers)


def load_features(output_dir: str, split: str, layers: Sequence[str] = ("res5",)) -> FeatureSet:
    """Reads what ``extract_features`` wrote (features memory-mapped, read-only)."""
    paths = _paths(output_dir, split)
    if not PathManager.exists(paths["meta"]):
        raise FileNotFoundError(
            f"no finished {split!r} feature extraction in {output_dir!r} ({paths['meta']} is missing): "
            f"run tools/extract_features.py first"
        )
    with PathManager.open(paths["meta"]) as f:
        meta = json.load(f)
    missing = [layer for layer in layers if layer not in meta["layers"]]
    if missing:
        raise KeyError(f"{paths['meta']}: layers {missing} were not extracted (have {meta['layers']})")
    features = {layer: np.load(_layer_path(output_dir, split, layer), mmap_mode="r") for layer in layers}
    for layer, array in features.items():
        if array.shape != (meta["num_images"], meta["dims"][layer]):
            raise ValueError(f"{_layer_path(output_dir, split, layer)} has shape {array.shape}, its meta "
                             f"file says ({meta['num_images']}, {meta['dims'][layer]})")
    labels = np.load(paths["labels"]) if meta["has_labels"] else None
    return FeatureSet(features, labels, np.load(paths["indices"]))


def meta_path(output_dir: str, split: str) -> str:
    """The meta file of ``split``'s extraction in ``output_dir``: its reuse key, dims and checkpoint."""
    return _paths(output_dir, split)["meta"]


def extracted_dataset_digest(output_dir: str, split: str) -> str | None:
    """The ``dataset_digest`` of the images a finished extraction of ``split`` holds features of (its
    meta file), or None where the meta file predates the digest."""
    with PathManager.open(meta_path(output_dir, split)) as f:
        return json.load(f).get("dataset_digest")


# ---------------------------------------------------------------- config-driven entry (the tool)

EXTRACTION_KEYS = ("layers", "pooling", "batch_size", "num_workers", "output_dir", "splits", "reuse")


def build_model_for_extraction(cfg: DictConfig) -> nn.Module:
    """``cfg.model`` (a model or a bare trunk) with ``train.weights_init`` (any layout the importer
    reads, heads skipped) or ``train.init_checkpoint`` (a d2ssl run's ``model_final.pth``) loaded
    into its trunk by the same importer, which reads files without unpickling code. Both set is an
    error (``d2ssl.checkpoint.load.check_one_trunk_source``), raised before anything is built.

    The model is initialised from ``train.seed`` in every process (detectron2 seeds rank r with
    seed + r), so a randomly initialised trunk, the baseline of every evaluation, is the same
    trunk on every rank and in every run."""
    check_one_trunk_source(cfg.train)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.get("seed", 0))
        model = instantiate(cfg.model)
    weights_init = dict(cfg.train.get("weights_init") or {})
    if not weights_init.get("PARAMS_FILE") and cfg.train.get("init_checkpoint"):
        weights_init["PARAMS_FILE"] = cfg.train.init_checkpoint
    load_weights_init(model, weights_init)
    return model.to(cfg.train.get("device", "cpu"))


def extract_from_config(cfg: DictConfig) -> dict[str, FeatureSet]:
    """Extracts every split of ``cfg.extraction.splits`` (``dataloader.<split>`` gives its
    ``dataset`` and ``mapper``) into ``cfg.extraction.output_dir``; returns ``{split: FeatureSet}``."""
    ex = cfg.extraction
    unknown = sorted(set(ex.keys()) - set(EXTRACTION_KEYS))
    if unknown:
        raise KeyError(f"unknown key extraction.{unknown[0]}; allowed: {list(EXTRACTION_KEYS)}")
    model = build_model_for_extraction(cfg)
    weights_init = cfg.train.get("weights_init") or {}
    # Information only: reuse is decided by the digest of the weights loaded.
    checkpoint = weights_init.get("PARAMS_FILE") or cfg.train.get("init_checkpoint") or ""
    pooling = ex.pooling if isinstance(ex.pooling, str) else {k: list(v) for k, v in ex.pooling.items()}
    results = {}
    for split in ex.splits:
        if split not in cfg.dataloader:
            raise KeyError(f"extraction.splits names {split!r} but there is no dataloader.{split}")
        node = cfg.dataloader[split]
        results[split] = extract_features(
            model, instantiate(node.dataset), instantiate(node.mapper), ex.output_dir, split=split,
            layers=list(ex.layers), pooling=pooling, batch_size=ex.batch_size, num_workers=ex.num_workers,
            reuse=ex.reuse, checkpoint=str(checkpoint),
        )
    return results
