"""No loading path runs code stored in a file without the explicit flag; damaged weight files are
refused naming them; the converter never leaves a half-written or destroyed output."""

from __future__ import annotations

import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from d2ssl.checkpoint import convert_checkpoint, to_detectron2
from d2ssl.checkpoint.export import ExportError
from d2ssl.checkpoint.load import WeightsLoadError, load_weights_init, read_checkpoint
from d2ssl.engine.checkpointer import AtomicCheckpointer, CheckpointLoadError
from d2ssl.engine.detection import prepare_init_checkpoint
from d2ssl.modeling.backbone import build_resnet_trunk
from d2ssl.modeling.meta_arch import SSLMetaArch


class _WritesMarker:
    """Unpickling this object runs ``open(marker, "w")``: what a malicious checkpoint could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.fixture
def evil_files(tmp_path, tv_resnet18) -> tuple[dict[str, Path], Path]:
    """A torch.save file and a detectron2-style .pkl holding real ResNet weights and a marker writer."""
    marker = tmp_path / "marker"
    pth, pkl = tmp_path / "evil.pth", tmp_path / "evil.pkl"
    torch.save({"state_dict": tv_resnet18.state_dict(), "extra": _WritesMarker(marker)}, pth)
    zoo = to_detectron2(tv_resnet18.state_dict())
    with open(pkl, "wb") as f:
        pickle.dump({**zoo, "extra": _WritesMarker(marker)}, f)
    return {"pth": pth, "pkl": pkl}, marker


def _trunk_model() -> nn.Module:
    torch.manual_seed(0)
    return SSLMetaArch(build_resnet_trunk(18))


@pytest.mark.parametrize("kind", ["pth", "pkl"])
def test_no_loading_path_unpickles_code_without_the_flag(evil_files, tmp_path, kind):
    files, marker = evil_files
    evil = files[kind]
    refused = rf"refusing to unpickle .*evil\.{kind}.*builtins\.exec.*--allow-pickle.*ALLOW_PICKLE=True"
    with pytest.raises(WeightsLoadError, match=refused):  # weights_init
        load_weights_init(_trunk_model(), {"PARAMS_FILE": str(evil)})
    with pytest.raises(WeightsLoadError, match=refused):  # converter
        convert_checkpoint(str(evil), str(tmp_path / "out.pth"), to="torchvision")
    with pytest.raises(CheckpointLoadError, match=refused):  # train.init_checkpoint
        AtomicCheckpointer(_trunk_model()).resume_or_load(str(evil), resume=False)
    if kind == "pth":
        with pytest.raises(WeightsLoadError, match=refused):  # detection's init_checkpoint conversion
            prepare_init_checkpoint(str(evil), str(tmp_path / "detection"))
        run = tmp_path / "run"  # resume: last_checkpoint names the file
        run.mkdir()
        (run / "model_final.pth").write_bytes(evil.read_bytes())
        (run / "last_checkpoint").write_text("model_final.pth")
        with pytest.raises(CheckpointLoadError, match=refused.replace("evil", "model_final")):
            AtomicCheckpointer(_trunk_model(), str(run), optimizer=torch.optim.SGD(
                _trunk_model().parameters(), lr=0.1)).resume_or_load("", resume=True)
    assert not marker.exists()
    assert not (tmp_path / "out.pth").exists()
    # The file really runs code: with the flag, it does.
    read_checkpoint(str(evil), allow_pickle=True)
    assert marker.exists()


def test_weights_init_flag_allows_full_unpickling(evil_files):
    files, marker = evil_files
    report = load_weights_init(_trunk_model(), {"PARAMS_FILE": str(files["pth"]), "ALLOW_PICKLE": True})
    assert marker.exists() and len(report.loaded) > 0


def test_detectron2_model_zoo_pickles_still_load(tmp_path, tv_resnet18):
    # Protocol 2 with latin1, as detectron2's (Python 2 era) model zoo files: numpy arrays only.
    zoo = to_detectron2(tv_resnet18.state_dict())
    with open(tmp_path / "zoo.pkl", "wb") as f:
        pickle.dump(zoo, f, protocol=2)
    loaded = read_checkpoint(str(tmp_path / "zoo.pkl"))
    assert isinstance(loaded["model"]["stem.conv1.weight"], np.ndarray)
    np.testing.assert_array_equal(loaded["model"]["stem.conv1.weight"], zoo["model"]["stem.conv1.weight"])
    model = _trunk_model()
    AtomicCheckpointer(model).resume_or_load(str(tmp_path / "zoo.pkl"), resume=False)
    expected = torch.from_numpy(zoo["model"]["stem.conv1.weight"])
    assert torch.equal(model.trunk.stem.conv1.weight, expected)


def _flip_tensor_bytes(path: Path, count: int = 64) -> None:
    with zipfile.ZipFile(path) as archive:
        record = max(archive.infolist(), key=lambda r: r.file_size)
    raw = bytearray(path.read_bytes())
    offset = record.header_offset
    name_length, extra_length = struct.unpack("<HH", raw[offset + 26: offset + 30])
    start = offset + 30 + name_length + extra_length + record.file_size // 2
    raw[start: start + count] = bytes(b ^ 0xFF for b in raw[start: start + count])
    path.write_bytes(bytes(raw))


def test_flipped_bytes_in_a_weights_file_are_refused_naming_it(tmp_path, tv_resnet18):
    path = tmp_path / "torchvision.pth"
    torch.save(tv_resnet18.state_dict(), path)
    _flip_tensor_bytes(path)
    damaged = r"torchvision\.pth is damaged: record .* fails its CRC32"
    with pytest.raises(WeightsLoadError, match=damaged):
        load_weights_init(_trunk_model(), {"PARAMS_FILE": str(path)})
    with pytest.raises(WeightsLoadError, match=damaged):
        convert_checkpoint(str(path), str(tmp_path / "out.pkl"), to="detectron2")


def test_refused_conversion_leaves_an_existing_output_byte_identical(tmp_path, tv_resnet18, monkeypatch):
    good = tmp_path / "torchvision.pth"
    torch.save(tv_resnet18.state_dict(), good)
    outputs = {"detectron2": tmp_path / "r18.pkl", "torchvision": tmp_path / "r18.pth"}
    for to, output in outputs.items():
        convert_checkpoint(str(good), str(output), to=to)
        assert (tmp_path / f"{output.name}.sha256").read_text().split()[1] == output.name
    before = {to: output.read_bytes() for to, output in outputs.items()}
    # Refused before writing: an input without a ResNet.
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "not_a_resnet.pth")
    with pytest.raises(WeightsLoadError):
        convert_checkpoint(str(tmp_path / "not_a_resnet.pth"), str(outputs["detectron2"]), to="detectron2")
    # Refused by the export itself: torchvision has no ResNet with a 16-channel stem.
    torch.save(build_resnet_trunk(18, base_channels=16).state_dict(), tmp_path / "narrow.pth")
    with pytest.raises(ExportError, match="16-channel stem"):
        convert_checkpoint(str(tmp_path / "narrow.pth"), str(outputs["torchvision"]), to="torchvision")

    # Failing halfway through the write (a full disk): the old output stays, no temporary file is left.
    def disk_full(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pickle, "dump", disk_full)
    with pytest.raises(OSError, match="No space left"):
        convert_checkpoint(str(good), str(outputs["detectron2"]), to="detectron2")
    assert {to: output.read_bytes() for to, output in outputs.items()} == before
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("r18"))
    assert left == ["r18.pkl", "r18.pkl.sha256", "r18.pth", "r18.pth.sha256"]


def test_converter_tool_refuses_with_one_message_and_keeps_the_output(tmp_path):
    output = tmp_path / "out.pth"
    output.write_bytes(b"previous content")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "not_a_resnet.pth")
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-W", "ignore", str(repo / "tools/convert_checkpoint.py"),
         str(tmp_path / "not_a_resnet.pth"), str(output), "--to", "torchvision"],
        capture_output=True, text=True, timeout=120, cwd=repo,
    )
    assert result.returncode == 1
    first = result.stderr.strip().splitlines()[0]
    assert first.startswith("error: ") and "not_a_resnet.pth" in first, result.stderr
    assert "Traceback" not in result.stderr
    assert output.read_bytes() == b"previous content"
