"""Classifiers on a trunk: frozen-trunk linear benchmarks (JigClu/MoCo, VISSL) and fine-tuning.

``TrunkClassifier(trunk, heads, num_classes, input_size, freeze_trunk)`` puts one or several
``PooledLinearHead`` on outputs of a detectron2 ``ResNet`` trunk:

- JigClu / MoCo ``main_lincls.py``: one head ``{"feature": "res5", "pool": None}`` (global average
  pool, ``fc`` initialised normal(0, 0.01), bias 0), ``freeze_trunk=True``;
- VISSL ``eval_resnet_8gpu_transfer_in1k_linear.yaml``: ``eval_mlp`` heads (BatchNorm2d on the
  pooled map, flatten, Linear) on ``conv1``, ``res2`` ... ``res5`` with the ``AvgPool2d`` of
  ``LINEAR_EVAL_FEAT_POOL_OPS_MAP``, plus heads on the globally pooled ``res5``;
- JigClu ``main_semi.py``: one head like the first, ``freeze_trunk=False`` (whole network trains).

A frozen trunk has ``requires_grad=False`` (so ``get_default_optimizer_params`` hands only head
parameters to the optimizer), runs under ``no_grad`` and stays in eval mode even when the trainer
calls ``model.train()``: its BatchNorm statistics never move (MoCo's ``model.eval()`` in training).

Features come from walking the trunk (``stem.conv1`` -> ReLU -> max-pool -> stages) rather than
from ``out_features``, because VISSL's ``conv1`` is the stem *before* its max-pool (112 px at 224
input), which detectron2's ``"stem"`` output does not give. Any ``"stem"`` / ``"res2"`` ... name of
the ``ResNet`` also works, whatever ``out_features`` the trunk was built with.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
from detectron2.modeling.backbone import ResNet
from torch import nn
from torch.nn import functional as F

from d2ssl.data.device_augmentation import stack_views
from d2ssl.utils.events import log_metrics

logger = logging.getLogger(__name__)

FEATURE_ORDER = ("conv1", "stem", "res2", "res3", "res4", "res5")


def trunk_features(trunk: ResNet, images: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """``{name: (N, C, h, w)}`` for ``names`` among ``FEATURE_ORDER`` of a detectron2 ``ResNet``
    with a ``BasicStem``; stops after the deepest requested stage."""
    available = ("conv1", "stem", *trunk.stage_names)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"unknown trunk features {unknown}; available: {list(available)}")
    deepest = max(FEATURE_ORDER.index(n) for n in names)
    wanted, out = set(names), {}
    x = F.relu_(trunk.stem.conv1(images))  # detectron2's BasicStem: conv1 (+ norm), relu, max-pool
    if "conv1" in wanted:
        out["conv1"] = x
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    if "stem" in wanted:
        out["stem"] = x
    for name, stage in zip(trunk.stage_names, trunk.stages):
        if FEATURE_ORDER.index(name) > deepest:
            break
        x = stage(x)
        if name in wanted:
            out[name] = x
    return out


class PooledLinearHead(nn.Module):
    """``(N, C, h, w) -> (N, num_classes)``: pool, optional BatchNorm2d, flatten, Linear.

    Args:
        in_channels: ``C``.
        in_dim: flattened size after pooling (``C * h' * w'``).
        num_classes: outputs.
        pool: ``(kernel, stride, padding)`` of an ``AvgPool2d`` (VISSL's pool ops), or ``None``
            for global average pooling.
        use_bn: BatchNorm on the pooled map before the Linear (VISSL's ``eval_mlp``), synchronised
            across processes (``nn.SyncBatchNorm``, see below).
        init_std: normal(0, init_std) weights and zero bias (MoCo/JigClu: 0.01); ``None`` keeps
            PyTorch's default Linear initialisation (VISSL's ``MLP``).
    """

    def __init__(self, in_channels: int, in_dim: int, num_classes: int, pool: Sequence | None = None,
                 use_bn: bool = False, init_std: float | None = 0.01):
        super().__init__()
        if pool is None:
            self.pool = nn.AdaptiveAvgPool2d(1)
        else:
            kernel, stride, padding = pool
            kernel = tuple(kernel) if isinstance(kernel, Sequence) else kernel
            self.pool = nn.AvgPool2d(kernel, stride, padding)
        # VISSL's HEAD.BATCHNORM_EPS / BATCHNORM_MOMENTUM defaults: 1e-5, 0.1 (PyTorch's). SyncBatchNorm
        # as VISSL's linear benchmark converts every BN (eval_resnet_8gpu_transfer_in1k_linear.yaml
        # l.87-89, CONVERT_BN_TO_SYNC_BN: True): across processes the heads' statistics are those of the
        # global batch, identical on every rank (each rank scores its test shard, rank 0 saves them).
        # On one process it is plain BatchNorm; on CPU ranks create_ddp_model swaps in detectron2's
        # NaiveSyncBatchNorm (d2ssl.utils.distributed.sync_batchnorm_on_cpu), as for norm="SyncBN" trunks.
        self.bn = nn.SyncBatchNorm(in_channels) if use_bn else nn.Identity()
        self.linear = nn.Linear(in_dim, num_classes)
        if init_std is not None:
            nn.init.normal_(self.linear.weight, mean=0.0, std=init_std)
            nn.init.zeros_(self.linear.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(self.bn(self.pool(features)), 1))


def _pooled_cells(height: int, width: int, pool: Sequence | None) -> int:
    """Spatial cells left after ``AvgPool2d(*pool)`` (one for global pooling)."""
    if pool is None:
        return 1
    kernel, stride, padding = pool
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    rows = (height + 2 * padding - kh) // stride + 1
    cols = (width + 2 * padding - kw) // stride + 1
    return max(0, rows) * max(0, cols)


class TrunkClassifier(nn.Module):
    """A trunk and named ``PooledLinearHead``s, trained with one cross-entropy loss per head.

    Args:
        trunk: a detectron2 ``ResNet`` (``d2ssl.modeling.backbone.build_resnet_trunk``).
        heads: ``{name: {"feature": "res5", "pool": None | (k, s, p), "use_bn": bool,
            "init_std": float | None}}``; input sizes are measured with one dry forward pass of a
            ``(1, 3, input_size, input_size)`` zero image.
        num_classes: number of classes; a config's ``None`` is replaced by the data's count before the
            model is built (``resolve_num_classes``), the model itself needs an int.
        input_size: crop size the model is trained and evaluated at.
        freeze_trunk: linear benchmark (True) or fine-tuning (False); see the module docstring.

    ``forward(batched_inputs)`` takes mapped dicts (``image`` ``(3, H, W)``, ``label``) and returns
    ``{"loss_<head>": ...}`` in training (VISSL sums them: ``cross_entropy_multiple_output_single_target``;
    ``<head>_accuracy`` goes to the event storage), ``{head: (N, num_classes) logits}`` in eval.
    """

    def __init__(self, trunk: ResNet, heads: Mapping[str, Mapping], num_classes: int | None,
                 input_size: int = 224, freeze_trunk: bool = True):
        super().__init__()
        if not heads:
            raise ValueError("TrunkClassifier needs at least one head")
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(
                f"TrunkClassifier needs num_classes as a positive int, got {num_classes!r}: a config's "
                f"model.num_classes=null is taken from the data by do_linear_benchmark (resolve_num_classes)")
        self.trunk = trunk
        self.num_classes = num_classes
        self.freeze_trunk = freeze_trunk
        self.head_features = {name: spec.get("feature", "res5") for name, spec in heads.items()}
        self.features = sorted(set(self.head_features.values()), key=FEATURE_ORDER.index)
        shapes = self._feature_shapes(input_size)
        modules = {}
        for name, spec in heads.items():
            unknown = set(spec) - {"feature", "pool", "use_bn", "init_std"}
            if unknown:
                raise ValueError(f"head {name!r}: unknown keys {sorted(unknown)}; allowed: feature, pool, "
                                 f"use_bn, init_std")
            feature = self.head_features[name]
            channels, height, width = shapes[feature]
            pool = spec.get("pool")
            cells = _pooled_cells(height, width, pool)
            if cells < 1:
                raise ValueError(f"head {name!r}: pool {list(pool)} does not fit the {height}x{width} "
                                 f"{feature} map of a {input_size} px input; choose a smaller kernel")
            modules[name] = PooledLinearHead(
                channels, channels * cells, num_classes, pool=pool, use_bn=spec.get("use_bn", False),
                init_std=spec.get("init_std", 0.01),
            )
        self.heads = nn.ModuleDict(modules)
        if freeze_trunk:
            self.trunk.requires_grad_(False)
            self.trunk.eval()

    @torch.no_grad()
    def _feature_shapes(self, input_size: int) -> dict[str, tuple[int, int, int]]:
        was_training = self.trunk.training
        self.trunk.eval()
        x = torch.zeros(1, 3, input_size, input_size, device=next(self.trunk.parameters()).device)
        shapes = {k: tuple(v.shape[1:]) for k, v in trunk_features(self.trunk, x, self.features).items()}
        self.trunk.train(was_training)
        return shapes

    def train(self, mode: bool = True) -> TrunkClassifier:
        super().train(mode)
        if self.freeze_trunk:
            self.trunk.eval()  # BatchNorm statistics of a frozen trunk never move
        return self

    @property
    def device(self) -> torch.device:
        return next(self.heads.parameters()).device

    def logits(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(N, 3, H, W) -> {head: (N, num_classes)}``."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_trunk):
            features = trunk_features(self.trunk, images, self.features)
        return {name: head(features[self.head_features[name]]) for name, head in self.heads.items()}

    def forward(self, batched_inputs: Sequence[dict]):
        images = stack_views(batched_inputs, "image", self.device)  # augments what the mapper deferred
        logits = self.logits(images)
        if not self.training:
            return logits
        labels = [int(x["label"]) for x in batched_inputs]
        if not 0 <= min(labels) <= max(labels) < self.num_classes:
            raise ValueError(f"labels {sorted(set(labels))} outside [0, {self.num_classes}): set "
                             f"model.num_classes to the data set's number of classes")
        labels = torch.as_tensor(labels, device=self.device)
        losses = {f"loss_{name}": F.cross_entropy(out, labels) for name, out in logits.items()}
        log_metrics(**{f"{name}_accuracy": (out.argmax(1) == labels).float().mean()
                       for name, out in logits.items()})
        return losses


def resolve_num_classes(
    configured: int | str | None, labelled: Mapping[str, Sequence[dict]], key: str = "model.num_classes"
) -> int:
    """The number of classes of a classifier trained and evaluated on the data sets ``labelled``
    (``{config key: list of dicts with "label"}``: training, validation and test data).

    Classes are ``0 .. C-1`` with ``C`` = the largest label of all these data sets + 1, and every one
    of them must be the label of some image in one of them: a gap is an error naming the missing
    labels. The union is taken, not the training set alone, because a semi-supervised subset
    (1 % of ImageNet) may miss classes that the full label set, and the test set, have.
    ``configured`` ``None`` or ``"auto"``: returns ``C``; an int that differs from ``C`` is an error
    naming ``key``, the value and the data sets' count (a 10-way classifier on 8 classes would train
    without complaint, reporting accuracies over classes that do not exist).
    """
    seen: dict[str, set[int]] = {}
    for name, dataset in labelled.items():
        labels = {int(d["label"]) for d in dataset if "label" in d}
        negative = sorted(y for y in labels if y < 0)
        if negative:
            raise ValueError(f"{name}: labels {negative[:5]} are negative; a classifier needs labels 0..C-1")
        seen[name] = labels
    union = set().union(*seen.values()) if seen else set()
    if not union:
        raise ValueError(f"cannot infer {key}: {sorted(labelled)} hold no labelled image")
    count = max(union) + 1
    missing = sorted(set(range(count)) - union)
    if missing:
        raise ValueError(
            f"labels {missing[:10]}{' ...' if len(missing) > 10 else ''} of 0..{count - 1} are the label "
            f"of no image in {', '.join(sorted(labelled))}: classes must be numbered 0..C-1 without gaps; "
            f"renumber the labels (labels file / list file) or add images of those classes")
    counts = ", ".join(f"{name} {len(labels)}" for name, labels in seen.items())
    if configured is None or configured == "auto":
        logger.info("%s inferred from the data: %d (classes seen: %s)", key, count, counts)
        return count
    if isinstance(configured, bool) or not isinstance(configured, int):
        raise ValueError(f"{key}={configured!r}: expected a positive int, or null/'auto' to infer it")
    if configured != count:
        raise ValueError(
            f"{key}={configured} but the data sets have {count} classes (labels 0..{count - 1}; distinct "
            f"labels: {counts}): set {key}={count}, or {key}=null to take it from the data")
    return count


class LastLayerLrFactor:
    """``lr_factor_func`` for detectron2's ``get_default_optimizer_params``: parameters whose name
    starts with ``prefix`` (the new classifier) get ``factor`` times the trunk's learning rate.

    JigClu's ``main_semi.py`` (``--lr-last-layer``): 10 % labels 0.2 / 0.01 = 20, 1 %: 5.0 / 0.02 = 250.
    """

    def __init__(self, factor: float, prefix: str = "heads."):
        self.factor = float(factor)
        self.prefix = prefix

    def __call__(self, param_name: str) -> float:
        return self.factor if param_name.startswith(self.prefix) else 1.0
