"""safe_io behaviour that benchmarks/mutation.py found untested (mutants of d2ssl/utils/safe_io.py that
survived the other tests): the refusal message of a plain pickle, the sidecar's sha256sum format, a
failed write leaving the old file, an empty sidecar, the warning for unverifiable files, the listing of
a folder given as a weights file. Expected values come from hashlib, pickle and hand-written text."""

from __future__ import annotations

import argparse
import collections
import datetime
import decimal
import fractions
import hashlib
import io
import logging
import os
import pickle
import stat
import struct

import numpy as np
import pytest
import torch
from detectron2.utils.file_io import PathManager
from iopath.common.file_io import PathHandler

from d2ssl.utils.safe_io import (
    CorruptFileError,
    UnsafeFileError,
    _Bounded,
    _fsync_dir,
    atomic_write,
    check_legacy_framing,
    is_plain_pickle,
    load_pickle_file,
    load_torch_file,
    load_weights_file,
    not_a_file_message,
    verify_integrity,
)


def _dump(path, obj, protocol: int = pickle.HIGHEST_PROTOCOL) -> str:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return str(path)


def test_a_plain_pickle_with_one_foreign_class_is_refused_naming_it_and_its_container(tmp_path):
    path = _dump(tmp_path / "args.pth", {"args": argparse.Namespace(lr=0.1), "w": [1.0]})
    with pytest.raises(UnsafeFileError) as refused:
        load_torch_file(path)
    assert str(refused.value) == (
        f"{path} is a plain pickle, not a torch zip file; it holds a dict with argparse.Namespace in it; "
        f"loading it runs code: pass --allow-pickle if you trust it (train.weights_init.ALLOW_PICKLE=True "
        f"in a config)"
    )
    loaded = load_torch_file(path, allow_pickle=True)
    assert loaded["args"].lr == 0.1


def test_a_plain_pickle_with_five_foreign_classes_names_three_and_counts_the_rest(tmp_path):
    objects = {"a": argparse.Namespace(), "b": collections.Counter("ab"), "c": fractions.Fraction(1, 3),
               "d": decimal.Decimal("1.5"), "e": datetime.date(2020, 1, 2)}
    path = _dump(tmp_path / "many.pkl", objects)
    with pytest.raises(UnsafeFileError, match=r"holds a dict with argparse\.Namespace, collections\.Counter, "
                                              r"fractions\.Fraction and 2 more in it"):
        load_torch_file(path)


def test_a_pickled_object_at_the_top_is_named_as_an_object(tmp_path):
    path = _dump(tmp_path / "ns.pth", argparse.Namespace(x=1))
    with pytest.raises(UnsafeFileError, match=r"holds a argparse\.Namespace object with argparse\.Namespace"):
        load_torch_file(path)


@pytest.mark.parametrize("protocol", [2, 4])
def test_plain_pickle_detection(tmp_path, protocol):
    plain = _dump(tmp_path / "p.pkl", {"w": 1}, protocol=protocol)
    assert is_plain_pickle(plain)
    zipped = tmp_path / "z.pth"
    torch.save({"w": torch.ones(1)}, zipped)
    assert not is_plain_pickle(str(zipped))
    legacy = tmp_path / "l.pth"
    torch.save({"w": torch.ones(1)}, legacy, _use_new_zipfile_serialization=False)
    assert not is_plain_pickle(str(legacy))
    assert load_torch_file(str(legacy))["w"].tolist() == [1.0]


