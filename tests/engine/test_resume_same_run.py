"""Resume continues the run in the folder, from its own checkpoints only, latest stored iteration
first; a file that is damaged, missing, of another architecture, of another run or without trainer
state is skipped (or refused before anything is loaded)."""

from __future__ import annotations

import logging
import pickle
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from d2ssl.engine.checkpointer import AtomicCheckpointer, CheckpointLoadError
from d2ssl.engine.run_folder import Run, read_run_file

COMMON = ("dataloader.train.dataset.names=digits_train", "dataloader.train.total_batch_size=4",
          "train.checkpointer.period=2", "train.log_period=2")


@pytest.fixture(autouse=True)
def _logs_reach_caplog(monkeypatch):
    # detectron2's setup_logger (run by any in-process tool test) stops these loggers propagating.
    for name in ("d2ssl", "fvcore"):
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)


def _model(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 16), nn.BatchNorm1d(16))


def _checkpointer(model: nn.Module, out: Path, run: Run | None = None) -> AtomicCheckpointer:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return AtomicCheckpointer(model, str(out), optimizer=optimizer, run=run)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _equal(model: nn.Module, expected: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


def _flip_tensor_bytes(path: Path, count: int = 64) -> None:
    """Flips bytes in the middle of the largest record (tensor data) of a torch zip file: the file's
    header (run id, iteration) still reads, its checksum and CRC do not match."""
    with zipfile.ZipFile(path) as archive:
        record = max(archive.infolist(), key=lambda r: r.file_size)
    raw = bytearray(path.read_bytes())
    offset = record.header_offset
    name_length, extra_length = struct.unpack("<HH", raw[offset + 26: offset + 30])
    start = offset + 30 + name_length + extra_length + record.file_size // 2
    raw[start: start + count] = bytes(b ^ 0xFF for b in raw[start: start + count])
    path.write_bytes(bytes(raw))


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _legacy_run(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A folder written before run ids: model_0000001 (iteration 1), model_0000003 (iteration 3)."""
    model = _model()
    out = tmp_path / "run"
    checkpointer = _checkpointer(model, out)
    checkpointer.save("model_0000001", iteration=1)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    checkpointer.save("model_0000003", iteration=3)
    return out, _snapshot(model)


def test_resume_skips_a_leftover_of_another_run_and_resumes_this_runs_latest(tiny_config, caplog,
                                                                             monkeypatch):
    """Run A (6 iterations) and run B (4, other seed and lr); A's latest periodic checkpoint lies in B's
    folder (a leftover), B's model_final.pth is damaged: B resumes from its own model_0000003."""
    from d2ssl.engine import train_loop
    from d2ssl.engine.train_loop import do_train

    a = tiny_config("jigsaw", *COMMON, "train.max_iter=6", "train.seed=1")
    a.train.output_dir = str(Path(a.train.output_dir).parent / "a")
    do_train(a)
    b = tiny_config("jigsaw", *COMMON, "train.max_iter=4", "train.seed=2", "optimizer.lr=0.01")
    do_train(b)
    out_a, out_b = Path(a.train.output_dir), Path(b.train.output_dir)
    for name in ("model_0000005.pth", "model_0000005.pth.sha256"):
        shutil.copy(out_a / name, out_b / name)
    b_id = read_run_file(str(out_b))["run_id"]
    own = torch.load(out_b / "model_0000003.pth", weights_only=True)
    assert own["run"]["id"] == b_id and own["iteration"] == 3
    _flip_tensor_bytes(out_b / "model_final.pth")

    caplog.set_level(logging.INFO, logger="fvcore")
    trainers = []
    build_trainer = train_loop.build_trainer
    monkeypatch.setattr(train_loop, "build_trainer", lambda *a, **k: trainers.append(build_trainer(*a, **k))
                        or trainers[-1])
    resumed = tiny_config("jigsaw", *COMMON, "train.max_iter=4", "train.seed=2", "optimizer.lr=0.01")
    do_train(resumed, resume=True)
    # Nothing was left to train after iteration 3: the model holds B's model_0000003.
    state = trainers[0].model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in own["model"].items())
    leftover = torch.load(out_a / "model_0000005.pth", weights_only=True)["model"]
    assert not all(torch.equal(leftover[k], v) for k, v in own["model"].items())
    warnings = _warnings(caplog)
    assert any("model_0000005.pth" in w and "belongs to run" in w for w in warnings), warnings
    assert any(f"Resuming run {b_id} from the previous complete checkpoint" in w and "model_0000003.pth" in w
               and "(iteration 3)" in w for w in warnings), warnings


def test_checkpoints_of_another_run_are_never_resumed_from(tmp_path):
    out = tmp_path / "run"
    mine, other = Run("a" * 32, str(out)), Run("b" * 32, str(out))
    model = _model()
    _checkpointer(model, out, run=mine).save("model_0000001", iteration=1)
    expected = _snapshot(model)
    _checkpointer(_model(seed=5), out, run=other).save("model_0000009", iteration=9)
    resumed = _model(seed=7)
    extra = _checkpointer(resumed, out, run=mine).resume_or_load("", resume=True)
    assert extra["iteration"] == 1 and _equal(resumed, expected)
    (out / "model_0000001.pth").unlink()
    with pytest.raises(CheckpointLoadError, match=rf"cannot resume run {'a' * 32}.*model_0000009\.pth "
                                                  rf"belongs to run {'b' * 32}.*--start-over"):
        _checkpointer(_model(), out, run=mine).resume_or_load("", resume=True)


def test_a_leftover_of_another_architecture_is_skipped_for_the_runs_older_checkpoint(tmp_path, caplog):
    out, latest = _legacy_run(tmp_path)
    wider = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32))
    _checkpointer(wider, out).save("model_0000009", iteration=9)  # last_checkpoint names it
    resumed = _model(seed=7)
    extra = _checkpointer(resumed, out).resume_or_load("", resume=True)
    assert extra["iteration"] == 3 and _equal(resumed, latest)
    assert any("model_0000009.pth" in w and "another model or architecture" in w and "model_0000003.pth" in w
               for w in _warnings(caplog)), _warnings(caplog)


