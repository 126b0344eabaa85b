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
  A legacy ``torch.save`` file (``_use_new_zipfile_serialization=False``, the format of many published
  SSL checkpoints) must have intact framing (``check_legacy_framing``): its pickles parse, its storage
  list matches the storages its tensors name, each storage's size header matches the pickle and the
  file ends after the last one. Its tensor data, and all of a plain pickle (``.pkl``), carry no
  checksum: without a ``.sha256`` such a file is loaded with a warning that says so.
- ``load_torch_file`` / ``load_pickle_file``: ``torch.load(weights_only=True)`` and a restricted
  unpickler that builds only numpy arrays and plain containers. Anything else (a class, a function:
  what a malicious pickle calls) is refused with ``UnsafeFileError`` naming the file and the global,
  unless ``allow_pickle=True`` (``--allow-pickle`` / ``train.weights_init.ALLOW_PICKLE=True``).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import re
import struct
import zipfile
import zlib
from collections.abc import Callable
from typing import IO, Any

import numpy as np
import torch
from detectron2.utils.file_io import PathManager

logger = logging.getLogger(__name__)

CHECKSUM_SUFFIX = ".sha256"
READ_CHUNK = 1 << 20  # bytes sha256_of reads at a time
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
        for chunk in iter(lambda: f.read(READ_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path: str, write: Callable[[IO], Any], mode: str = "wb", checksum: bool = False) -> None:
    """Calls ``write(f)`` on a temporary file and renames it to ``path`` once complete and on disk.

    With ``checksum``, ``<path>.sha256`` is written after the rename; any old one is removed before
    it, with or without ``checksum``, so a checksum file always describes the file beside it or is absent.
    """
    tmp = path + ".tmp"
    try:
        with PathManager.open(tmp, mode) as f:
            write(f)
            if hasattr(f, "flush"):
                f.flush()
                try:
                    os.fsync(f.fileno())  # the data must be on disk before the rename makes it visible
                except (AttributeError, io.UnsupportedOperation):
                    pass  # an in-memory buffer of a remote store: nothing local to sync
        digest = sha256_of(tmp) if checksum else None
    except BaseException:
        _remove_quietly(tmp)  # e.g. disk full: free the space, leave no half file
        raise
    _remove_quietly(checksum_path(path))  # it described the file about to be replaced
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
    """Raises ``CorruptFileError`` naming ``path`` if it differs from the ``.sha256`` written beside it,
    if a record of its zip container fails its CRC32 or if its legacy ``torch.save`` framing is broken.
    What no check covers (a legacy file's tensor data, a plain pickle), when no ``.sha256`` covers it
    either, passes with a warning naming the file."""
    sidecar = checksum_path(path)
    has_checksum = PathManager.isfile(sidecar)
    if has_checksum:
        with PathManager.open(sidecar, "r") as f:
            expected = f.read().split()
        actual = sha256_of(path)
        if not expected or expected[0] != actual:
            raise CorruptFileError(
                f"{path} is damaged: its sha256 ({actual[:16]}...) differs from the one written beside it at "
                f"save time ({sidecar})"
            )
    local = PathManager.get_local_path(path)
    if zipfile.is_zipfile(local):
        try:
            with zipfile.ZipFile(local) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError) as e:
            raise CorruptFileError(f"{path} is damaged: its zip container cannot be read ({e})") from e
        if bad is not None:
            raise CorruptFileError(f"{path} is damaged: record {bad!r} fails its CRC32 check")
        return
    if is_legacy_torch_file(local):
        check_legacy_framing(local, name=path)
        unverified = "legacy torch.save format: tensor data cannot be verified"
    else:
        unverified = "not a torch zip file (a pickle has no checksum of its own): content cannot be verified"
    if not has_checksum:
        logger.warning(
            "%s: %s; a %s beside it would (sha256sum %s > %s%s, once you trust the file)", path, unverified,
            CHECKSUM_SUFFIX, os.path.basename(path), os.path.basename(path), CHECKSUM_SUFFIX,
        )


