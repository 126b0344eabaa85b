"""A non-finite loss stops training, names the iteration and the loss terms, and writes nothing over
the last good checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from detectron2.config import LazyCall as L
from detectron2.engine import hooks as d2_hooks
from detectron2.utils.events import get_event_storage
from torch import nn

from d2ssl.engine.checkpointer import AtomicCheckpointer
from d2ssl.engine.train_loop import do_train


class NaNLossAt(nn.Module):
    """Wraps a model; its losses become NaN at one iteration (as after an overflow in the loss)."""

    def __init__(self, model: nn.Module, iteration: int):
        super().__init__()
        self.model = model
        self.iteration = iteration

    def forward(self, batched_inputs):
        losses = self.model(batched_inputs)
        if self.training and get_event_storage().iter == self.iteration:
            losses = {k: v * float("nan") for k, v in losses.items()}
        return losses


def _train_with_nan_at(tiny_config, iteration: int, max_iter: int) -> Path:
    cfg = tiny_config("jigsaw", "dataloader.train.dataset.names=digits_train",
                      "dataloader.train.total_batch_size=4", f"train.max_iter={max_iter}",
                      "train.checkpointer.period=2")
    cfg.model = L(NaNLossAt)(model=cfg.model, iteration=iteration)
    message = rf"(?s)iteration={iteration}\b.*'loss_jigsaw': (np\.float64\()?nan"
    with pytest.raises(FloatingPointError, match=message):
        do_train(cfg, resume=False)
    return Path(cfg.train.output_dir)


def _assert_last_good(out: Path, expected_files: list[str], last: str, last_iteration: int) -> None:
    assert sorted(p.name for p in out.glob("*.pth")) == expected_files
    assert (out / "last_checkpoint").read_text() == last
    good = torch.load(out / last, map_location="cpu", weights_only=True)
    assert good["iteration"] == last_iteration
    assert all(torch.isfinite(v).all() for v in good["model"].values() if v.is_floating_point())


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_config):
    out = _train_with_nan_at(tiny_config, iteration=4, max_iter=8)
    _assert_last_good(out, ["model_0000001.pth", "model_0000003.pth"], "model_0000003.pth", 3)


def test_nan_at_the_last_iteration_writes_no_final_checkpoint(tiny_config, monkeypatch):
    # Some detectron2 versions save model_final in PeriodicCheckpointer.after_train whenever
    # iter + 1 >= max_iter, also after an exception: give the base class that behaviour here.
    def after_train(self):
        if self.trainer.iter + 1 >= self.trainer.max_iter:
            self.checkpointer.save(f"{self.file_prefix}_final", iteration=self.trainer.iter)

    monkeypatch.setattr(d2_hooks.PeriodicCheckpointer, "after_train", after_train, raising=False)
    out = _train_with_nan_at(tiny_config, iteration=5, max_iter=6)
    _assert_last_good(out, ["model_0000001.pth", "model_0000003.pth"], "model_0000003.pth", 3)


def test_checkpointer_refuses_to_save_non_finite_weights(tmp_path):
    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8))
    checkpointer = AtomicCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000001")
    with torch.no_grad():
        model[1].running_var[3] = float("inf")  # BatchNorm statistics count too
        model[0].weight[0, 0] = float("nan")
    message = r"model_0000002\.pth.*0\.weight, 1\.running_var.*model_0000001"
    with pytest.raises(FloatingPointError, match=message):
        checkpointer.save("model_0000002")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "last_checkpoint", "model_0000001.pth", "model_0000001.pth.sha256"
    ]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
