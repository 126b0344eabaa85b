"""d2ssl: self-supervised pretraining as a detectron2 plugin.

Importing the package registers its meta-architectures and datasets; nothing in detectron2 is patched.
"""

from d2ssl import data, modeling  # noqa: F401  (registers into detectron2's registries)

__version__ = "0.1.0"
