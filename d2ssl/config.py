"""Checks on a loaded LazyConfig that catch mistakes before any work starts.

``validate_config`` runs in ``setup_config``, before anything is built. Besides the shape of the
``train`` section and the types of its scalars (``TRAIN_SCALAR_TYPES``), it checks every
``L(target)(...)`` node of the config against ``target``'s signature: an argument the target does
not take, or a value of the wrong type for an argument annotated ``int``/``float``/``bool``/``str``
(or ``Optional``/``Union``/``Literal`` of those), is a ``ConfigError`` naming the key and what is
allowed. Checks that need the data set (the NCE memory size) run in ``do_train`` once it is loaded
(``check_num_train_samples``); checks between several arguments of one object (a tile grid that
must fit the crop) are in its constructor.
"""

from __future__ import annotations

import collections.abc
import copy
import inspect
import logging
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from detectron2.utils.registry import locate
from omegaconf import DictConfig, ListConfig

logger = logging.getLogger(__name__)

REQUIRED_SECTIONS = ("model", "dataloader", "optimizer", "lr_multiplier", "train")
# A config with an ``extraction`` section only runs a trunk (feature extraction, ClusterFit's
# clustering): it trains nothing and needs no optimizer or schedule.
TRAINING_ONLY_SECTIONS = ("optimizer", "lr_multiplier")
REQUIRED_TRAIN_KEYS = ("output_dir", "max_iter", "device", "checkpointer", "log_period", "amp", "ddp")
# Every key the training loop reads from ``train``; anything else is a typo. Add new keys here.
OPTIONAL_TRAIN_KEYS = (
    "init_checkpoint", "weights_init", "epochs", "seed", "reference_world_size", "cudnn_benchmark",
    "knn_monitor",
    "eval_period", "precise_bn", "channels_last",
)
# Types of train's scalars not checked on their own below; a wrong one would otherwise surface late
# as a bare TypeError (``train.seed=abc``: "'<' not supported" inside detectron2's setup).
TRAIN_SCALAR_TYPES: dict[str, Any] = {
    "output_dir": str, "init_checkpoint": typing.Optional[str], "seed": int, "reference_world_size": int,
    "cudnn_benchmark": bool, "channels_last": bool, "eval_period": int,
}
AMP_PRECISIONS = ("float16", "bfloat16")
CHECKPOINTER_KEYS = ("period", "max_to_keep", "file_prefix")
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")


class ConfigError(ValueError):
    """A config value is missing or invalid; the message names the file and key."""


