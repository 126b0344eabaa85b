"""Frozen-trunk feature extraction: one implementation for kNN, the fast linear path and ClusterFit.

``extract_features`` runs a trunk (an ``SSLMetaArch``'s ``.trunk`` or a bare detectron2 ``ResNet``)
in eval mode over a data set, through a mapper's deterministic view, and writes for every image, in
data set order::

    {output_dir}/{split}_{layer}.npy     float32 (N, D), written through a memory map
    {output_dir}/{split}_labels.npy      int64 (N,), when every image has a label
    {output_dir}/{split}_indices.npy     int64 (N,), the data set index of each row (0..N-1)
    {output_dir}/{split}_meta.json       N, dims, layers, pooling, view, checkpoint: decides reuse

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

import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
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

from d2ssl.checkpoint.load import load_weights_init

logger = logging.getLogger(__name__)

LAYERS = ("conv1", "stem", "res2", "res3", "res4", "res5")
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


def _view_description(mapper: Any) -> str:
    # Reuse must not hand back features of another view: the mapper's transform names it.
    return f"{type(mapper).__name__}: {getattr(mapper, 'transform', '')!r}"


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
        checkpoint: the weights' name, stored in the meta file: reuse needs the same one.
        reuse: if the meta file of a finished extraction with the same settings (data set length,
            layers, pooling, view, checkpoint) is there, load it instead of recomputing.
        sampler: the loader's sampler (default: ``InferenceSampler``, this rank's shard); rows are
            placed by data set index whatever order it yields.
    """
    layers = list(layers)
    if not dataset:
        raise ValueError(f"cannot extract features of an empty data set (split {split!r})")
    paths = _paths(output_dir, split)
    has_labels = all("label" in d for d in dataset)
    settings = {
        "num_images": len(dataset),
        "layers": layers,
        "pooling": pooling if isinstance(pooling, str) else {k: list(v) for k, v in dict(pooling).items()},
        "view": _view_description(mapper),
        "checkpoint": checkpoint,
        "has_labels": has_labels,
    }
    settings = json.loads(json.dumps(settings, default=list))
    if reuse and _finished_with(paths["meta"], settings):
        logger.info("reusing the %s features in %s (same data set, layers, view and weights)",
                    split, output_dir)
        return load_features(output_dir, split, layers)

    trunk = get_trunk(model)
    dims = _feature_dims(trunk, mapper(dict(dataset[0])), layers, pooling)
    n = len(dataset)
    if comm.is_main_process():
        PathManager.mkdirs(output_dir)
        if PathManager.exists(paths["meta"]):
            PathManager.rm(paths["meta"])  # the files are about to change: not reusable until done
        for layer in layers:
            path = _layer_path(output_dir, split, layer)
            np.lib.format.open_memmap(path, "w+", np.float32, (n, dims[layer]))
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
        np.save(paths["indices"], np.arange(n, dtype=np.int64))
        if has_labels:
            np.save(paths["labels"], np.array([int(d["label"]) for d in dataset], dtype=np.int64))
        elif PathManager.exists(paths["labels"]):
            PathManager.rm(paths["labels"])
        with PathManager.open(paths["meta"], "w") as f:
            json.dump({**settings, "dims": dims}, f, indent=2)
    comm.synchronize()
    return load_features(output_dir, split, layers)


def _finished_with(meta_path: str, settings: dict) -> bool:
    if not PathManager.exists(meta_path):
        return False
    with PathManager.open(meta_path) as f:
        meta = json.load(f)
    return all(meta.get(k) == v for k, v in settings.items())


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


# ---------------------------------------------------------------- config-driven entry (the tool)

EXTRACTION_KEYS = ("layers", "pooling", "batch_size", "num_workers", "output_dir", "splits", "reuse")


def build_model_for_extraction(cfg: DictConfig) -> nn.Module:
    """``cfg.model`` (a model or a bare trunk) with ``train.weights_init`` (any layout the importer
    reads, heads skipped) or else ``train.init_checkpoint`` (a d2ssl run's ``model_final.pth``) loaded
    into its trunk by the same importer, which reads files without unpickling code.

    The model is initialised from ``train.seed`` in every process (detectron2 seeds rank r with
    seed + r), so a randomly initialised trunk, the baseline of every evaluation, is the same
    trunk on every rank and in every run."""
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
    checkpoint = cfg.train.get("init_checkpoint") or weights_init.get("PARAMS_FILE", "")
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
