"""Atomic checkpoints, keeping the last K, and clear errors for files that do not fit."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from d2ssl.engine.checkpointer import AtomicCheckpointer, CheckpointLoadError

REPO = Path(__file__).resolve().parents[2]
FINAL = "model_final.pth"

# A child process saves model_a, changes the weights and saves again, and is killed by SIGKILL from
# inside that second save: halfway through writing the checkpoint bytes over model_a itself (as a
# resumed run rewrites model_final), or after a new model_b is complete but before last_checkpoint
# is switched to it.
CHILD = textwrap.dedent(
    """
    import io, os, signal, sys
    import torch
    from torch import nn
    from d2ssl.engine.checkpointer import AtomicCheckpointer

    out, kill_point, second = sys.argv[1], sys.argv[2], sys.argv[3]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.BatchNorm1d(64))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    checkpointer = AtomicCheckpointer(model, out, optimizer=optimizer)
    checkpointer.save("model_a", iteration=1)
    torch.save(model.state_dict(), os.path.join(out, "expected.pt"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if kill_point == "mid-write":
        real_save = torch.save

        def half_save(obj, f):
            buffer = io.BytesIO()
            real_save(obj, buffer)
            data = buffer.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            die()

        torch.save = half_save
    else:  # "before-tag": the checkpoint is renamed into place, last_checkpoint is not yet
        real_replace = os.replace

        def replace(src, dst):
            if dst.endswith("last_checkpoint"):
                die()
            real_replace(src, dst)

        os.replace = replace
    checkpointer.save(second, iteration=2)
    sys.exit(3)  # not reached
    """
)


def _model() -> nn.Module:
    torch.manual_seed(1)  # other weights than the child's
    return nn.Sequential(nn.Linear(64, 64), nn.BatchNorm1d(64))


@pytest.mark.parametrize("kill_point, second", [("mid-write", "model_a"), ("before-tag", "model_b")])
def test_kill_during_save_leaves_last_checkpoint_complete(tmp_path, kill_point, second):
    out = tmp_path / "out"
    out.mkdir()
    child = subprocess.run([sys.executable, "-W", "ignore", "-c", CHILD, str(out), kill_point, second],
                           capture_output=True, text=True, timeout=120, cwd=REPO)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert (out / "last_checkpoint").read_text() == "model_a.pth"
    if kill_point == "mid-write":
        # The kill really came mid-save: half a file sits under the temporary name only.
        assert 0 < (out / "model_a.pth.tmp").stat().st_size < (out / "model_a.pth").stat().st_size
    else:
        assert (out / "model_b.pth").exists()

    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    checkpointer = AtomicCheckpointer(model, str(out), optimizer=optimizer)
    extra = checkpointer.resume_or_load("", resume=True)
    assert extra["iteration"] == 1
    expected = torch.load(out / "expected.pt", weights_only=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def _train(tiny_config, *overrides: str) -> Path:
    from d2ssl.engine.train_loop import do_train

    cfg = tiny_config("jigsaw", "dataloader.train.dataset.names=digits_train",
                      "dataloader.train.total_batch_size=4", *overrides)
    do_train(cfg, resume=True)
    return Path(cfg.train.output_dir)


def test_keeps_the_last_k_checkpoints_across_a_resume(tiny_config):
    out = _train(tiny_config, "train.max_iter=6", "train.checkpointer.period=1",
                 "train.checkpointer.max_to_keep=2")
    assert sorted(p.name for p in out.glob("*.pth")) == ["model_0000004.pth", "model_0000005.pth", FINAL]
    # The resumed process deletes the checkpoints the first one wrote, keeping K in all.
    _train(tiny_config, "train.max_iter=9", "train.checkpointer.period=1", "train.checkpointer.max_to_keep=2")
    assert sorted(p.name for p in out.glob("*.pth")) == ["model_0000007.pth", "model_0000008.pth", FINAL]
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert not list(out.glob("*.tmp"))
    # Each kept checkpoint has its checksum; those of deleted ones are gone too.
    checksums = sorted(p.name for p in out.glob("*.sha256"))
    assert checksums == sorted(p.name + ".sha256" for p in out.glob("*.pth"))


def test_resume_into_another_architecture_is_an_error(tiny_config):
    out = _train(tiny_config, "train.max_iter=2", "train.checkpointer.period=1")
    # The same run with a wider head: detectron2 alone would skip the head and train on silently.
    with pytest.raises(CheckpointLoadError, match=r"model_final\.pth.*shapes differ for head\.per_tile"):
        _train(tiny_config, "train.max_iter=4", "model.head.per_tile.dims=[128,96]",
               "model.head.on_concat.dims=[384,24]")
    assert (out / "last_checkpoint").read_text() == "model_final.pth"


def _saved_run(tmp_path: Path, model: nn.Module, names=("model_0000001", "model_0000003")) -> Path:
    out = tmp_path / "run"
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    checkpointer = AtomicCheckpointer(model, str(out), optimizer=optimizer)
    for i, name in enumerate(names):
        checkpointer.save(name, iteration=i)
    return out


def _resume(model: nn.Module, out: Path) -> dict:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return AtomicCheckpointer(model, str(out), optimizer=optimizer).resume_or_load("", resume=True)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_untouched(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def _flip_tensor_bytes(path: Path, count: int = 64) -> None:
    """Flips ``count`` bytes in the middle of the largest record (tensor data) of a torch zip file."""
    with zipfile.ZipFile(path) as archive:
        record = max(archive.infolist(), key=lambda r: r.file_size)
    raw = bytearray(path.read_bytes())
    offset = record.header_offset
    name_length, extra_length = struct.unpack("<HH", raw[offset + 26: offset + 30])  # local file header
    start = offset + 30 + name_length + extra_length + record.file_size // 2
    raw[start: start + count] = bytes(b ^ 0xFF for b in raw[start: start + count])
    path.write_bytes(bytes(raw))


def _damage(path: Path, how: str) -> None:
    if how == "flipped":
        _flip_tensor_bytes(path)
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    else:
        path.write_bytes(b"\x00not a checkpoint" * 10)


def _two_checkpoints(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """model_0000001 (iteration 0), then other weights in model_0000003 (iteration 1)."""
    model = _model()
    out = tmp_path / "run"
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    checkpointer = AtomicCheckpointer(model, str(out), optimizer=optimizer)
    checkpointer.save("model_0000001", iteration=0)
    first = _snapshot(model)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    checkpointer.save("model_0000003", iteration=1)
    return out, first


@pytest.mark.parametrize("how", ["flipped", "truncated", "garbage"])
@pytest.mark.parametrize("checksum", [True, False], ids=["sha256", "zip-crc-only"])
def test_damaged_checkpoint_is_refused_and_resume_uses_the_previous_one(tmp_path, caplog, how, checksum):
    out, first = _two_checkpoints(tmp_path)
    assert (out / "model_0000003.pth.sha256").read_text().split()[1] == "model_0000003.pth"
    if not checksum:  # as a copy made without its .sha256: the zip container's CRCs still catch it
        (out / "model_0000003.pth.sha256").unlink()
    _damage(out / "model_0000003.pth", how)
    model = _model()
    extra = _resume(model, out)
    assert extra["iteration"] == 0  # model_0000001, not a start from scratch
    assert all(torch.equal(v, first[k]) for k, v in model.state_dict().items())
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("model_0000003.pth" in w and "previous complete checkpoint" in w and "model_0000001.pth" in w
               for w in warnings), warnings


def test_damaged_checkpoint_without_a_previous_one_is_an_error_naming_it(tmp_path):
    out, _ = _two_checkpoints(tmp_path)
    (out / "model_0000001.pth").unlink()
    _flip_tensor_bytes(out / "model_0000003.pth")
    model = _model()
    before = _snapshot(model)
    with pytest.raises(CheckpointLoadError, match=r"model_0000003\.pth is damaged: its sha256"):
        _resume(model, out)
    _assert_untouched(model, before)
    (out / "model_0000003.pth.sha256").unlink()
    with pytest.raises(CheckpointLoadError, match=r"model_0000003\.pth is damaged: record .* fails its CRC"):
        _resume(model, out)
    (out / "last_checkpoint").write_text("model_0000009.pth")
    with pytest.raises(CheckpointLoadError, match=r"names .*model_0000009\.pth.*not a file"):
        _resume(_model(), out)


def test_init_checkpoint_written_elsewhere_with_a_flipped_byte_is_refused(tmp_path):
    # A file not written by d2ssl (no .sha256): torch's zip container has a CRC32 per record.
    torch.save({"model": _model().state_dict()}, tmp_path / "foreign.pth")
    _flip_tensor_bytes(tmp_path / "foreign.pth")
    model = _model()
    before = _snapshot(model)
    with pytest.raises(CheckpointLoadError, match=r"foreign\.pth is damaged: record .* fails its CRC32"):
        AtomicCheckpointer(model).resume_or_load(str(tmp_path / "foreign.pth"), resume=False)
    _assert_untouched(model, before)


@pytest.mark.parametrize(
    "other, problem",
    [
        (lambda: nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32)),
         r"shapes differ for 0\.weight \(64, 64\)"),
        (lambda: nn.Sequential(nn.Linear(64, 64), nn.BatchNorm1d(64), nn.Linear(64, 2)),
         r"the model has tensors the file lacks: 2\.weight, 2\.bias"),
        (lambda: nn.Sequential(nn.Linear(64, 64)), r"the file has tensors the model lacks: 1\.weight"),
    ],
    ids=["other-shapes", "missing-keys", "unexpected-keys"],
)
def test_resume_refuses_another_architecture_before_loading_anything(tmp_path, other, problem):
    out = _saved_run(tmp_path, _model())
    model = other()
    before = _snapshot(model)
    with pytest.raises(CheckpointLoadError, match=rf"model_0000003\.pth.*another model.*{problem}"):
        _resume(model, out)
    _assert_untouched(model, before)


def test_resume_from_a_weights_only_file_is_an_error(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"model": _model().state_dict()}, out / "model_final.pth")
    (out / "last_checkpoint").write_text("model_final.pth")
    with pytest.raises(CheckpointLoadError, match=r"lacks \['optimizer'\].*not a training checkpoint"):
        _resume(_model(), out)


def test_init_checkpoint_may_cover_part_of_the_model_but_must_fit_it(tmp_path):
    torch.manual_seed(2)
    trunk = nn.Linear(64, 64)
    torch.save({"model": {"0.weight": trunk.weight.detach(), "0.bias": trunk.bias.detach()}},
               tmp_path / "trunk.pth")
    torch.save({"model": {"0.weight": torch.zeros(8, 8)}}, tmp_path / "small.pth")
    torch.save({"model": {"encoder.conv1.weight": torch.zeros(8)}}, tmp_path / "foreign.pth")

    model = _model()
    AtomicCheckpointer(model).resume_or_load(str(tmp_path / "trunk.pth"), resume=False)
    assert torch.equal(model[0].weight, trunk.weight)  # the tensors it has are loaded, the rest kept
    before = _snapshot(model)
    with pytest.raises(CheckpointLoadError, match=r"small\.pth.*shapes differ for 0\.weight \(8, 8\)"):
        AtomicCheckpointer(model).resume_or_load(str(tmp_path / "small.pth"), resume=False)
    with pytest.raises(CheckpointLoadError, match=r"foreign\.pth.*shares no tensor name.*encoder\.conv1"):
        AtomicCheckpointer(model).resume_or_load(str(tmp_path / "foreign.pth"), resume=False)
    with pytest.raises(CheckpointLoadError, match=r"absent\.pth.*does not exist"):
        AtomicCheckpointer(model).resume_or_load(str(tmp_path / "absent.pth"), resume=False)
    _assert_untouched(model, before)


@pytest.mark.parametrize("final_iteration, expected", [(5, "model_0000007.pth"), (8, FINAL)])
def test_resume_fallback_takes_the_latest_training_checkpoint_never_model_best(
        tmp_path, caplog, final_iteration, expected):
    # A copied folder: the oldest checkpoint has the newest modification time, and the linear benchmark's
    # model_best.pth (written without touching last_checkpoint) is newer than every training checkpoint.
    model = _model()
    out = tmp_path / "run"
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    checkpointer = AtomicCheckpointer(model, str(out), optimizer=optimizer)
    weights = {}
    for iteration, name in ((1, "model_0000001"), (7, "model_0000007"), (final_iteration, "model_final"),
                            (9, "model_0000009"), (9, "model_best")):
        with torch.no_grad():
            model[0].weight.fill_(float(iteration) + (0.5 if name == "model_best" else 0.0))
        checkpointer.save(name, iteration=iteration)
        weights[f"{name}.pth"] = _snapshot(model)
    (out / "last_checkpoint").write_text("model_0000009.pth")
    future = (out / "model_best.pth").stat().st_mtime + 100
    os.utime(out / "model_0000001.pth", (future, future))
    _damage(out / "model_0000009.pth", "flipped")

    resumed = _model()
    extra = _resume(resumed, out)
    assert extra["iteration"] == {"model_0000007.pth": 7, FINAL: final_iteration}[expected]
    assert all(torch.equal(v, weights[expected][k]) for k, v in resumed.state_dict().items())
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert not any("model_best.pth" in w for w in warnings), warnings
    # With every training checkpoint damaged, resume fails rather than continuing from model_best.pth.
    for name in ("model_0000001.pth", "model_0000007.pth", FINAL):
        _damage(out / name, "garbage")
    with pytest.raises(CheckpointLoadError, match=r"model_final\.pth"):  # the last one tried
        _resume(_model(), out)