def validate_config(cfg: DictConfig, config_file: str = "<config>") -> None:
    """Raises ``ConfigError`` naming the key and the allowed values for the first problem found."""
    required = [s for s in REQUIRED_SECTIONS if "extraction" not in cfg or s not in TRAINING_ONLY_SECTIONS]
    missing = [s for s in required if s not in cfg]
    if missing:
        raise ConfigError(
            f"{config_file}: missing top-level sections {missing} (need {required})"
        )
    missing = [k for k in REQUIRED_TRAIN_KEYS if k not in cfg.train]
    if missing:
        raise ConfigError(f"{config_file}: train is missing keys {missing}")
    _check_known_keys(cfg.train, "train", REQUIRED_TRAIN_KEYS + OPTIONAL_TRAIN_KEYS, config_file)
    _check_known_keys(cfg.train.checkpointer, "train.checkpointer", CHECKPOINTER_KEYS, config_file)
    for key, value, _ in _children(cfg.train, "train"):
        hint = TRAIN_SCALAR_TYPES.get(key)
        if hint is not None and not _matches(value, hint):
            raise ConfigError(
                f"{config_file}: train.{key}={value!r} ({type(value).__name__}) has the wrong type: "
                f"train.{key} takes {_describe(hint)}"
            )
    if not cfg.train.output_dir.strip():  # os.makedirs('') says only "No such file or directory"
        raise ConfigError(f"{config_file}: train.output_dir is empty: set it to a folder")
    if "train" not in cfg.dataloader:
        raise ConfigError(f"{config_file}: dataloader.train is missing")
    _check_positive_int(cfg.train.max_iter, "train.max_iter", config_file)
    _check_positive_int(cfg.train.log_period, "train.log_period", config_file)
    _check_positive_int(cfg.train.checkpointer.get("period"), "train.checkpointer.period", config_file)
    max_to_keep = cfg.train.checkpointer.get("max_to_keep")
    if max_to_keep is not None:
        _check_positive_int(max_to_keep, "train.checkpointer.max_to_keep", config_file, or_null=True)
    _check_positive_int(cfg.dataloader.train.get("total_batch_size", 1), "dataloader.train.total_batch_size",
                        config_file)
    epochs = cfg.train.get("epochs")
    if epochs is not None and not (_is_number(epochs) and epochs > 0):
        raise ConfigError(f"{config_file}: train.epochs must be a positive number or null, got {epochs!r}")
    lr = cfg.optimizer.get("lr") if "optimizer" in cfg else None
    if lr is not None and not (_is_number(lr) and lr > 0):
        raise ConfigError(f"{config_file}: optimizer.lr must be a positive number, got {lr!r}")
    device = cfg.train.device
    if not (isinstance(device, str) and _DEVICE.match(device)):
        raise ConfigError(
            f"{config_file}: train.device must be 'cpu', 'cuda' or 'cuda:<index>', got {device!r}"
        )
    amp = cfg.train.amp.get("enabled", False)
    if not isinstance(amp, bool):
        raise ConfigError(f"{config_file}: train.amp.enabled must be true or false, got {amp!r}")
    precision = cfg.train.amp.get("precision")
    if precision is not None and precision not in AMP_PRECISIONS:
        raise ConfigError(
            f"{config_file}: train.amp.precision must be one of {AMP_PRECISIONS} or null, got {precision!r}"
        )
    check_call_arguments(cfg, config_file)


def check_num_train_samples(node: Any, num_samples: int, path: str = "model") -> None:
    """Every ``num_train_samples`` under ``node`` (after ``fill_num_train_samples``) must be at least
    the data set size: the NCE memory bank keeps one slot per image, indexed by ``image_id``."""
    for key, value, child_path in _children(node, path):
        if key == "num_train_samples" and isinstance(value, int) and value < num_samples:
            raise ConfigError(
                f"{child_path}={value} is smaller than the data set ({num_samples} images): the memory bank "
                f"needs one entry per image; allowed: >= {num_samples}, or -1 to use the data set size"
            )
        check_num_train_samples(value, num_samples, child_path)


# ``key=folder:PATH`` etc. on the command line: the data set call each shorthand stands for, and the
# argument the text after the colon goes to. Detection configs keep detectron2's catalog loader.
DATASET_SHORTHANDS = {
    "folder": ("d2ssl.data.datasets.load_image_folder", "root"),
    "list": ("d2ssl.data.datasets.load_image_list", "list_file"),
    "catalog": ("d2ssl.data.datasets.get_dataset_dicts", "names"),
}


def _wrapped_argument(node: Any) -> str | None:
    """The argument of data set node ``node`` that holds the data set it derives from (declared by its
    function with ``d2ssl.data.datasets.wraps_dataset``: ``attach_labels``' ``dataset``), or None."""
    if not (isinstance(node, DictConfig) and "_target_" in node):
        return None
    from d2ssl.data.datasets import WRAPPED_DATASET_ATTRIBUTE

    try:
        target = resolve_target(node)[0]
    except Exception:  # an unimportable target is reported by validate_config
        return None
    argument = getattr(target, WRAPPED_DATASET_ATTRIBUTE, None)
    return argument if argument and isinstance(node.get(argument), DictConfig) else None


