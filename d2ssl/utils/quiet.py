"""Warnings d2ssl knows to be harmless, silenced where they are raised (by message and module).

Its own module so that ``d2ssl/__init__.py`` can call it before detectron2 is imported, without
importing ``d2ssl.utils.env`` (which runs as ``python -m d2ssl.utils.env``).
"""

from __future__ import annotations

import logging
import re
import warnings

# "No CUDA runtime is found, using CUDA_HOME=..." is logged by torch.utils.cpp_extension when
# detectron2's default_setup collects the environment on a machine with a CUDA toolkit but no GPU:
# d2ssl compiles no extension, so on a CPU run it only alarms.
_NO_CUDA_RUNTIME = re.compile(r"No CUDA runtime is found")


class _DropNoCudaRuntime(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _NO_CUDA_RUNTIME.match(str(record.msg))


def silence_known_warnings() -> None:
    """Silences the warnings d2ssl knows to be harmless, by message and module, before importing
    detectron2 (``d2ssl/__init__.py`` calls it first); every other warning still shows. Idempotent."""
    # fvcore (imported by detectron2.layers) decorates its focal losses with torch.jit.script at
    # import; torch >= 2.10 calls that deprecated on every import, in every process. d2ssl never runs
    # the scripted functions' TorchScript path, so the warning says nothing about a d2ssl run.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning,
                            module=r"torch\.jit\._script")
    cpp_extension = logging.getLogger("torch.utils.cpp_extension")
    if not any(isinstance(f, _DropNoCudaRuntime) for f in cpp_extension.filters):
        cpp_extension.addFilter(_DropNoCudaRuntime())