# torch.serialization's legacy format: MAGIC_NUMBER, PROTOCOL_VERSION, sys_info, the object (its
# storages as persistent ids), the sorted storage keys, then per key an 8-byte element count and the
# raw bytes (``_legacy_save`` / ``_legacy_load``).
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_LEGACY_HEAD = 64  # bytes that hold the pickled magic number at any pickle protocol


class _Inert:
    """Stands for any global a pickle names: built, called or filled, it does nothing, so a pickle can
    be parsed to its end without importing a module or running code."""

    qualname = "object"

    def __new__(cls, *args: Any, **kwargs: Any) -> _Inert:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Inert:
        return _Inert()

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _StorageName:
    """A legacy file's ``torch.FloatStorage``-like global: its element size, without importing."""

    def __init__(self, name: str):
        self.name = name
        self.itemsize = torch.serialization.StorageType(name).dtype.itemsize


class _InertUnpickler(pickle.Unpickler):
    """Parses a pickle building only containers, numbers and strings; every global becomes an inert
    stand-in (recorded in ``globals``), every legacy storage id is recorded in ``storages``
    (key -> (element size, element count), the first mention as ``_legacy_load`` allocates it)."""

    def __init__(self, file: Any):
        super().__init__(file, encoding="latin1")
        self.globals: list[str] = []
        self.storages: dict[str, tuple[int, int]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name.endswith("Storage"):
            return _StorageName(name)  # KeyError for an unknown (damaged) name
        qualname = f"{module}.{name}"
        if qualname not in self.globals:
            self.globals.append(qualname)
        return type(name, (_Inert,), {"qualname": qualname})

    def persistent_load(self, pid: Any) -> Any:
        kind = pid[0] if isinstance(pid, tuple) and pid else None
        kind = kind.decode("latin1") if isinstance(kind, bytes) else kind  # Python 2 files
        if kind == "module":  # a pickled nn.Module class with its source
            return _Inert()
        if kind != "storage" or len(pid) != 6:
            raise pickle.UnpicklingError(f"unknown persistent id {str(pid)[:80]}")
        storage_type, key, _location, numel, _view = pid[1:]
        if not (isinstance(storage_type, _StorageName) and isinstance(key, str) and isinstance(numel, int)
                and numel >= 0):
            raise pickle.UnpicklingError(f"malformed storage id {str(pid)[:80]}")
        self.storages.setdefault(key, (storage_type.itemsize, numel))
        return _Inert()


class _Bounded:
    """``file`` read no further than ``size``: a damaged length field cannot make the unpickler
    allocate more than the file holds. No ``peek``: the unpickler then reads exactly up to each
    pickle's end, where the next part of the file starts."""

    def __init__(self, file: IO[bytes], size: int):
        self.file, self.size = file, size

    def read(self, n: int = -1) -> bytes:
        left = max(0, self.size - self.file.tell())
        return self.file.read(left if n is None or n < 0 else min(n, left))

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readline(self, limit: int = -1) -> bytes:
        return self.file.readline(limit)


def is_legacy_torch_file(local_path: str) -> bool:
    """Whether a local file starts with the legacy ``torch.save`` magic number."""
    with open(local_path, "rb") as f:
        head = f.read(_LEGACY_HEAD)
    try:
        return _InertUnpickler(io.BytesIO(head)).load() == _LEGACY_MAGIC
    except Exception:  # noqa: BLE001  (any other content: not this format)
        return False


def check_legacy_framing(local_path: str, name: str | None = None) -> None:
    """Raises ``CorruptFileError`` naming ``name`` (default ``local_path``) unless the legacy
    ``torch.save`` file's framing is intact: every pickle parses (nothing is imported or run), the
    storage key list names exactly the storages the object's tensors name, each storage's 8-byte
    element count equals the one its tensors declared, and the file ends right after the last
    storage. Bytes changed inside tensor data keep the framing: only a checksum finds those."""
    name = name or local_path
    size = os.path.getsize(local_path)

    def damaged(why: str) -> CorruptFileError:
        return CorruptFileError(f"{name} is damaged: {why} (legacy torch.save format)")

    with open(local_path, "rb") as f:
        reader = _Bounded(f, size)

        def load(what: str, unpickler: _InertUnpickler | None = None) -> Any:
            start = f.tell()
            try:
                return (unpickler or _InertUnpickler(reader)).load()
            except Exception as e:  # noqa: BLE001  (damage shows as any error of the unpickler)
                raise damaged(f"its {what} at byte {start} cannot be parsed ({type(e).__name__}: {e})") from e

        if load("magic number") != _LEGACY_MAGIC:
            raise damaged("it does not start with torch's magic number")
        version = load("protocol version")
        if version != _LEGACY_PROTOCOL:
            raise damaged(f"protocol version {version!r}, not {_LEGACY_PROTOCOL}")
        sys_info = load("system info")
        little_endian = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else None
        if not isinstance(little_endian, bool):
            raise damaged("its system info is not the dict torch writes")
        objects = _InertUnpickler(reader)
        load("object pickle", objects)
        keys = load("storage key list")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise damaged("its storage key list is not a list of strings")
        if len(set(keys)) != len(keys) or set(keys) != set(objects.storages):
            raise damaged(
                f"its storage key list ({len(keys)} keys) does not match the {len(objects.storages)} "
                f"storages its tensors name"
            )
        count = struct.Struct("<q" if little_endian else ">q")
        for key in keys:
            at = f.tell()
            header = f.read(count.size)
            if len(header) < count.size:
                raise damaged(f"it ends at byte {size}, in the size header of storage {key!r} (truncated)")
            itemsize, declared = objects.storages[key]
            (numel,) = count.unpack(header)
            if numel != declared:
                raise damaged(
                    f"storage {key!r} at byte {at} holds {numel} elements by its size header, {declared} by "
                    f"the tensors that use it"
                )
            end = f.seek(numel * itemsize, os.SEEK_CUR)
            if end > size:
                raise damaged(f"it ends at byte {size}, inside the data of storage {key!r} (truncated)")
        if f.tell() != size:
            raise damaged(f"{size - f.tell()} extra bytes follow the last storage")


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
            loaded = pickle.load(f, encoding="latin1")
        else:
            try:
                loaded = _RestrictedUnpickler(f, encoding="latin1").load()
            except UnsafeFileError as e:
                raise _unsafe(path, str(e)) from None
        if f.read(1):  # pickle.load stops at the first pickle's end and would return only that
            raise CorruptFileError(
                f"{path} is damaged or not one pickle: data follows the end of its first pickle (a legacy "
                f"torch.save file whose header is damaged looks like this)"
            )
        return loaded


_NUMPY_DTYPES = ("f2", "f4", "f8", "i4", "i8", "u1", "b1")
_NUMPY_GLOBALS = [np.ndarray, np.dtype, *(type(np.dtype(t)) for t in _NUMPY_DTYPES)]
try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct, scalar
except ImportError:  # pragma: no cover
    from numpy.core.multiarray import _reconstruct, scalar
_NUMPY_GLOBALS += [_reconstruct, scalar]


def is_plain_pickle(path: str) -> bool:
    """Whether ``path`` holds what ``pickle.dump`` writes (protocol 2 or later) rather than a
    ``torch.save`` file, zip or legacy."""
    local = PathManager.get_local_path(path)
    with open(local, "rb") as f:
        if f.read(1) != pickle.PROTO:  # a zip starts with "PK"
            return False
    return not is_legacy_torch_file(local)


def _plain_pickle_refusal(path: str) -> UnsafeFileError:
    """The refusal of a plain pickle holding more than arrays, naming what it holds: read with inert
    stand-ins for its globals, so nothing of it runs."""
    local = PathManager.get_local_path(path)
    try:
        with open(local, "rb") as f:
            parser = _InertUnpickler(_Bounded(f, os.path.getsize(local)))
            top = parser.load()
        kind = f"{top.qualname} object" if isinstance(top, _Inert) else type(top).__name__
        names = [g for g in parser.globals if tuple(g.rsplit(".", 1)) not in _SAFE_PICKLE_GLOBALS]
    except Exception:  # noqa: BLE001  (damaged further on: say what is certain)
        kind, names = "Python object", []
    names = names or ["objects other than arrays"]
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return UnsafeFileError(
        f"{path} is a plain pickle, not a torch zip file; it holds a {kind} with {shown} in it; loading it "
        f"runs code: pass --allow-pickle if you trust it (train.weights_init.ALLOW_PICKLE=True in a config)"
    )


def load_torch_file(path: str, allow_pickle: bool = False, mmap: bool = False) -> Any:
    """A ``torch.save`` file, with ``weights_only=True`` (tensors, numpy arrays, containers, numbers,
    strings) unless ``allow_pickle``. A plain pickle (``pickle.dump``, whatever its name) is read as
    ``load_pickle_file`` reads it: arrays and containers, more only with ``allow_pickle``."""
    if is_plain_pickle(path):
        # torch.load would take its first object for the legacy format's magic number and call the
        # file corrupt.
        try:
            return load_pickle_file(path, allow_pickle)
        except UnsafeFileError:
            raise _plain_pickle_refusal(path) from None
    # weights_only is always explicit: torch then ignores TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD. ``mmap``
    # maps the tensors instead of reading them (a local zip file): a few small keys of a large
    # checkpoint (its run identity, d2ssl.engine.run_folder) are then cheap to read.
    mapped = {"mmap": True} if mmap else {}
    with PathManager.open(path, "rb") as f:
        source = PathManager.get_local_path(path) if mmap else f
        if allow_pickle:
            logger.warning("unpickling %s in full (allow_pickle): this runs any code stored in it", path)
            return torch.load(source, map_location="cpu", weights_only=False, **mapped)
        try:
            with torch.serialization.safe_globals(_NUMPY_GLOBALS):
                return torch.load(source, map_location="cpu", weights_only=True, **mapped)
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


# Names that weights and checkpoints go by, for listing a folder given where a file was expected.
_CHECKPOINT_SUFFIXES = (".pth", ".pkl", ".pt", ".pyth", ".tar", ".ckpt", ".bin", ".torch")


def not_a_file_message(path: str, what: str = "weights file") -> str:
    """Why the local ``path`` cannot be read as a ``what``: it is a folder (its checkpoint-like files
    named, so the user can pick one) or it does not exist."""
    if not os.path.isdir(path):
        return f"{what} {path!r} does not exist"
    found = sorted(n for n in os.listdir(path) if n.endswith(_CHECKPOINT_SUFFIXES)
                   and os.path.isfile(os.path.join(path, n)))
    if not found:
        suffixes = ", ".join(_CHECKPOINT_SUFFIXES)
        return f"{path} is a directory, not a {what}; it holds no checkpoint-like file ({suffixes})"
    shown = ", ".join(found[:8]) + (f" and {len(found) - 8} more" if len(found) > 8 else "")
    return f"{path} is a directory, not a {what}; checkpoint-like files in it: {shown}"


def load_weights_file(path: str, allow_pickle: bool = False) -> Any:
    """Checks the integrity of a local or iopath file, then reads it: ``.pkl`` with the restricted
    unpickler, anything else with ``torch.load``. ``path`` must exist."""
    verify_integrity(path)
    if path.endswith(".pkl"):
        return load_pickle_file(path, allow_pickle)
    return load_torch_file(path, allow_pickle)
