"""d2ssl: self-supervised pretraining as a detectron2 plugin.

Importing the package registers its meta-architectures and datasets; nothing in detectron2 is patched.
"""

from d2ssl.utils.quiet import silence_known_warnings

silence_known_warnings()  # before detectron2 is first imported: its import raises one of them

from d2ssl import data, modeling  # noqa: E402, F401  (registers into detectron2's registries)

__version__ = "0.1.0"
