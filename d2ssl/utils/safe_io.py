"""Writing files atomically, checking their integrity and reading them without running their code.

One home for what every file d2ssl writes or loads goes through (checkpoints, converted weights,
pretrained weights, ``.pkl`` model-zoo files):

- ``atomic_write``: the content goes to ``<path>.tmp``, is flushed to disk and renamed over ``path``
  (atomic on a local file system); optionally a ``<path>.sha256`` checksum (``sha256sum`` format) is
  written beside it. A failed write leaves ``path`` as it was and removes the temporary file. Remote
  iopath stores have no atomic rename: there the old file is removed before the new one is moved in.
- ``verify_integrity``: a file with a ``.sha256`` beside it must match it (a change anywhere in the
  file); a zip container (``torch.save``'s format) must pass its per-record CRC32 checks
  (``zipfile.ZipFile.testzip``), which catches damaged tensor data in files not written by d2ssl.
  Plain pickles without a checksum cannot be checked.
- ``load_torch_file`` / ``load_pickle_file``: ``torch.load(weights_only=True)`` and a restricted
  unpickler that builds only numpy arrays and plain containers. Anything else (a class, a function:
  what a malicious pickle calls) is refused with ``UnsafeFileError`` naming the file and the global,
  unless ``allow_pickle=True`` (``--allow-pickle`` / ``train.weights_init.ALLOW_PICKLE=True``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import zipfile
import zlib
from collections.abc import Callable
from typing import IO, Any

import numpy as np
import torch
from detectron2.utils.file_io import PathManager

logger = logging.getLogger(__name__)

CHECKSUM_SUFFIX = ".sha256"
ALLOW_PICKLE_HINT = (
    "If you trust the file, allow full unpickling (which runs code stored in it) with --allow-pickle, "
    "or train.weights_init.ALLOW_PICKLE=True in the config"
)
# What numpy arrays, numpy scalars and the containers of detectron2's model-zoo pickles need.
_SAFE_PICKLE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytearray"),
    ("builtins", "complex"),
    ("_codecs", "encode"),  # bytes in protocol-2 (Python 2) pickles, such as detectron2's model zoo
    *((module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
      for name in ("_reconstruct", "scalar")),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class CorruptFileError(ValueError):
    """A file's content does not match its checksum or its container's CRCs; names the file."""


class UnsafeFileError(pickle.UnpicklingError):
    """A file holds Python objects whose unpickling would run code; names the file and the global."""


def checksum_path(path: str) -> str:
    return path + CHECKSUM_SUFFIX


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with PathManager.open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path: str, write: Callable[[IO], Any], mode: str = "wb", checksum: bool = False) -> None:
    """Calls ``write(f)`` on a temporary file and renames it to ``path`` once complete and on disk.

    With ``checksum``, ``<path>.sha256`` is written after the rename (and the old one removed before
    it), so a checksum file always describes the file beside it or is absent.
    """
    tmp = path + ".tmp"
    try:
        with PathManager.open(tmp, mode) as f:
            write(f)
            if hasattr(f, "flush") and hasattr(f, "fileno"):
                f.flush()
                os.fsync(f.fileno())  # the data must be on disk before the rename makes it visible
        digest = sha256_of(tmp) if checksum else None
    except BaseException:
        _remove_quietly(tmp)  # e.g. disk full: free the space, leave no half file
        raise
    if checksum:
        _remove_quietly(checksum_path(path))
    _replace(tmp, path)
    if digest is not None:
        sidecar = checksum_path(path)
        atomic_write(sidecar, lambda f: f.write(f"{digest}  {os.path.basename(path)}\n"), mode="w")


def _replace(tmp: str, path: str) -> None:
    local_dir = PathManager.get_local_path(os.path.dirname(path) or ".")
    if os.path.isdir(local_dir):
        # os.replace is atomic on POSIX and overwrites; iopath's mv refuses an existing target.
        local_tmp, local_path = (os.path.join(local_dir, os.path.basename(p)) for p in (tmp, path))
        os.replace(local_tmp, local_path)
        _fsync_dir(local_dir)
    else:  # remote store: no atomic rename exists, keep the tmp-then-move order at least
        if PathManager.exists(path):
            PathManager.rm(path)
        PathManager.mv(tmp, path)


def _remove_quietly(path: str) -> None:
    try:
        if PathManager.exists(path):
            PathManager.rm(path)
    except OSError:
        pass


def _fsync_dir(path: str) -> None:
    # Makes the rename itself durable (survives a power loss, not only a process kill).
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def verify_integrity(path: str) -> None:
    """Raises ``CorruptFileError`` naming ``path`` if it differs from the ``.sha256`` written beside it
    or if a record of its zip container fails its CRC32; a file with neither passes unchecked."""
    sidecar = checksum_path(path)
    if PathManager.isfile(sidecar):
        with PathManager.open(sidecar, "r") as f:
            expected = f.read().split()
        actual = sha256_of(path)
        if not expected or expected[0] != actual:
            raise CorruptFileError(
                f"{path} is damaged: its sha256 ({actual[:16]}...) differs from the one written beside it at "
                f"save time ({sidecar})"
            )
    local = PathManager.get_local_path(path)
    if not zipfile.is_zipfile(local):
        return
    try:
        with zipfile.ZipFile(local) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError) as e:
        raise CorruptFileError(f"{path} is damaged: its zip container cannot be read ({e})") from e
    if bad is not None:
        raise CorruptFileError(f"{path} is damaged: record {bad!r} fails its CRC32 check")


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise UnsafeFileError(f"{module}.{name}")


def load_pickle_file(path: str, allow_pickle: bool = False) -> Any:
    """A ``.pkl`` file (detectron2 model zoo: dicts of numpy arrays, ``latin1`` strings). Without
    ``allow_pickle`` only numpy arrays and plain containers are built."""
    with PathManager.open(path, "rb") as f:
        if allow_pickle:
            logger.warning("unpickling %s in full (allow_pickle): this runs any code stored in it", path)
            return pickle.load(f, encoding="latin1")
        try:
            return _RestrictedUnpickler(f, encoding="latin1").load()
        except UnsafeFileError as e:
            raise _unsafe(path, str(e)) from None


_NUMPY_DTYPES = ("f2", "f4", "f8", "i4", "i8", "u1", "b1")
_NUMPY_GLOBALS = [np.ndarray, np.dtype, *(type(np.dtype(t)) for t in _NUMPY_DTYPES)]
try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct, scalar
except ImportError:  # pragma: no cover
    from numpy.core.multiarray import _reconstruct, scalar
_NUMPY_GLOBALS += [_reconstruct, scalar]


def load_torch_file(path: str, allow_pickle: bool = False) -> Any:
    """A ``torch.save`` file, with ``weights_only=True`` (tensors, numpy arrays, containers, numbers,
    strings) unless ``allow_pickle``."""
    with PathManager.open(path, "rb") as f:
        if allow_pickle:
            logger.warning("unpickling %s in full (allow_pickle): this runs any code stored in it", path)
            return torch.load(f, map_location="cpu", weights_only=False)
        try:
            with torch.serialization.safe_globals(_NUMPY_GLOBALS):
                return torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            # The same exception type says "not a pickle at all" (garbage): only a refused global is unsafe.
            if "GLOBAL" not in str(e):
                raise
            raise _unsafe(path, _refused_globals(path, str(e))) from None


def _refused_globals(path: str, message: str) -> str:
    try:  # reads the pickle's opcodes without running them
        names = torch.serialization.get_unsafe_globals_in_checkpoint(PathManager.get_local_path(path))
    except Exception:  # noqa: BLE001  (not a zip file: take the name from torch's message)
        names = re.findall(r"GLOBAL ([\w.]+)", message)[:1]
    return ", ".join(names) or "objects other than tensors"


def _unsafe(path: str, global_name: str) -> UnsafeFileError:
    return UnsafeFileError(
        f"refusing to unpickle {path}: it holds Python objects beyond tensors and arrays ({global_name}); "
        f"unpickling it would run code stored in the file. {ALLOW_PICKLE_HINT}"
    )


def load_weights_file(path: str, allow_pickle: bool = False) -> Any:
    """Checks the integrity of a local or iopath file, then reads it: ``.pkl`` with the restricted
    unpickler, anything else with ``torch.load``. ``path`` must exist."""
    verify_integrity(path)
    if path.endswith(".pkl"):
        return load_pickle_file(path, allow_pickle)
    return load_torch_file(path, allow_pickle)
