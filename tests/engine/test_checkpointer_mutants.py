"""What the mutation run of d2ssl/engine/checkpointer.py (benchmarks/mutation.py) found the other tests
let through: which of a run's checkpoints resume picks when iterations tie or cannot be read, that a
refusal names each file once, that an optimizer refusing its state is a resume error naming the file,
that Caffe2 pickles load without their momentum blobs, and the drop-in signatures."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from d2ssl.engine.checkpointer import AtomicCheckpointer, CheckpointLoadError
from d2ssl.engine.run_folder import Run

RUN = Run("d" * 32, "")


def _model(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))


def _checkpointer(model: nn.Module, out: Path, run: Run | None = RUN) -> AtomicCheckpointer:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return AtomicCheckpointer(model, str(out), optimizer=optimizer, run=run)


def _weights_filled(model: nn.Module, value: float) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        model[0].weight.fill_(value)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _resumed_weight(out: Path) -> float:
    """The value resume loads into model[0].weight (each file below holds one constant)."""
    model = _model(seed=7)
    _checkpointer(model, out).resume_or_load("", resume=True)
    values = model[0].weight.detach().unique()
    assert values.numel() == 1
    return float(values)


def test_at_the_same_stored_iteration_the_periodic_checkpoint_is_resumed_before_the_final_one(tmp_path):
    out = tmp_path / "run"
    model = _model()
    checkpointer = _checkpointer(model, out)
    _weights_filled(model, 1.0)
    checkpointer.save("model_0000005", iteration=5)
    _weights_filled(model, 2.0)
    checkpointer.save("model_final", iteration=5)
    (out / "last_checkpoint").write_text("missing.pth")  # resume ranks the run's files itself
    assert _resumed_weight(out) == 1.0


def test_a_checkpoint_whose_iteration_cannot_be_read_is_resumed_last_even_after_iteration_0(tmp_path):
    out = tmp_path / "run"
    model = _model()
    checkpointer = _checkpointer(model, out)
    _weights_filled(model, 1.0)
    checkpointer.save("model_0000000", iteration=0)
    _weights_filled(model, 2.0)
    checkpointer.save("model_final")  # trainer state, but no "iteration" stored
    (out / "last_checkpoint").write_text("missing.pth")
    assert _resumed_weight(out) == 1.0


def test_a_refusal_names_the_file_last_checkpoint_points_at_once(tmp_path):
    out = tmp_path / "run"
    other = Run("e" * 32, str(out))
    _checkpointer(_model(), out, run=other).save("model_0000009", iteration=9)  # last_checkpoint names it
    with pytest.raises(CheckpointLoadError) as refused:
        _checkpointer(_model(), out).resume_or_load("", resume=True)
    assert str(refused.value).count("model_0000009.pth belongs to run") == 1, str(refused.value)


def test_an_optimizer_that_refuses_its_saved_state_is_a_resume_error_naming_the_file(tmp_path):
    out = tmp_path / "run"
    _checkpointer(_model(), out).save("model_0000001", iteration=1)  # one parameter group
    model = _model()
    groups = [{"params": model[0].parameters()}, {"params": model[1].parameters()}]
    two_groups = torch.optim.SGD(groups, lr=0.1)
    with pytest.raises(CheckpointLoadError, match=r"cannot resume from .*model_0000001\.pth: ValueError"):
        AtomicCheckpointer(model, str(out), optimizer=two_groups, run=RUN).resume_or_load("", resume=True)


def _write_foreign(path: Path, layout: str, state: dict[str, torch.Tensor]) -> None:
    arrays = {k: v.numpy() for k, v in state.items()}
    if layout == "caffe2-detection":  # Detectron1 detection files: the weights under "blobs"
        with open(path, "wb") as f:
            pickle.dump({"blobs": {**arrays, "0.weight_momentum": arrays["0.weight"] * 0.0 - 1.0}}, f)
    elif layout == "caffe2-imagenet":  # Caffe2 ImageNet files: the weights at the top level
        with open(path, "wb") as f:
            pickle.dump({**arrays, "0.weight_momentum": arrays["0.weight"] * 0.0 - 1.0}, f)
    elif layout == "detectron2-zoo":  # detectron2's own model zoo: "model" and "__author__", exact names
        with open(path, "wb") as f:
            pickle.dump({"model": arrays, "__author__": "detectron2"}, f)
    else:  # pycls
        torch.save({"model_state": {**state, "1.num_batches_tracked": torch.tensor(5)}}, path)


@pytest.mark.parametrize("layout, suffix", [("caffe2-detection", ".pkl"), ("caffe2-imagenet", ".pkl"),
                                            ("detectron2-zoo", ".pkl"), ("pycls", ".pyth")])
def test_foreign_files_initialise_the_model_with_their_weights_and_nothing_else(tmp_path, layout, suffix):
    source = _model()
    # The parameters only (Caffe2's name conversion spells BatchNorm's running_mean otherwise), + 3.
    state = {k: v.detach() + 3.0 for k, v in source.named_parameters()}
    path = tmp_path / f"weights{suffix}"
    _write_foreign(path, layout, state)
    torch.manual_seed(7)
    # Caffe2 and pycls files are placed by name heuristics, so their names may lack the model's outer
    # prefix; a detectron2 zoo file is loaded by its exact names.
    target = _model(seed=7) if layout == "detectron2-zoo" else nn.Sequential(_model(seed=7))
    prefix = "" if layout == "detectron2-zoo" else "0."
    counter = target.state_dict()[f"{prefix}1.num_batches_tracked"].clone()
    AtomicCheckpointer(target).resume_or_load(str(path), resume=False)
    for key, value in target.named_parameters():
        assert torch.equal(value.detach(), state[key[len(prefix):]]), key
    # Optimizer blobs and BatchNorm's counter are not weights: the model's own counter stays.
    assert torch.equal(target.state_dict()[f"{prefix}1.num_batches_tracked"], counter)


def _same(a: object, b: object) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (np.ndarray, torch.Tensor)) or isinstance(b, (np.ndarray, torch.Tensor)):
        return type(a) is type(b) and np.array_equal(np.asarray(a), np.asarray(b))
    return a == b


@pytest.mark.parametrize("content", [
    {"model": {"w": np.ones(2)}, "__author__": "detectron2"},
    {"model": {"w": np.ones(2)}},  # no author: a Caffe2 file with a blob named "model"
    {"__author__": "x", "w": np.ones(2), "w_momentum": np.zeros(2)},  # no model: Caffe2 blobs
    {"blobs": {"w": np.ones(2), "w_momentum": np.zeros(2)}, "other": 1},
    {"w": np.ones(2), "b_momentum": np.zeros(2)},
], ids=["zoo", "model-no-author", "author-no-model", "blobs", "imagenet"])
def test_a_pkl_reads_as_detectron2_reads_it(tmp_path, content):
    # The oracle is detectron2's own reader (a bare pickle.load: these files are ours, safe to unpickle).
    path = tmp_path / "weights.pkl"
    with open(path, "wb") as f:
        pickle.dump(content, f)
    model = _model()
    ours = AtomicCheckpointer(model)._load_file(str(path))
    assert _same(ours, DetectionCheckpointer(model)._load_file(str(path)))


def test_a_new_run_from_weights_loads_those_weights_even_beside_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    model = _model()
    _weights_filled(model, 1.0)
    _checkpointer(model, out).save("model_0000001", iteration=1)
    weights = _weights_filled(model, 2.0)
    torch.save({"model": weights}, tmp_path / "init.pth")
    target = _model(seed=7)
    _checkpointer(target, out).resume_or_load(str(tmp_path / "init.pth"), resume=False)
    assert torch.equal(target[0].weight, weights["0.weight"])


def test_after_a_resume_a_partial_weights_file_still_loads_as_an_initialisation(tmp_path):
    out = tmp_path / "run"
    model = _model()
    _checkpointer(model, out).save("model_0000001", iteration=1)
    checkpointer = _checkpointer(model, out)
    checkpointer.resume_or_load("", resume=True)
    partial = {"0.weight": torch.full((4, 4), 6.0)}  # a trunk-only file: the rest keeps its values
    torch.save({"model": partial}, tmp_path / "partial.pth")
    checkpointer.resume_or_load(str(tmp_path / "partial.pth"), resume=False)
    assert torch.equal(model[0].weight, partial["0.weight"])


def test_a_file_of_another_shape_is_refused_with_the_verb_of_what_was_asked(tmp_path):
    out = tmp_path / "run"
    wider = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
    _checkpointer(wider, out).save("model_0000001", iteration=1)
    resume_refusal = r"left to resume from\. cannot resume from checkpoint .*shapes differ"
    with pytest.raises(CheckpointLoadError, match=resume_refusal):
        _checkpointer(_model(), out).resume_or_load("", resume=True)
    with pytest.raises(CheckpointLoadError, match=r"^cannot load checkpoint .*shapes differ"):
        _checkpointer(_model(), tmp_path / "new").resume_or_load(str(out / "model_0000001.pth"), resume=False)


def test_skipping_another_runs_leftover_is_not_reported_as_falling_back(tmp_path, caplog, monkeypatch):
    out = tmp_path / "run"
    _checkpointer(_model(), out).save("model_0000003", iteration=3)
    _checkpointer(_model(), out, run=Run("e" * 32, str(out))).save("model_0000009", iteration=9)
    # detectron2's setup_logger (run by any in-process tool test) stops these loggers propagating.
    for name in ("d2ssl", "fvcore"):
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)
    caplog.set_level(logging.INFO)
    assert _checkpointer(_model(seed=7), out).resume_or_load("", resume=True)["iteration"] == 3
    messages = [r.getMessage() for r in caplog.records]
    assert any("belongs to run" in m and "model_0000009.pth" in m for m in messages), messages
    # Nothing of this run was lost: no "previous complete checkpoint ... instead", no iteration trained again.
    assert not any("instead" in m for m in messages), messages


def test_the_signatures_are_detectron2s_keywords_and_allow_pickle_is_never_positional(tmp_path):
    model = _model()
    # A drop-in replacement of DetectionCheckpointer: its arguments by name, as detectron2's tools pass them.
    checkpointer = AtomicCheckpointer(model=model, save_dir=str(tmp_path), run=RUN)
    checkpointer.save("model_0000001", iteration=1)
    assert checkpointer.resume_or_load(path="", resume=True)["iteration"] == 1
    assert checkpointer.resume_or_load("")["iteration"] == 1  # resume is detectron2's default
    # Unpickling in full runs code: never switched on by a stray positional argument.
    with pytest.raises(TypeError):
        AtomicCheckpointer(model, str(tmp_path), None, True)
    with pytest.raises(TypeError):
        checkpointer.resume_or_load("", False)


def test_a_checkpoint_saved_from_a_wrapped_model_resumes_into_the_bare_one(tmp_path):
    # A DistributedDataParallel / DataParallel module's names all start with "module.": still this model's
    # state. (fvcore unwraps a wrapped model before saving, so such files come from other code.)
    out = tmp_path / "run"
    model = _model()
    expected = _weights_filled(model, 4.0)
    _checkpointer(model, out).save("model_0000002", iteration=2)
    path = out / "model_0000002.pth"
    data = torch.load(path, weights_only=True)
    data["model"] = {f"module.{k}": v for k, v in data["model"].items()}
    torch.save(data, path)
    path.with_name(path.name + ".sha256").unlink()  # no checksum to match: its zip CRCs are checked
    resumed = _model(seed=7)
    assert _checkpointer(resumed, out).resume_or_load("", resume=True)["iteration"] == 2
    assert all(torch.equal(v, expected[k]) for k, v in resumed.state_dict().items())


def test_a_process_that_does_not_write_to_disk_or_has_no_folder_saves_nothing(tmp_path, monkeypatch):
    # The ranks other than the main process (save_to_disk=False) never write; nor does a checkpointer
    # made without a folder (it would otherwise write into the working directory).
    AtomicCheckpointer(_model(), str(tmp_path / "run"), save_to_disk=False, run=RUN).save("model_0000001")
    monkeypatch.chdir(tmp_path)
    AtomicCheckpointer(_model(), save_to_disk=True).save("model_0000001")
    assert sorted(p.name for p in tmp_path.rglob("*")) == []


def test_resume_on_an_output_folder_not_made_yet_starts_from_the_init_weights(tmp_path):
    weights = _weights_filled(_model(), 5.0)
    torch.save({"model": weights}, tmp_path / "init.pth")
    target = _model(seed=7)
    checkpointer = _checkpointer(target, tmp_path / "not_made_yet")
    checkpointer.resume_or_load(str(tmp_path / "init.pth"), resume=True)
    assert checkpointer.resumed is None and torch.equal(target[0].weight, weights["0.weight"])


def test_a_pyth_without_model_state_is_refused_saying_so(tmp_path):
    torch.save({"state": _model().state_dict()}, tmp_path / "other.pyth")
    with pytest.raises(CheckpointLoadError, match=r"other\.pyth is not a pycls checkpoint.*'model_state'"):
        AtomicCheckpointer(_model()).resume_or_load(str(tmp_path / "other.pyth"), resume=False)


class _Refuses:
    """A checkpointable (a hook, a scheduler) whose saved state no longer fits: it raises ``error``."""

    def __init__(self, error: type[Exception] | None = None):
        self.error = error

    def state_dict(self) -> dict:
        return {"kept": 1}

    def load_state_dict(self, state: dict) -> None:
        if self.error is not None:
            raise self.error("the saved state does not fit")


@pytest.mark.parametrize("error", [KeyError, ValueError, RuntimeError, TypeError])
def test_a_part_of_the_trainer_refusing_its_saved_state_is_a_resume_error_naming_the_file(tmp_path, error):
    out = tmp_path / "run"
    AtomicCheckpointer(_model(), str(out), run=RUN, hook=_Refuses()).save("model_0000001", iteration=1)
    refusal = rf"cannot resume from .*model_0000001\.pth: {error.__name__}"
    with pytest.raises(CheckpointLoadError, match=refusal):
        AtomicCheckpointer(_model(), str(out), run=RUN, hook=_Refuses(error)).resume_or_load("", resume=True)


def test_the_checksums_of_deleted_checkpoints_go_at_the_next_save(tmp_path):
    out = tmp_path / "run"
    checkpointer = _checkpointer(_model(), out)
    for name in ("model_0000001", "model_0000002"):
        checkpointer.save(name)
    (out / "model_0000001.pth").unlink()  # as max_to_keep deletes it
    checkpointer.save("model_0000003")
    kept = sorted(p.name for p in out.glob("*.sha256"))
    assert kept == ["model_0000002.pth.sha256", "model_0000003.pth.sha256"]