def dataset_shorthand(value: Any, current: Any = None) -> DictConfig | None:
    """The ``L(...)`` data set node a command-line shorthand stands for, or ``None`` if ``value`` is
    not one: ``folder:PATH`` (``load_image_folder(root=PATH)``), ``list:FILE``
    (``load_image_list(list_file=FILE)``), ``catalog:NAME[,NAME...]`` (``get_dataset_dicts(names=[...])``,
    or, where ``current`` calls detectron2's ``get_detection_dataset_dicts``, that call with only its
    ``names`` changed). Otherwise the node is new: no argument of the node it replaces lingers (set
    more with later ``key=value`` overrides).

    Where ``current`` derives its data from another data set (a function marked ``wraps_dataset``:
    ClusterFit's ``attach_labels``, ``class_balanced_subset``), the shorthand replaces that inner data
    set and the rest of ``current`` stays: the swap keeps what the node means (pseudo-labels stay
    pseudo-labels; ``attach_labels`` then checks that its labels file was made for the new data)."""
    if not isinstance(value, str):
        return None
    kind, sep, rest = value.strip().strip("'\"").partition(":")
    if not sep or kind not in DATASET_SHORTHANDS or not rest:
        return None
    inner = _wrapped_argument(current)
    if inner is not None:
        node = copy.deepcopy(current)
        node[inner] = dataset_shorthand(value, current[inner])
        logger.info("%s replaces the data set inside %s (its argument %r); its other arguments stay", value,
                    _target_name(current), inner)
        return node
    target, argument = DATASET_SHORTHANDS[kind]
    if kind == "catalog":
        now = current.get("_target_") if isinstance(current, (DictConfig, dict)) else None
        now = now if isinstance(now, str) else getattr(now, "__name__", "")
        names = [n.strip() for n in rest.split(",") if n.strip()]
        if now.endswith("get_detection_dataset_dicts"):  # keep filter_empty & co. of the detection recipe
            node = copy.deepcopy(current)
            node.names = names
            return node
        return DictConfig({"_target_": target, argument: names})
    return DictConfig({"_target_": target, argument: rest})


def _target_name(node: Any) -> str:
    target = node.get("_target_") if isinstance(node, (DictConfig, dict)) else None
    return target if isinstance(target, str) else getattr(target, "__qualname__", repr(target))


_SPLIT_WORDS = ("train", "val", "test", "training", "validation", "eval")


def dataset_name_of(node: Any, split: str = "") -> str:
    """A short name of the data set node ``node`` for output files (ClusterFit's cluster files): the
    folder of ``load_image_folder`` (``/data/photos/train`` -> ``photos_train``: a split folder keeps
    its parent's name), the list file's stem of ``load_image_list``, the catalog names of
    ``get_dataset_dicts`` (``fashion_mnist_train``), through nodes that wrap a data set. A trailing
    ``_{split}`` is dropped (the output names add the split back: ``photos_train_N50_...``)."""
    inner = _wrapped_argument(node)
    if inner is not None:
        return dataset_name_of(node[inner], split)
    if not isinstance(node, (DictConfig, dict)):
        return "dataset"
    name = _target_name(node).rsplit(".", 1)[-1]
    if node.get("root") is not None or node.get("list_file") is not None:
        path = str(node.get("list_file") or node.get("root")).rstrip("/")
        stem = os.path.basename(path)
        stem = os.path.splitext(stem)[0] if node.get("list_file") else stem
        parent = os.path.basename(os.path.dirname(path))
        name = f"{parent}_{stem}" if stem.lower() in _SPLIT_WORDS and parent else stem
    elif node.get("names") is not None:
        names = node.names
        name = "+".join([names] if isinstance(names, str) else [str(n) for n in names])
    name = re.sub(r"[^A-Za-z0-9_.+-]+", "_", name).strip("_") or "dataset"
    if split and name.endswith(f"_{split}") and len(name) > len(split) + 1:
        name = name[: -len(split) - 1]
    return name


