"""Checks that the installed detectron2 provides everything d2ssl relies on.

Run ``python -m d2ssl.utils.env`` after installing; the setup script and the tests call it, so that
a broken or partial detectron2 install fails here with a clear message instead of deep in training.
"""

from __future__ import annotations

import importlib

# (module, attribute) pairs d2ssl uses. Keep in sync with the imports of the package.
REQUIRED_DETECTRON2_API: tuple[tuple[str, str], ...] = (
    ("detectron2.modeling", "META_ARCH_REGISTRY"),
    ("detectron2.modeling.backbone.resnet", "ResNet"),
    ("detectron2.modeling.backbone.resnet", "BottleneckBlock"),
    ("detectron2.modeling.backbone.resnet", "BasicStem"),
    ("detectron2.config", "LazyConfig"),
    ("detectron2.config", "LazyCall"),
    ("detectron2.config", "instantiate"),
    ("detectron2.config", "configurable"),
    ("detectron2.engine", "launch"),
    ("detectron2.engine", "SimpleTrainer"),
    ("detectron2.engine", "AMPTrainer"),
    ("detectron2.engine", "default_argument_parser"),
    ("detectron2.engine", "hooks"),
    ("detectron2.engine.defaults", "create_ddp_model"),
    ("detectron2.checkpoint", "DetectionCheckpointer"),
    ("detectron2.data", "DatasetCatalog"),
    ("detectron2.data", "MetadataCatalog"),
    ("detectron2.utils.events", "EventStorage"),
    ("detectron2.utils.file_io", "PathManager"),
    ("detectron2.utils", "comm"),
    ("detectron2.solver", "LRMultiplier"),
)


class Detectron2InstallError(ImportError):
    pass


def check_detectron2() -> str:
    """Imports every detectron2 symbol d2ssl needs; returns the detectron2 version.

    Raises:
        Detectron2InstallError: naming the missing module or attribute and how to install.
    """
    hint = "Run `bash scripts/setup_env.sh` (see docs/getting_started.md, 'Installing detectron2')."
    try:
        import detectron2
    except ImportError as e:
        raise Detectron2InstallError(f"detectron2 is not importable ({e}). {hint}") from e
    missing = []
    for module_name, attr in REQUIRED_DETECTRON2_API:
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            missing.append(f"{module_name} (import failed: {e})")
            continue
        if not hasattr(module, attr):
            missing.append(f"{module_name}.{attr}")
    if missing:
        raise Detectron2InstallError(
            f"detectron2 at {detectron2.__file__} lacks: {', '.join(missing)}. {hint}"
        )
    return detectron2.__version__


def main() -> None:
    import torch

    version = check_detectron2()
    import detectron2

    print(f"detectron2 {version} ({detectron2.__file__}), torch {torch.__version__}: "
          "all d2ssl needs is present")


if __name__ == "__main__":
    main()