@pytest.mark.parametrize("tag", ["model_0000009.pth", ""], ids=["missing-target", "empty"])
def test_last_checkpoint_naming_no_file_falls_back_to_the_runs_checkpoints(tmp_path, caplog, tag):
    out, latest = _legacy_run(tmp_path)
    (out / "last_checkpoint").write_text(tag)
    resumed = _model(seed=7)
    extra = _checkpointer(resumed, out).resume_or_load("", resume=True)
    assert extra["iteration"] == 3 and _equal(resumed, latest)
    assert any("which is not a file" in w and "model_0000003.pth" in w for w in _warnings(caplog))


def _caffe2_pickle(path: Path, model: nn.Module) -> None:
    """A Caffe2-style .pkl (``blobs``) with the model's tensor names: detectron2 loads it by name
    heuristics, without the trainer-state check of a .pth."""
    with open(path, "wb") as f:
        pickle.dump({"blobs": {k: v.numpy() + 3.0 for k, v in model.state_dict().items()
                               if v.is_floating_point()}}, f)


def test_a_pkl_named_by_last_checkpoint_is_refused_before_loading(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    _caffe2_pickle(out / "model_final.pkl", _model())
    (out / "last_checkpoint").write_text("model_final.pkl")
    model = _model(seed=7)
    before = _snapshot(model)
    refused = r"model_final\.pkl holds weights only.*train\.init_checkpoint"
    with pytest.raises(CheckpointLoadError, match=refused):
        _checkpointer(model, out).resume_or_load("", resume=True)
    assert _equal(model, before)
    # With a training checkpoint of the run beside it, resume takes that one.
    out2, latest = _legacy_run(tmp_path / "second")
    _caffe2_pickle(out2 / "model_final.pkl", _model())
    (out2 / "last_checkpoint").write_text("model_final.pkl")
    extra = _checkpointer(model, out2).resume_or_load("", resume=True)
    assert extra["iteration"] == 3 and _equal(model, latest)


def test_resume_ranks_by_the_stored_iteration_not_the_name(tmp_path):
    out = tmp_path / "run"
    run = Run("c" * 32, str(out))
    model = _model()
    checkpointer = _checkpointer(model, out, run=run)
    checkpointer.save("model_0000050", iteration=5)  # a name that overstates its iteration
    with torch.no_grad():
        model[0].weight.add_(1.0)
    checkpointer.save("model_0000007", iteration=7)
    latest = _snapshot(model)
    (out / "last_checkpoint").write_text("missing.pth")
    resumed = _model(seed=7)
    assert _checkpointer(resumed, out, run=run).resume_or_load("", resume=True)["iteration"] == 7
    assert _equal(resumed, latest)


def test_resume_with_another_max_iter_warns_that_the_schedule_stretches(tiny_config, caplog):
    from d2ssl.engine.train_loop import do_train

    do_train(tiny_config("jigsaw", *COMMON, "train.max_iter=2"))
    do_train(tiny_config("jigsaw", *COMMON, "train.max_iter=2"), resume=True)
    assert not any("stretched" in w for w in _warnings(caplog))
    do_train(tiny_config("jigsaw", *COMMON, "train.max_iter=4"), resume=True)
    stretched = [w for w in _warnings(caplog) if "stretched" in w]
    assert len(stretched) == 1, _warnings(caplog)
    assert "train.max_iter=4" in stretched[0] and "max_iter=2" in stretched[0]
    assert "train.init_checkpoint=" in stretched[0] and "model_final.pth" in stretched[0]


def test_resume_with_another_config_warns_that_the_run_mixes_two_configs(tiny_config, caplog):
    from d2ssl.engine.train_loop import do_train

    do_train(tiny_config("jigsaw", *COMMON, "train.max_iter=2"))
    do_train(tiny_config("jigsaw", *COMMON, "train.max_iter=2"), resume=True)
    assert not any("differs from the one it was trained with" in w for w in _warnings(caplog))
    do_train(tiny_config("jigsaw", *COMMON, "train.max_iter=2", "optimizer.lr=0.5"), resume=True)
    mixed = [w for w in _warnings(caplog) if "differs from the one it was trained with" in w]
    assert len(mixed) == 1, _warnings(caplog)
    assert "--start-over" in mixed[0]
