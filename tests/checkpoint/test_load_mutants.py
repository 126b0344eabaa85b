"""Which tensors of a file reach which weights of a model: the state dict found, the prefixes stripped
and added, what is skipped, unexpected, of another shape or missing, each pinned on a model of four
hand-named tensors (the mutants of benchmarks/mutation.py the broader test_load.py lets through)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from d2ssl.checkpoint.load import (
    WeightsLoadError,
    check_one_trunk_source,
    load_pretrained_weights,
    load_weights_init,
    model_trunk_prefix,
    read_state_dict,
    resnet_location,
    unwrap_state_dict,
)

# A detectron2-named trunk of four tensors: enough for find_trunk (stem.conv1.weight, res2.0.conv1.weight)
# and for each outcome of a key (loaded, skipped, shape mismatch, missing).
TRUNK_SHAPES = {"stem.conv1.weight": (2, 3), "stem.conv1.norm.running_mean": (2,),
                "res2.0.conv1.weight": (4, 2), "res2.0.conv1.norm.num_batches_tracked": ()}


class _Model(nn.Module):
    """state_dict keys: ``<prefix>`` + TRUNK_SHAPES, plus ``head.weight``; a dict stands for the
    parameters so that a test can add keys of any name."""

    def __init__(self, prefix: str = "trunk."):
        super().__init__()
        self._store = {prefix + k: torch.zeros(s) for k, s in TRUNK_SHAPES.items()}
        self._store["head.weight"] = torch.zeros(3)

    def state_dict(self, *args, **kwargs):  # noqa: D102
        return dict(self._store)

    def load_state_dict(self, state_dict, strict=True):  # noqa: D102
        assert not strict
        for k, v in state_dict.items():
            self._store[k] = v.clone()
        return None


def _values(prefix: str = "") -> dict[str, torch.Tensor]:
    """Distinct values per key, so a misplaced tensor is seen."""
    return {prefix + k: torch.full(s, float(i + 1)) for i, (k, s) in enumerate(TRUNK_SHAPES.items())}


def _save(tmp_path, obj, name="w.pth") -> str:
    path = str(tmp_path / name)
    torch.save(obj, path)
    return path


# ---------------------------------------------------------------- unwrap_state_dict
def test_a_flat_state_dict_is_used_as_is():
    sd = {"a": torch.ones(1), "b": np.zeros(2)}
    found, where = unwrap_state_dict(sd)
    assert found == sd and where == ""


def test_a_single_tensor_dict_is_a_state_dict():
    sd = {"a": torch.ones(1)}
    assert unwrap_state_dict(sd) == (sd, "")
    sd = {"base_model": torch.ones(1)}  # a tensor, not VISSL's wrapper of that name
    assert unwrap_state_dict(sd) == (sd, "")


def test_the_wrappers_are_tried_in_their_order():
    a, b, c = {"x": torch.ones(1)}, {"y": torch.ones(1)}, {"z": torch.ones(1)}
    assert unwrap_state_dict({"model": c, "state_dict": b, "model_state_dict": a}) == (a, "model_state_dict")
    assert unwrap_state_dict({"model": c, "state_dict": b, "iteration": 3}) == (b, "state_dict")
    assert unwrap_state_dict({"model": c, "iteration": 3}) == (c, "model")


def test_vissl_classy_state_dict_descends_to_the_trunk():
    trunk = {"_feature_blocks.conv1.weight": torch.ones(1)}
    ckpt = {"classy_state_dict": {"base_model": {"model": {"trunk": trunk, "heads": {"h": torch.ones(1)}}}},
            "phase_idx": 3}
    assert unwrap_state_dict(ckpt) == (trunk, "classy_state_dict.base_model.model.trunk")


def test_non_tensor_entries_are_dropped_where_the_state_dict_is():
    ckpt = {"model": {"w": torch.ones(1), "note": "made by hand", "__author__": 1}}
    assert unwrap_state_dict(ckpt) == ({"w": ckpt["model"]["w"]}, "model")
    ckpt = {"w": torch.ones(1), "epoch": 4}  # a flat state dict with a counter beside it
    assert unwrap_state_dict(ckpt) == ({"w": ckpt["w"]}, "")


def test_key_names_lead_through_nested_dicts():
    inner = {"w": torch.ones(1)}
    ckpt = {"a": {"b": inner, "c": {"w": torch.zeros(1)}}}
    assert unwrap_state_dict(ckpt, ["a", "b"]) == (inner, "a.b")
    assert unwrap_state_dict(ckpt, ["", "a", "", "b"]) == (inner, "a.b")  # empty names are no step
    assert unwrap_state_dict({"b": inner}, "b") == (inner, "b")


def test_an_empty_key_name_is_no_key():
    sd = {"w": torch.ones(1)}
    assert unwrap_state_dict(sd, "") == (sd, "")
    assert unwrap_state_dict(sd, []) == (sd, "")


def test_a_missing_key_names_where_and_what_is_there():
    ckpt = {"a": {"b": {"w": torch.ones(1)}, "c": 1}}
    with pytest.raises(WeightsLoadError, match=r"^f\.pth: no key 'x' at 'a'; keys there: \['b', 'c'\]$"):
        unwrap_state_dict(ckpt, ["a", "x"], "f.pth")
    with pytest.raises(WeightsLoadError, match=r"no key 'x' at '<top>'; keys there: \['a'\]$"):
        unwrap_state_dict(ckpt, "x")
    with pytest.raises(WeightsLoadError, match=r"no key 'y' at 'a.c'; keys there: int$"):
        unwrap_state_dict(ckpt, ["a", "c", "y"])


def test_a_key_that_holds_no_dict_is_named():
    with pytest.raises(WeightsLoadError, match=r"^f: 'a.b' holds a list, not a state dict$"):
        unwrap_state_dict({"a": {"b": [1, 2]}}, ["a", "b"], "f")


def test_no_tensors_names_where_and_the_first_ten_keys():
    ckpt = {"model": {f"k{i:02d}": i for i in range(12)}}
    with pytest.raises(WeightsLoadError) as e:
        unwrap_state_dict(ckpt, params_file="f")
    keys = [f"k{i:02d}" for i in range(10)]
    assert str(e.value).startswith(f"f: no tensors at 'model' (keys: {keys}); set STATE_DICT_KEY_NAME")
    with pytest.raises(WeightsLoadError, match=r"no tensors at '<top>' \(keys: \[\]\)"):
        unwrap_state_dict({}, params_file="f")


# ---------------------------------------------------------------- read_state_dict, model_trunk_prefix
def test_remove_prefix_strips_only_keys_that_start_with_it(tmp_path):
    one = torch.ones(1)
    path = _save(tmp_path, {"student.a": one, "teacher.student.b": one, "c": one})
    sd, where = read_state_dict(path, remove_prefix="student.")
    assert sorted(sd) == ["a", "c", "teacher.student.b"] and where == ""
    sd, _ = read_state_dict(path, remove_prefix="")
    assert sorted(sd) == ["c", "student.a", "teacher.student.b"]


def test_model_trunk_prefix_prefers_trunk_then_bare_then_the_only_one():
    assert model_trunk_prefix(["backbone.stem.conv1.weight", "trunk.stem.conv1.weight"]) == "trunk."
    assert model_trunk_prefix(["a.stem.conv1.weight", "stem.conv1.weight"]) == ""
    assert model_trunk_prefix(["backbone.bottom_up.stem.conv1.weight", "head.w"]) == "backbone.bottom_up."
    # "xstem.conv1.weight" is no ResNet under "x".
    with pytest.raises(WeightsLoadError, match=r"^the model has no ResNet trunks \(\[\]\)"):
        model_trunk_prefix(["xstem.conv1.weight"])
    with pytest.raises(WeightsLoadError, match=r"several ResNet trunks \(\['a.', 'b.'\]\); .*APPEND_PREFIX"):
        model_trunk_prefix(["a.stem.conv1.weight", "b.stem.conv1.weight"])


def test_resnet_location_joins_where_and_prefix():
    assert resnet_location("state_dict", "module.encoder.") == "state_dict.module.encoder"
    assert resnet_location("", "module.encoder.") == "module.encoder"
    assert resnet_location("model", "") == "model"
    assert resnet_location("", "") == "<top>"


# ---------------------------------------------------------------- load_pretrained_weights
def test_each_key_is_loaded_skipped_mismatched_or_missing(tmp_path, caplog):
    values = _values("trunk.")
    values["trunk.res2.0.conv1.weight"] = torch.ones(5, 2)  # another shape
    del values["trunk.stem.conv1.norm.running_mean"]  # missing from the file
    values["trunk.res3.0.conv1.weight"] = torch.ones(1)  # not in the model
    values["head.bias"] = torch.ones(1)  # outside the ResNet
    path = _save(tmp_path, {"model": values})
    model = _Model()
    with caplog.at_level(logging.INFO, logger="d2ssl"):
        report = load_pretrained_weights(model, path)
    assert (report.layout, report.source, report.target_prefix) == ("d2ssl", "model.trunk", "trunk.")
    assert report.loaded == ["trunk.stem.conv1.weight"]
    assert report.skipped == ["trunk.res2.0.conv1.norm.num_batches_tracked"]
    assert report.shape_mismatch == [("trunk.res2.0.conv1.weight", (5, 2), (4, 2))]
    assert report.unexpected == ["trunk.res3.0.conv1.weight"]
    assert report.missing == ["trunk.stem.conv1.norm.running_mean"]
    assert report.unused == ["head.bias"]
    sd = model.state_dict()
    assert sd["trunk.stem.conv1.weight"].tolist() == [[1.0] * 3] * 2
    assert sd["trunk.res2.0.conv1.weight"].tolist() == [[0.0] * 2] * 4
    assert sd["trunk.res2.0.conv1.norm.num_batches_tracked"].item() == 0
    assert [r.levelname for r in caplog.records] == ["WARNING"]


def test_a_clean_load_is_logged_at_info_and_misses_nothing(tmp_path, caplog):
    path = _save(tmp_path, _values(""))
    model = _Model()
    with caplog.at_level(logging.INFO, logger="d2ssl"):
        report = load_pretrained_weights(model, path, skip_layers=())
    assert (report.layout, report.source) == ("detectron2", "<top>")
    assert report.loaded == [f"trunk.{k}" for k in TRUNK_SHAPES]
    assert report.missing == report.unexpected == report.shape_mismatch == report.skipped == []
    assert [r.levelname for r in caplog.records] == ["INFO"]
    sd = model.state_dict()
    for i, k in enumerate(TRUNK_SHAPES):
        assert torch.equal(sd["trunk." + k], torch.full(TRUNK_SHAPES[k], float(i + 1)))
    assert torch.equal(sd["head.weight"], torch.zeros(3))


def test_missing_counts_only_keys_under_the_target_and_not_skipped(tmp_path):
    path = _save(tmp_path, {"stem.conv1.weight": torch.ones(2, 3), "res2.0.conv1.weight": torch.ones(4, 2)})
    report = load_pretrained_weights(_Model(), path, skip_layers=("running_mean",))
    # head.weight is outside trunk.; running_mean is skipped by name: neither is missing.
    assert report.missing == ["trunk.res2.0.conv1.norm.num_batches_tracked"]


def test_the_default_skips_only_batch_norm_counters(tmp_path):
    path = _save(tmp_path, _values(""))
    report = load_pretrained_weights(_Model(), path)
    assert report.skipped == ["trunk.res2.0.conv1.norm.num_batches_tracked"]
    assert report.missing == []


def test_append_prefix_puts_the_trunk_there(tmp_path):
    path = _save(tmp_path, _values("trunk."))
    model = _Model(prefix="target.")
    report = load_pretrained_weights(model, path, append_prefix="target.", skip_layers=())
    assert report.target_prefix == "target." and len(report.loaded) == 4
    assert torch.equal(model.state_dict()["target.stem.conv1.weight"], torch.ones(2, 3))


def test_an_unrecognised_state_dict_loads_under_its_own_names_only_with_append_prefix(tmp_path):
    path = _save(tmp_path, {"0.weight": np.full((2, 3), 7.0), "other": torch.ones(9)})
    model = _Model(prefix="x.")
    model._store["x.0.weight"] = torch.zeros(2, 3)
    with pytest.raises(WeightsLoadError, match=r"w\.pth \('<top>'\): no ResNet found"):
        load_pretrained_weights(model, path)
    report = load_pretrained_weights(model, path, append_prefix="x.")
    assert report.layout == "unrecognised (loaded as named)"
    assert (report.source, report.target_prefix) == ("", "x.")
    assert report.loaded == ["x.0.weight"] and report.unexpected == ["x.other"]
    assert model.state_dict()["x.0.weight"].dtype == torch.float64
    assert model.state_dict()["x.0.weight"].tolist() == [[7.0] * 3] * 2


def test_nothing_loaded_lists_the_unmatched_and_missing_keys(tmp_path):
    sd = {"stem.conv1.weight": torch.ones(9), "res2.0.conv1.weight": torch.ones(9)}
    sd.update({f"res{s}.{b}.conv1.weight": torch.ones(1) for s in (3, 4) for b in range(3)})
    path = _save(tmp_path, sd)
    model = _Model()
    for b in range(4):  # six model keys without weights in all: the message lists five
        model._store[f"trunk.res5.{b}.conv2.weight"] = torch.zeros(1)
    with pytest.raises(WeightsLoadError) as e:
        load_pretrained_weights(model, path, skip_layers=())
    unmatched = [f"trunk.res{s}.{b}.conv1.weight" for s in (3, 4) for b in range(3)][:5]
    missing = ["trunk.stem.conv1.norm.running_mean", "trunk.res2.0.conv1.norm.num_batches_tracked",
               "trunk.res5.0.conv2.weight", "trunk.res5.1.conv2.weight", "trunk.res5.2.conv2.weight"]
    assert str(e.value) == (
        f"{path}: nothing was loaded into the model (detectron2 layout, ResNet at '<top>', model prefix "
        f"'trunk.'). First checkpoint keys that did not match: {unmatched}; first model keys left without "
        f"weights: {missing}"
    )


# ---------------------------------------------------------------- load_weights_init, check_one_trunk_source
def test_weights_init_passes_each_field(tmp_path):
    path = _save(tmp_path, {"outer": {"inner": _values("student.")}})
    model = _Model(prefix="target.")
    model._store["trunk.stem.conv1.weight"] = torch.zeros(2, 3)  # where the weights would go unasked
    block = {"PARAMS_FILE": path, "STATE_DICT_KEY_NAME": ("outer", "inner"), "SKIP_LAYERS": ["running_mean"],
             "REMOVE_PREFIX": "student.", "APPEND_PREFIX": "target.", "ALLOW_PICKLE": False}
    report = load_weights_init(model, block)
    assert report.source == "outer.inner" and report.target_prefix == "target."
    assert report.skipped == ["target.stem.conv1.norm.running_mean"]
    assert len(report.loaded) == 3
    # One key name as a string is one key, not a list of its letters.
    path = _save(tmp_path, {"wrapped": _values(""), "model": {"x": torch.ones(1)}}, "wrapped.pth")
    report = load_weights_init(_Model(), {"PARAMS_FILE": path, "STATE_DICT_KEY_NAME": "wrapped"})
    assert report.source == "wrapped" and len(report.loaded) == 4
    # No SKIP_LAYERS: nothing is skipped (the config file's default lists num_batches_tracked).
    report = load_weights_init(_Model(), {"PARAMS_FILE": _save(tmp_path, _values(""), "flat.pth")})
    assert report.skipped == [] and len(report.loaded) == 4


def test_weights_init_without_a_file_is_nothing_and_unknown_fields_are_named(tmp_path):
    assert load_weights_init(_Model(), None) is None
    assert load_weights_init(_Model(), {"PARAMS_FILE": "", "BOGUS": 1}) is None
    with pytest.raises(WeightsLoadError, match=r"unknown fields \['BOGUS', 'WRONG'\]"):
        load_weights_init(_Model(), {"PARAMS_FILE": "x.pth", "WRONG": 1, "BOGUS": 2})


def test_weights_init_refuses_python_objects_unless_allowed(tmp_path):
    import collections

    sd = collections.OrderedDict(_values(""))
    path = _save(tmp_path, {"model": sd, "args": argparse_like()})
    with pytest.raises(WeightsLoadError):
        load_weights_init(_Model(), {"PARAMS_FILE": path})
    report = load_weights_init(_Model(), {"PARAMS_FILE": path, "ALLOW_PICKLE": True})
    assert len(report.loaded) == 4


class _Args:
    lr = 0.1


def argparse_like() -> _Args:
    return _Args()


def test_one_trunk_source_only():
    check_one_trunk_source(None)
    check_one_trunk_source({})
    check_one_trunk_source({"weights_init": {"PARAMS_FILE": "a"}, "init_checkpoint": ""})
    check_one_trunk_source({"weights_init": None, "init_checkpoint": "b"})
    with pytest.raises(ValueError, match=r"PARAMS_FILE='a' and train.init_checkpoint='b' are both set"):
        check_one_trunk_source({"weights_init": {"PARAMS_FILE": "a"}, "init_checkpoint": "b"})


def test_read_state_dict_refuses_python_objects_unless_allowed(tmp_path):
    path = _save(tmp_path, {"model": _values(""), "args": argparse_like()}, "objects.pth")
    with pytest.raises(WeightsLoadError):
        read_state_dict(path)
    sd, where = read_state_dict(path, allow_pickle=True)
    assert where == "model" and sorted(sd) == sorted(TRUNK_SHAPES)


@pytest.mark.parametrize("problem", ["unexpected", "shape mismatch", "missing"])
def test_any_one_problem_makes_the_report_a_warning(tmp_path, caplog, problem):
    values = _values("")
    if problem == "unexpected":
        values["res3.0.conv1.weight"] = torch.ones(1)
    elif problem == "shape mismatch":
        values["res2.0.conv1.weight"] = torch.ones(5, 2)
    else:
        del values["stem.conv1.norm.running_mean"]
    with caplog.at_level(logging.INFO, logger="d2ssl"):
        load_pretrained_weights(_Model(), _save(tmp_path, values), skip_layers=())
    assert [r.levelname for r in caplog.records] == ["WARNING"]


def test_the_search_goes_on_below_vissls_trunk():
    # Each step of the descent is followed by another look for a state dict, VISSL's included.
    sd = {"conv1.weight": torch.ones(1)}
    ckpt = {"classy_state_dict": {"base_model": {"model": {"trunk": {"state_dict": sd, "epoch": 1}}}}}
    assert unwrap_state_dict(ckpt) == (sd, "classy_state_dict.base_model.model.trunk.state_dict")
