"""The ``.sha256`` check covers every byte of a file, not only what fits in one read: files larger
than two of ``sha256_of``'s read chunks, damaged after the first chunk, are refused naming them. For a
``.pkl`` (converted detectron2 weights) the checksum is the only protection."""

from __future__ import annotations

import hashlib
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