def instantiate_dataset(node: DictConfig, key: str) -> Any:
    """``instantiate(node)``; an error naming a path or name that an argument of ``node`` holds (a
    missing root folder, list file or data set name) is re-raised as ``ConfigError`` naming the
    config key too (``dataloader.train.dataset.root='/data/x': image folder '/data/x' does not exist``)."""
    from detectron2.config import instantiate

    try:
        return instantiate(node)
    except (ValueError, OSError) as e:
        for name in node.keys():
            value = node[name]
            values = list(value) if isinstance(value, ListConfig) else [value]
            culprit = next((v for v in values if isinstance(v, str) and v and v in str(e)), None)
            if name != "_target_" and culprit is not None:
                raise ConfigError(f"{key}.{name}={value!r}: {e}") from e
        raise


def check_call_arguments(cfg: Any, config_file: str = "<config>", path: str = "") -> None:
    """Checks the arguments of every ``L(target)(...)`` node under ``cfg`` against ``target``'s
    signature: unknown names and wrongly typed literals raise ``ConfigError``."""
    if isinstance(cfg, DictConfig) and "_target_" in cfg:
        _check_node(cfg, config_file, path or "<root>")
    for _, value, child_path in _children(cfg, path):
        check_call_arguments(value, config_file, child_path)


def _children(node: Any, path: str):
    if isinstance(node, DictConfig):
        for key in node.keys():
            if key == "_target_":
                continue
            try:
                value = node[key]
            except Exception:  # missing (???) or unresolvable interpolation: nothing to check
                continue
            yield key, value, f"{path}.{key}" if path else str(key)
    elif isinstance(node, ListConfig):
        for i, value in enumerate(node):
            yield i, value, f"{path}[{i}]"


def resolve_target(node: DictConfig) -> tuple[Any, Mapping[str, inspect.Parameter] | None]:
    """The callable of an ``L(target)(...)`` node and its parameters (``None`` for builtins without
    an inspectable signature). Raises whatever importing a ``_target_`` string raises."""
    target = node._target_
    target = locate(target) if isinstance(target, str) else target
    try:
        return target, inspect.signature(target).parameters
    except (TypeError, ValueError):
        return target, None


def _check_node(node: DictConfig, config_file: str, path: str) -> None:
    try:
        target, params = resolve_target(node)
    except Exception as e:
        raise ConfigError(f"{config_file}: {path}._target_={node._target_!r} cannot be imported: {e}") from e
    if params is None:  # nothing to check against
        return
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = [n for n, p in params.items() if p.kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                               inspect.Parameter.VAR_KEYWORD)]
    name = getattr(target, "__qualname__", repr(target))
    hints = _type_hints(target)
    for key in node.keys():
        if key == "_target_":
            continue
        if key not in params:
            if takes_any:
                continue
            raise ConfigError(f"{config_file}: unknown key {path}.{key}: {name} takes {named}")
        try:
            value = node[key]
        except Exception:
            continue
        hint = hints.get(key)
        if hint is not None and not _matches(value, hint):
            raise ConfigError(
                f"{config_file}: {path}.{key}={value!r} ({type(value).__name__}) has the wrong type: "
                f"{name} takes {key}: {_describe(hint)}"
            )


def _type_hints(target: Any) -> dict[str, Any]:
    function = target.__init__ if inspect.isclass(target) else target
    try:
        return typing.get_type_hints(function)
    except Exception:  # annotations naming types that cannot be resolved: skip type checks
        return {}


_SIMPLE = (bool, int, float, str, type(None))
_SEQUENCES = (list, tuple, collections.abc.Sequence)


def _matches(value: Any, hint: Any) -> bool:
    """Whether a config value can be ``hint``; True when it cannot be decided from the value."""
    if isinstance(value, DictConfig) and "_target_" in value:
        return True  # built at instantiate time: its type is not known yet
    origin = typing.get_origin(hint)
    if origin in (typing.Union, getattr(types, "UnionType", typing.Union)):
        options = typing.get_args(hint)
        return any(_matches(value, h) for h in options) or not all(_decidable(h) for h in options)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is Any or not _decidable(hint):
        return True
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return _is_number(value)
    if hint is str:
        return isinstance(value, str)
    if typing.get_origin(hint) in _SEQUENCES or hint in _SEQUENCES:
        return isinstance(value, (ListConfig, list, tuple))
    return True


