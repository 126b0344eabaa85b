"""Legacy (pre-zip) ``torch.save`` files, the format of many published SSL checkpoints: damaged framing
(pickles, storage list, size headers, length) is refused naming the file; damaged tensor data, which
only a checksum can catch, loads with a warning saying so, and is refused when a ``.sha256`` is beside
it."""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import struct
from pathlib import Path

import pytest
import torch

from d2ssl.checkpoint import convert_checkpoint
from d2ssl.checkpoint.load import WeightsLoadError, read_checkpoint
from d2ssl.utils.safe_io import CorruptFileError, verify_integrity

UNVERIFIED = "legacy torch.save format: tensor data cannot be verified; a .sha256 beside it would"


def _save_legacy(obj, path: Path) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    return path


def _mixed_state() -> dict[str, torch.Tensor]:
    weight = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    return {
        "conv.weight": weight,
        "conv.row": weight[1],  # shares the weight's storage: one storage, named twice
        "bn.num_batches_tracked": torch.tensor(7, dtype=torch.int64),
        "half": torch.linspace(-1, 1, 5, dtype=torch.float16),
        "mask": torch.tensor([True, False, True]),
    }


def _layout(raw: bytes) -> dict:
    """Where the legacy file's parts are: the object pickle, the storage key list and each storage's
    (size header offset, data offset, data bytes), read with the real classes (a file the test made)."""
    f = io.BytesIO(raw)
    for _ in range(3):  # magic number, protocol version, sys info
        pickle.load(f)
    itemsizes = {}

    class Unpickler(pickle.Unpickler):
        def persistent_load(self, pid):
            _, storage_type, key, _location, _numel, _view = pid
            itemsizes.setdefault(key, storage_type.dtype.itemsize)

        def find_class(self, module, name):
            if module == "torch._utils":
                return lambda *args: None  # the tensors themselves are not needed
            if module == "torch" and name.endswith("Storage"):
                return torch.serialization.StorageType(name)  # as torch's loader reads it
            return super().find_class(module, name)

    object_start = f.tell()
    Unpickler(f).load()
    keys_start = f.tell()
    storages = []
    for key in pickle.load(f):
        header = f.tell()
        (numel,) = struct.unpack("<q", f.read(8))
        storages.append((header, header + 8, numel * itemsizes[key]))
        f.seek(numel * itemsizes[key], io.SEEK_CUR)
    assert f.tell() == len(raw)
    return {"object": (object_start, keys_start), "keys": (keys_start, storages[0][0]), "storages": storages}


def _flip(raw: bytes, start: int, count: int = 64) -> bytes:
    damaged = bytearray(raw)
    damaged[start: start + count] = bytes(b ^ 0xFF for b in damaged[start: start + count])
    return bytes(damaged)


def _write_sha256(path: Path) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    path.with_name(path.name + ".sha256").write_text(f"{digest}  {path.name}\n")


def test_intact_legacy_file_loads_with_a_warning_that_its_tensor_data_is_unverified(tmp_path, caplog):
    path = _save_legacy(_mixed_state(), tmp_path / "legacy.pth")
    with caplog.at_level(logging.WARNING):
        loaded = read_checkpoint(str(path))
    assert loaded.keys() == _mixed_state().keys()
    assert all(torch.equal(loaded[k], v) and loaded[k].dtype == v.dtype for k, v in _mixed_state().items())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(path) in w and UNVERIFIED in w for w in warnings), warnings
    # A checksum beside it covers the tensor data: nothing is left unverified, no warning.
    _write_sha256(path)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        read_checkpoint(str(path))
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def _float_state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {f"layer{i}.weight": torch.randn(64 + i, generator=generator) for i in range(3)}


def _damage(raw: bytes, how: str) -> bytes:
    parts = _layout(raw)
    (obj_start, obj_end), (keys_start, _) = parts["object"], parts["keys"]
    (header, data, nbytes) = parts["storages"][1]
    if how == "flipped_object_pickle":
        return _flip(raw, (obj_start + obj_end) // 2)
    if how == "flipped_version_and_sys_info":
        return _flip(raw, 16, 32)
    if how == "flipped_storage_key_list":
        return _flip(raw, keys_start + 4, 16)
    if how == "storage_size_header_changed":  # one element more than the tensors declared
        (numel,) = struct.unpack("<q", raw[header: header + 8])
        return raw[:header] + struct.pack("<q", numel + 1) + raw[header + 8:]
    if how == "truncated_in_tensor_data":
        return raw[: data + nbytes // 2]
    if how == "truncated_in_size_header":
        return raw[: header + 3]
    if how == "truncated_in_object_pickle":
        return raw[: (obj_start + obj_end) // 2]
    if how == "bytes_appended":
        return raw + b"\x00" * 8
    raise AssertionError(how)


@pytest.mark.parametrize("how", [
    "flipped_object_pickle", "flipped_version_and_sys_info", "flipped_storage_key_list",
    "storage_size_header_changed", "truncated_in_tensor_data", "truncated_in_size_header",
    "truncated_in_object_pickle", "bytes_appended",
])
def test_damaged_legacy_framing_is_refused_naming_the_file(tmp_path, how):
    path = _save_legacy(_float_state(), tmp_path / "legacy.pth")
    verify_integrity(str(path))  # intact: passes
    path.write_bytes(_damage(path.read_bytes(), how))
    with pytest.raises(CorruptFileError, match=rf"{path} is damaged: .*\(legacy torch\.save format\)"):
        verify_integrity(str(path))
    with pytest.raises(WeightsLoadError, match=rf"{path} is damaged"):
        read_checkpoint(str(path))


def test_flipped_magic_number_is_refused_naming_the_file(tmp_path):
    # No longer recognisable as the legacy format: the loader refuses it.
    path = _save_legacy(_float_state(), tmp_path / "legacy.pth")
    path.write_bytes(_flip(path.read_bytes(), 4, 8))
    with pytest.raises(WeightsLoadError, match=rf"{path} is damaged"):
        read_checkpoint(str(path))


def test_flipped_tensor_data_is_warned_about_and_refused_with_a_checksum(tmp_path, tv_resnet18, caplog):
    # 64 flipped bytes inside a storage keep the framing intact: only a checksum can tell.
    path = _save_legacy(tv_resnet18.state_dict(), tmp_path / "resnet18_legacy.pth")
    raw = path.read_bytes()
    _, data, nbytes = max(_layout(raw)["storages"], key=lambda storage: storage[2])
    path.write_bytes(_flip(raw, data + nbytes // 2))
    output = tmp_path / "r18.pkl"
    with caplog.at_level(logging.WARNING):
        convert_checkpoint(str(path), str(output), to="detectron2")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(path) in w and UNVERIFIED in w for w in warnings), warnings
    # The same damaged file, with the checksum of the intact one beside it: refused, nothing written.
    intact = tmp_path / "intact.pth"
    intact.write_bytes(raw)
    _write_sha256(intact)
    path.with_name(path.name + ".sha256").write_text(
        intact.with_name(intact.name + ".sha256").read_text().replace(intact.name, path.name))
    output.unlink()
    with pytest.raises(WeightsLoadError, match=rf"{path} is damaged: its sha256"):
        convert_checkpoint(str(path), str(output), to="detectron2")
    assert not output.exists()
