"""Checks on a loaded LazyConfig that catch mistakes before any work starts."""

from __future__ import annotations

from omegaconf import DictConfig

REQUIRED_SECTIONS = ("model", "dataloader", "optimizer", "lr_multiplier", "train")
REQUIRED_TRAIN_KEYS = ("output_dir", "max_iter", "device", "checkpointer", "log_period", "amp", "ddp")


class ConfigError(ValueError):
    """A config value is missing or invalid; the message names the file and key."""


def validate_config(cfg: DictConfig, config_file: str = "<config>") -> None:
    missing = [s for s in REQUIRED_SECTIONS if s not in cfg]
    if missing:
        raise ConfigError(f"{config_file}: missing top-level sections {missing} (need {list(REQUIRED_SECTIONS)})")
    missing = [k for k in REQUIRED_TRAIN_KEYS if k not in cfg.train]
    if missing:
        raise ConfigError(f"{config_file}: train is missing keys {missing}")
    if "train" not in cfg.dataloader:
        raise ConfigError(f"{config_file}: dataloader.train is missing")
    _check_positive_int(cfg.train.max_iter, "train.max_iter", config_file, allow_zero=False)
    _check_positive_int(cfg.dataloader.train.get("total_batch_size", 1), "dataloader.train.total_batch_size",
                        config_file, allow_zero=False)
    epochs = cfg.train.get("epochs")
    if epochs is not None and not (isinstance(epochs, (int, float)) and epochs > 0):
        raise ConfigError(f"{config_file}: train.epochs must be a positive number or null, got {epochs!r}")
    lr = cfg.optimizer.get("lr")
    if lr is not None and not (isinstance(lr, (int, float)) and lr > 0):
        raise ConfigError(f"{config_file}: optimizer.lr must be a positive number, got {lr!r}")


def _check_positive_int(value, key: str, config_file: str, allow_zero: bool) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and (value > 0 or (allow_zero and value == 0))
    if not ok:
        raise ConfigError(f"{config_file}: {key} must be a positive integer, got {value!r}")