def _decidable(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, getattr(types, "UnionType", typing.Union)):
        return all(_decidable(h) for h in typing.get_args(hint))
    return hint in _SIMPLE or origin is typing.Literal or origin in _SEQUENCES or hint in _SEQUENCES


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is typing.Literal:
        return f"one of {list(typing.get_args(hint))}"
    if typing.get_args(hint):
        return str(hint).replace("typing.", "").replace("collections.abc.", "")
    return getattr(hint, "__name__", str(hint))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_known_keys(node: DictConfig, path: str, allowed: tuple[str, ...], config_file: str) -> None:
    unknown = [k for k in node.keys() if k not in allowed]
    if unknown:
        raise ConfigError(f"{config_file}: unknown key {path}.{unknown[0]}; allowed: {sorted(allowed)}")


def _check_positive_int(value: Any, key: str, config_file: str, or_null: bool = False) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        allowed = "a positive integer or null" if or_null else "a positive integer"
        raise ConfigError(f"{config_file}: {key} must be {allowed}, got {value!r}")


def _data_path_arguments() -> dict[Callable, dict[str, str]]:
    """The data set loaders whose arguments name a file or folder that must exist before training,
    each argument with what it names (data sets generated on first use, such as
    ``pasted_detection_set``, are not among them)."""
    from d2ssl.data import datasets

    return {
        datasets.load_image_folder: {"root": "image folder"},
        datasets.load_image_list: {"list_file": "list file", "root": "image root"},
        datasets.load_tiny_imagenet: {"root": "Tiny ImageNet folder"},
        datasets.load_places365: {"root": "Places365 folder"},
        datasets.load_fashion_mnist: {"root": "Fashion-MNIST folder"},
    }


def check_data_paths(cfg: DictConfig) -> None:
    """Raises ``ConfigError`` for the first data set path under ``cfg.dataloader`` that does not
    exist: an argument of a loader of ``_data_path_arguments`` (``dataloader.train.dataset.root``),
    or the ``image_root`` registered for a data set name given to ``get_dataset_dicts``. Lists no
    folder (listing ImageNet takes minutes); remote paths (``scheme://``) are left to the loader."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from d2ssl.data.datasets import get_dataset_dicts

    loaders = _data_path_arguments()

    def missing(path: Any) -> bool:
        return isinstance(path, str) and bool(path) and "://" not in path and not os.path.exists(path)

    def fail(key: str, value: Any, what: str) -> None:
        raise ConfigError(
            f"{key}={value!r}: {what} does not exist (relative paths are from {os.getcwd()}); "
            f"fix the path or override {key}=..."
        )

    def walk(node: Any, key: str) -> None:
        if isinstance(node, DictConfig):
            if "_target_" in node:
                try:
                    target, _ = resolve_target(node)
                except Exception:  # setup_config already reported unimportable targets
                    target = None
                for name, what in loaders.get(target, {}).items():
                    value = node.get(name)
                    if missing(value):
                        fail(f"{key}.{name}", value, f"{what} {value!r}")
                if target is get_dataset_dicts:
                    names = node.get("names")
                    for name in [names] if isinstance(names, str) else list(names or []):
                        if not isinstance(name, str) or name not in DatasetCatalog:
                            continue  # registered later, or an unknown name the loader reports
                        root = MetadataCatalog.get(name).get("image_root", None)
                        if missing(root):
                            fail(f"{key}.names", names, f"the image folder {root!r} of data set {name!r}")
            for child in list(node.keys()):
                try:
                    value = node[child]
                except Exception:  # a missing (???) or unresolvable value: not a path to check
                    continue
                walk(value, f"{key}.{child}")
        elif isinstance(node, ListConfig):
            for i, value in enumerate(node):
                walk(value, f"{key}[{i}]")

    walk(cfg.get("dataloader"), "dataloader")