def test_a_plain_pickle_of_arrays_loads_through_load_torch_file(tmp_path):
    path = _dump(tmp_path / "zoo.pkl", {"model": {"w": np.arange(3.0)}}, protocol=2)
    np.testing.assert_array_equal(load_torch_file(path)["model"]["w"], [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(load_weights_file(path)["model"]["w"], [0.0, 1.0, 2.0])


def test_pickles_holding_objects_are_refused_by_default_by_every_loader(tmp_path):
    path = _dump(tmp_path / "args.pkl", {"args": argparse.Namespace(lr=0.1)})
    for load in (load_pickle_file, load_weights_file, load_torch_file):
        with pytest.raises(UnsafeFileError, match=r"argparse\.Namespace"):
            load(path)


def test_torch_globals_other_than_storages_are_inert_stand_ins(tmp_path):
    # torch.Size is a global of module "torch" that is not a storage type: parsed as an inert stand-in
    path = _handmade_legacy_file(tmp_path / "size.pth", _GOOD_PID, obj={"w": _MARK, "shape": torch.Size([3])})
    check_legacy_framing(path)


def test_data_after_the_first_pickle_is_refused_as_damaged(tmp_path):
    path = tmp_path / "two.pkl"
    path.write_bytes(pickle.dumps({"a": 1}) + pickle.dumps({"b": 2}))
    with pytest.raises(CorruptFileError, match="data follows the end of its first pickle"):
        load_pickle_file(str(path))
    with pytest.raises(CorruptFileError, match="data follows the end of its first pickle"):
        load_pickle_file(str(path), allow_pickle=True)


def test_the_sidecar_is_in_sha256sum_format_and_names_the_file(tmp_path):
    path = tmp_path / "w.bin"
    atomic_write(str(path), lambda f: f.write(b"hello"), checksum=True)
    assert path.read_bytes() == b"hello"
    assert (tmp_path / "w.bin.sha256").read_text() == f"{hashlib.sha256(b'hello').hexdigest()}  w.bin\n"
    assert sorted(os.listdir(tmp_path)) == ["w.bin", "w.bin.sha256"]  # no .tmp left
    # Without a checksum no sidecar is written; text mode writes text.
    atomic_write(str(tmp_path / "t.txt"), lambda f: f.write("text"), mode="w")
    assert (tmp_path / "t.txt").read_text() == "text" and not (tmp_path / "t.txt.sha256").exists()


def test_a_failed_write_leaves_the_old_file_and_its_sidecar_and_no_temporary(tmp_path):
    path = tmp_path / "w.bin"
    atomic_write(str(path), lambda f: f.write(b"old"), checksum=True)
    sidecar = (tmp_path / "w.bin.sha256").read_text()

    def fails(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(str(path), fails, checksum=True)
    assert path.read_bytes() == b"old" and (tmp_path / "w.bin.sha256").read_text() == sidecar
    assert sorted(os.listdir(tmp_path)) == ["w.bin", "w.bin.sha256"]


def test_a_rewrite_replaces_the_sidecar(tmp_path):
    path = tmp_path / "w.bin"
    atomic_write(str(path), lambda f: f.write(b"one"), checksum=True)
    atomic_write(str(path), lambda f: f.write(b"two"), checksum=True)
    assert (tmp_path / "w.bin.sha256").read_text().split()[0] == hashlib.sha256(b"two").hexdigest()
    verify_integrity(str(path))


def test_an_empty_or_wrong_sidecar_is_refused(tmp_path):
    path = tmp_path / "w.pkl"
    atomic_write(str(path), lambda f: pickle.dump({"a": 1}, f), checksum=True)
    (tmp_path / "w.pkl.sha256").write_text("")
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    refusal = rf"w\.pkl is damaged: its sha256 \({actual[:16]}\.\.\.\) differs"
    with pytest.raises(CorruptFileError, match=refusal):
        verify_integrity(str(path))
    (tmp_path / "w.pkl.sha256").write_text("0" * 64 + "  w.pkl\n")
    with pytest.raises(CorruptFileError, match="differs from the one written beside it"):
        verify_integrity(str(path))


def test_files_no_check_covers_load_with_a_warning_unless_a_sidecar_covers_them(tmp_path, caplog):
    plain = _dump(tmp_path / "p.pkl", {"a": 1})
    with caplog.at_level(logging.WARNING, logger="d2ssl.utils.safe_io"):
        verify_integrity(plain)
    assert ("not a torch zip file (a pickle has no checksum of its own): content cannot be verified"
            in caplog.text)
    assert "sha256sum p.pkl > p.pkl.sha256" in caplog.text
    caplog.clear()
    covered = tmp_path / "c.pkl"
    atomic_write(str(covered), lambda f: pickle.dump({"a": 1}, f), checksum=True)
    with caplog.at_level(logging.WARNING, logger="d2ssl.utils.safe_io"):
        verify_integrity(str(covered))
    assert caplog.text == ""
    zipped = tmp_path / "z.pth"
    torch.save({"w": torch.ones(1)}, zipped)  # its zip CRCs cover it: no warning either
    with caplog.at_level(logging.WARNING, logger="d2ssl.utils.safe_io"):
        verify_integrity(str(zipped))
    assert caplog.text == ""


def test_bounded_reads_stop_at_the_size_given(tmp_path):
    path = tmp_path / "b.bin"
    path.write_bytes(bytes(range(10)))
    with open(path, "rb") as f:
        f.seek(4)
        bounded = _Bounded(f, 8)  # a damaged length field asking for 100 bytes gets the 4 left
        assert bounded.read(100) == bytes([4, 5, 6, 7])
        assert bounded.read() == b"" and bounded.read(-1) == b""
        f.seek(2)
        buffer = bytearray(10)
        assert bounded.readinto(buffer) == 6 and bytes(buffer[:6]) == bytes([2, 3, 4, 5, 6, 7])
        f.seek(6)
        assert bounded.read(1) == bytes([6]) and bounded.read(None) == bytes([7])


def test_mmap_loading_maps_the_local_file_and_gives_the_same_tensors(tmp_path, monkeypatch):
    path = tmp_path / "z.pth"
    torch.save({"w": torch.arange(4.0)}, path)
    calls = []
    real_load = torch.load

    def load(source, **kwargs):
        calls.append((source, kwargs.get("mmap", False), kwargs["weights_only"]))
        return real_load(source, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    assert load_torch_file(str(path), mmap=True)["w"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert load_torch_file(str(path))["w"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert calls[0] == (str(path), True, True) and calls[1][1:] == (False, True)


def test_a_missing_path_and_folders_are_described(tmp_path):
    missing = str(tmp_path / "nope.pth")
    assert not_a_file_message(missing) == f"weights file {missing!r} does not exist"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("")
    (empty / "sub.pth").mkdir()  # a folder named like a checkpoint is not one
    assert not_a_file_message(str(empty), "checkpoint") == (
        f"{empty} is a directory, not a checkpoint; it holds no checkpoint-like file "
        f"(.pth, .pkl, .pt, .pyth, .tar, .ckpt, .bin, .torch)")
    full = tmp_path / "full"
    full.mkdir()
    names = [f"m{i:02d}.pth" for i in range(10)]
    for n in names:
        (full / n).write_bytes(b"")
    assert not_a_file_message(str(full)) == (
        f"{full} is a directory, not a weights file; checkpoint-like files in it: {', '.join(names[:8])} "
        f"and 2 more")
    few = tmp_path / "few"
    few.mkdir()
    for n in ("b.ckpt", "a.torch"):
        (few / n).write_bytes(b"")
    assert not_a_file_message(str(few)).endswith("checkpoint-like files in it: a.torch, b.ckpt")


def test_bytes_after_the_last_legacy_storage_are_counted(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save({"w": torch.arange(3.0)}, path, _use_new_zipfile_serialization=False)
    check_legacy_framing(str(path))  # intact
    path.write_bytes(path.read_bytes() + b"xyz")
    with pytest.raises(CorruptFileError, match=r"legacy\.pth is damaged: 3 extra bytes follow the last"):
        check_legacy_framing(str(path))


def test_bounded_read_without_size_reads_to_the_bound_and_zero_reads_nothing(tmp_path):
    path = tmp_path / "b.bin"
    path.write_bytes(bytes(range(10)))
    with open(path, "rb") as f:
        f.seek(4)
        bounded = _Bounded(f, 8)
        assert bounded.read(0) == b""
        assert bounded.read() == bytes([4, 5, 6, 7])


def test_exactly_three_foreign_classes_are_all_named_with_no_count(tmp_path):
    objects = {"a": argparse.Namespace(), "b": collections.Counter("ab"), "c": fractions.Fraction(1, 3)}
    path = _dump(tmp_path / "three.pkl", objects)
    named = r"argparse\.Namespace, collections\.Counter, fractions\.Fraction in it; loading"
    with pytest.raises(UnsafeFileError, match=named):
        load_torch_file(path)


def test_exactly_eight_checkpoints_in_a_folder_are_all_named_with_no_count(tmp_path):
    names = [f"m{i}.pth" for i in range(8)]
    for n in names:
        (tmp_path / n).write_bytes(b"")
    assert not_a_file_message(str(tmp_path)).endswith(f"checkpoint-like files in it: {', '.join(names)}")


def test_an_empty_tensor_in_a_legacy_file_is_intact_framing(tmp_path):
    path = tmp_path / "empty.pth"
    torch.save({"e": torch.empty(0), "w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    check_legacy_framing(str(path))
    assert load_torch_file(str(path))["e"].numel() == 0


def test_the_data_is_synced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", stat.S_ISDIR(os.fstat(fd).st_mode)))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic_write(str(tmp_path / "w.bin"), lambda f: f.write(b"x"))
    # the file's data (not a folder), then the rename, then the folder holding the new name
    assert events == [("fsync", False), ("replace", "w.bin"), ("fsync", True)]


def test_a_crash_right_after_the_rename_leaves_no_stale_sidecar(tmp_path, monkeypatch):
    from d2ssl.utils import safe_io

    path = tmp_path / "w.bin"
    atomic_write(str(path), lambda f: f.write(b"old"), checksum=True)
    real_replace = safe_io._replace

    def replace_then_die(tmp, target):
        real_replace(tmp, target)
        raise KeyboardInterrupt  # killed before the new sidecar is written

    monkeypatch.setattr(safe_io, "_replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(path), lambda f: f.write(b"new"), checksum=True)
    # the old sidecar would call the new file damaged: it is gone, the new file loads unverified
    assert path.read_bytes() == b"new" and not (tmp_path / "w.bin.sha256").exists()


def test_a_legacy_file_whose_system_info_omits_byte_order_is_read_as_little_endian(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save({"w": torch.arange(3.0)}, path, _use_new_zipfile_serialization=False)
    raw = path.read_bytes()
    assert raw.count(b"little_endian") == 1
    path.write_bytes(raw.replace(b"little_endian", b"little_endiaX"))  # same length: framing intact
    check_legacy_framing(str(path))  # torch's own default is little-endian too


class _RemoteStore(PathHandler):
    """An iopath store without local paths or rename-over (as a bucket): ``mv`` refuses an existing
    target, so a write must remove the old file first. Backed by a dict."""

    PREFIX = "d2ssl-mutation-test://"
    files: dict[str, bytes] = {}

    def _get_supported_prefixes(self):
        return [self.PREFIX]

    def _get_local_path(self, path, **kwargs):
        return "/nonexistent-remote-store/" + path[len(self.PREFIX):]

    def _open(self, path, mode="r", **kwargs):
        store = self.files

        class _Writer:  # flush but no fileno: nothing local to fsync
            def __init__(self):
                self.chunks = []

            def flush(self):
                pass

            def write(self, data):
                self.chunks.append(data.encode() if isinstance(data, str) else bytes(data))

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                store[path] = b"".join(self.chunks)

        if "w" in mode:
            return _Writer()
        data = store[path]
        return io.BytesIO(data) if "b" in mode else io.StringIO(data.decode())

    def _exists(self, path, **kwargs):
        return path in self.files

    def _isfile(self, path, **kwargs):
        return path in self.files

    def _rm(self, path, **kwargs):
        del self.files[path]

    def _mv(self, src, dst, **kwargs):
        if dst in self.files:
            raise OSError(f"{dst} exists")
        self.files[dst] = self.files.pop(src)
        return True


def test_on_a_store_without_atomic_rename_the_old_file_is_removed_then_the_new_one_moved_in():
    if _RemoteStore.PREFIX not in PathManager._path_handlers:
        PathManager.register_handler(_RemoteStore())
    path = _RemoteStore.PREFIX + "run/w.bin"
    atomic_write(path, lambda f: f.write(b"one"), checksum=True)
    atomic_write(path, lambda f: f.write(b"two"), checksum=True)
    assert _RemoteStore.files == {path: b"two",
                                  path + ".sha256": f"{hashlib.sha256(b'two').hexdigest()}  w.bin\n".encode()}


_MARK = object()


def _handmade_legacy_file(
    path, pid, keys=None, data: bytes = struct.pack("<q", 3) + bytes(12), obj=None
) -> str:
    """torch's legacy layout written by hand: magic, protocol, system info, an object whose one tensor
    storage is the persistent id ``pid``, the storage key list, then each storage (count + bytes)."""

    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return pid if obj is _MARK else None

    with open(path, "wb") as f:
        for part in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(part, f, protocol=2)
        _Pickler(f, protocol=2).dump({"w": _MARK} if obj is None else obj)
        pickle.dump(["0"] if keys is None else keys, f, protocol=2)
        f.write(data)
    return str(path)


def test_a_handmade_legacy_file_with_a_well_formed_storage_id_passes(tmp_path):
    pid = ("storage", torch.FloatStorage, "0", "cpu", 3, None)
    check_legacy_framing(_handmade_legacy_file(tmp_path / "ok.pth", pid))


@pytest.mark.parametrize("pid, why", [
    (["storage", torch.FloatStorage, "0", "cpu", 3, None], "unknown persistent id"),  # a list, not a tuple
    (("storage", torch.FloatStorage, "0", "cpu", 3), "unknown persistent id"),  # five fields
    (("storage", "FloatStorage", "0", "cpu", 3, None), "malformed storage id"),  # a name, not the type
    (("storage", torch.FloatStorage, 0, "cpu", 3, None), "malformed storage id"),  # an int key
    (("storage", torch.FloatStorage, "0", "cpu", 3.0, None), "malformed storage id"),  # a float count
    (("storage", torch.FloatStorage, "0", "cpu", -3, None), "malformed storage id"),
])
def test_malformed_persistent_ids_are_refused_naming_what_is_wrong(tmp_path, pid, why):
    path = _handmade_legacy_file(tmp_path / "bad.pth", pid)
    with pytest.raises(CorruptFileError, match=rf"bad\.pth is damaged: its object pickle .*{why}"):
        check_legacy_framing(path)


_GOOD_PID = ("storage", torch.FloatStorage, "0", "cpu", 3, None)


@pytest.mark.parametrize("keys, why", [
    ([0], "its storage key list is not a list of strings"),
    (("0",), "its storage key list is not a list of strings"),  # a tuple
    (["0", "0"], r"its storage key list \(2 keys\) does not match the 1 storages"),
    (["0", "1"], r"its storage key list \(2 keys\) does not match the 1 storages"),
])
def test_a_storage_key_list_other_than_the_tensors_storages_is_refused(tmp_path, keys, why):
    path = _handmade_legacy_file(tmp_path / "bad.pth", _GOOD_PID, keys=keys)
    with pytest.raises(CorruptFileError, match=why):
        check_legacy_framing(path)


def test_a_refusal_leaves_the_allowed_numpy_globals_out_of_its_list(tmp_path):
    # protocol 2 pickles arrays through numpy's dotted _reconstruct, dtype and ndarray: all allowed
    path = _dump(tmp_path / "mixed.pkl", {"args": argparse.Namespace(), "w": np.zeros(2)}, protocol=2)
    with pytest.raises(UnsafeFileError, match=r"holds a dict with argparse\.Namespace in it; loading"):
        load_torch_file(path)


def test_a_failed_write_whose_cleanup_also_fails_raises_the_write_error(tmp_path, monkeypatch):
    def rm_fails(path, **kwargs):
        raise OSError("read-only")

    monkeypatch.setattr(PathManager, "rm", rm_fails)

    def fails(f):
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        atomic_write(str(tmp_path / "w.bin"), fails)


def test_syncing_a_folder_that_cannot_be_opened_or_synced_is_skipped(tmp_path, monkeypatch):
    assert _fsync_dir(str(tmp_path / "missing")) is None

    def fsync_fails(fd):
        raise OSError("not supported")

    monkeypatch.setattr(os, "fsync", fsync_fails)
    assert _fsync_dir(str(tmp_path)) is None


def test_an_unreadable_zip_directory_is_refused_as_damaged(tmp_path):
    path = tmp_path / "z.pth"
    torch.save({"w": torch.ones(4)}, path)
    raw = path.read_bytes()
    at = raw.index(b"PK\x01\x02")  # the first central directory entry's signature
    path.write_bytes(raw[:at] + b"XX" + raw[at + 2:])
    with pytest.raises(CorruptFileError, match=r"z\.pth is damaged: its zip container cannot be read"):
        verify_integrity(str(path))


def test_long_persistent_ids_are_cut_to_80_characters_in_the_message(tmp_path):
    path = _handmade_legacy_file(tmp_path / "long.pth", ("x" * 100,))
    with pytest.raises(CorruptFileError, match=r"unknown persistent id \('x{78}\) \(legacy torch\.save"):
        check_legacy_framing(path)
    path = _handmade_legacy_file(tmp_path / "long2.pth", ("storage", "x" * 100, "0", "cpu", 3, None))
    with pytest.raises(CorruptFileError, match=r"malformed storage id \('storage', 'x{67}\) \(legacy"):
        check_legacy_framing(path)


def test_four_foreign_classes_name_three_and_one_more(tmp_path):
    objects = {"a": argparse.Namespace(), "b": collections.Counter("ab"), "c": fractions.Fraction(1, 3),
               "d": decimal.Decimal("1.5")}
    path = _dump(tmp_path / "four.pkl", objects)
    with pytest.raises(UnsafeFileError, match=r"fractions\.Fraction and 1 more in it"):
        load_torch_file(path)


def test_nine_checkpoints_in_a_folder_name_eight_and_one_more(tmp_path):
    names = [f"m{i}.pth" for i in range(9)]
    for n in names:
        (tmp_path / n).write_bytes(b"")
    assert not_a_file_message(str(tmp_path)).endswith(f"{', '.join(names[:8])} and 1 more")


def test_a_damaged_plain_pickle_is_refused_saying_what_is_certain(tmp_path):
    whole = pickle.dumps({"args": argparse.Namespace(), "rest": list(range(200))}, protocol=2)  # unframed
    path = tmp_path / "cut.pkl"
    path.write_bytes(whole[: len(whole) // 2])  # the foreign global comes first, the end is missing
    with pytest.raises(UnsafeFileError, match=r"holds a Python object with objects other than arrays in it"):
        load_torch_file(str(path))


def test_a_legacy_file_refusal_names_the_global_from_torchs_message(tmp_path):
    path = tmp_path / "legacy_args.pth"
    torch.save({"args": argparse.Namespace(), "w": torch.ones(1)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeFileError, match=r"beyond tensors and arrays \(argparse\.Namespace\); unpick"):
        load_torch_file(str(path))
