"""pycls ``.pyth`` files go through d2ssl's safe loader like every other file: their code does not run,
even with ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` (which made detectron2's bare ``torch.load`` unpickle
in full), and a clean one still loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from d2ssl.engine.checkpointer import AtomicCheckpointer, CheckpointLoadError


class _WritesMarker:
    """Unpickling this object runs ``open(marker, "w")``: what a malicious checkpoint could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8))


def test_a_pyth_payload_does_not_run_even_with_torch_force_no_weights_only_load(tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pyth"
    torch.save({"model_state": _model().state_dict(), "extra": _WritesMarker(marker)}, evil)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    model = _model()
    with pytest.raises(CheckpointLoadError, match=r"refusing to unpickle .*evil\.pyth.*--allow-pickle"):
        AtomicCheckpointer(model).resume_or_load(str(evil), resume=False)
    assert not marker.exists()
    # The payload is live: a full unpickle runs it.
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_a_clean_pyth_still_loads_by_name_heuristics(tmp_path):
    source = _model()
    with torch.no_grad():
        source[0].weight.fill_(0.25)
    torch.save({"model_state": source.state_dict()}, tmp_path / "clean.pyth")
    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8))
    AtomicCheckpointer(model).resume_or_load(str(tmp_path / "clean.pyth"), resume=False)
    assert torch.equal(model[0].weight, source[0].weight)
