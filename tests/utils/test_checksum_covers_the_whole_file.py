"""The ``.sha256`` check covers every byte of a file, not only what fits in one read: files larger
than two of ``sha256_of``'s read chunks, damaged after the first chunk, are refused naming them. For a
``.pkl`` (converted detectron2 weights) the checksum is the only protection."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from d2ssl.checkpoint.load import WeightsLoadError, read_checkpoint
from d2ssl.engine.checkpointer import AtomicCheckpointer, CheckpointLoadError
from d2ssl.utils.safe_io import READ_CHUNK, atomic_write, sha256_of

SIZE = 2 * READ_CHUNK + 12_345  # more than two chunks, the last one partial


def test_sha256_of_equals_hashlib_over_the_whole_multi_chunk_file(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, SIZE, dtype=np.uint8).tobytes()
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_of(str(path)) == hashlib.sha256(data).hexdigest()  # independent oracle
    # Each chunk counts: a change in the last, partial one changes the digest.
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert sha256_of(str(path)) != hashlib.sha256(data).hexdigest()


def _weights(elements: int) -> np.ndarray:
    return np.random.default_rng(1).standard_normal(elements).astype(np.float32)


def _write(path: Path, kind: str) -> None:
    """A weights file of more than two read chunks with its .sha256, written as d2ssl writes them."""
    weights = _weights(SIZE // 4 + 1)
    if kind == "pth":
        state = {"fc.weight": torch.from_numpy(weights)}
        atomic_write(str(path), lambda f: torch.save(state, f), checksum=True)
    else:  # detectron2 model-zoo layout, as the converter writes it
        zoo = {"model": {"fc.weight": weights}, "__author__": "d2ssl", "matching_heuristics": True}
        atomic_write(str(path), lambda f: pickle.dump(zoo, f), checksum=True)


def _flip_byte_after_the_first_chunk(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    assert len(raw) > 2 * READ_CHUNK
    raw[READ_CHUNK + READ_CHUNK // 2] ^= 0x01  # inside the array's data
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("kind", ["pth", "pkl"])
def test_a_byte_flipped_after_the_first_read_chunk_is_refused(tmp_path, kind):
    path = tmp_path / f"weights.{kind}"
    _write(path, kind)
    intact = read_checkpoint(str(path))
    weights = intact["model"]["fc.weight"] if kind == "pkl" else intact["fc.weight"].numpy()
    np.testing.assert_array_equal(weights, _weights(SIZE // 4 + 1))
    _flip_byte_after_the_first_chunk(path)
    damaged = rf"{path} is damaged: its sha256 \(.*\) differs from the one written beside it"
    with pytest.raises(WeightsLoadError, match=damaged):  # weights_init, converter
        read_checkpoint(str(path))
    with pytest.raises(CheckpointLoadError, match=damaged):  # train.init_checkpoint
        AtomicCheckpointer(torch.nn.Linear(1, 1)).resume_or_load(str(path), resume=False)


def test_a_file_rewritten_without_a_checksum_loses_the_old_one(tmp_path):
    from d2ssl.utils.safe_io import atomic_write, checksum_path, verify_integrity

    path = str(tmp_path / "weights.pth")
    atomic_write(path, lambda f: torch.save({"w": torch.zeros(3)}, f), checksum=True)
    atomic_write(path, lambda f: torch.save({"w": torch.ones(3)}, f))  # e.g. a file converted again
    assert not os.path.exists(checksum_path(path))
    verify_integrity(path)  # not refused as damaged by a checksum of the old content


def test_an_in_memory_buffer_without_a_file_descriptor_is_written(tmp_path, monkeypatch):
    import io

    from d2ssl.utils import safe_io

    written = {}

    class Buffer(io.BytesIO):  # what a remote store's handler may return: fileno() raises
        def close(self):
            written["bytes"] = self.getvalue()
            super().close()

    real_open = safe_io.PathManager.open
    def open_tmp_in_memory(p, mode="r", **kw):
        return Buffer() if p.endswith(".tmp") else real_open(p, mode, **kw)

    monkeypatch.setattr(safe_io.PathManager, "open", open_tmp_in_memory)
    monkeypatch.setattr(safe_io, "_replace", lambda tmp, path: None)
    safe_io.atomic_write(str(tmp_path / "x.bin"), lambda f: f.write(b"abc"))
    assert written["bytes"] == b"abc"
