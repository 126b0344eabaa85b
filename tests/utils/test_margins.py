"""d2ssl.utils.margins: worst pretrained minus best random, per layer and metric, over every seed."""

from __future__ import annotations

import json

import pytest

from d2ssl.utils.margins import format_margins, layer_scores, margin_summary, margins, read_trunk_scores


def _results(linear: dict[str, list[float]], knn: dict[str, float]) -> list[dict]:
    """results.json rows as tools/benchmark.py writes them: one linear grid step per evaluation seed."""
    rows = [{"step": f"linear_grid_seed{i}", "kind": "linear_grid", "metric": f"{layer}/test_top1",
             "value": v, "eval_seed": i} for layer, values in linear.items() for i, v in enumerate(values)]
    rows += [{"step": "knn", "kind": "knn", "metric": f"{layer}/top1@20", "value": v}
             for layer, v in knn.items()]
    # Neither a headline of another metric nor a null value (a detector that predicted nothing) counts.
    rows += [{"step": "knn", "kind": "knn", "metric": "res4/top1@200", "value": 99.0},
             {"step": "knn", "kind": "knn", "metric": "res4/top5@20", "value": 99.0},
             {"step": "det", "kind": "train_detection", "metric": "bbox/AP", "value": None}]
    return rows


def _write(folder, name: str, rows: list[dict]) -> None:
    (folder / name).mkdir(parents=True)
    (folder / name / "results.json").write_text(json.dumps({"results": rows}))


def test_margin_is_the_worst_pretrained_run_minus_the_best_random_run(tmp_path):
    _write(tmp_path, "rotnet_s0", _results({"res4": [80.0, 82.0]}, {"res4": 78.0}))
    _write(tmp_path, "rotnet_s1", _results({"res4": [79.5, 81.0]}, {"res4": 77.0}))
    _write(tmp_path, "random_s0", _results({"res4": [77.0, 78.0]}, {"res4": 74.0}))
    _write(tmp_path, "random_s1", _results({"res4": [76.0, 79.0]}, {"res4": 77.5}))
    (tmp_path / "notes").mkdir()  # not a trunk folder
    (tmp_path / "jigsaw_s0").mkdir()  # no results.json yet
    trunks = read_trunk_scores(str(tmp_path))
    assert sorted(trunks) == ["random", "rotnet"] and sorted(trunks["rotnet"]) == [0, 1]
    summary = margin_summary(trunks)["rotnet"]
    linear = summary["layers"]["res4"]["linear_top1"]
    # 4 pretrained runs (2 seeds x 2 evaluation seeds): worst 79.5; 4 random: best 79.0.
    assert linear == {"pretrained": [79.5, 80.5, 82.0], "random": [76.0, 77.5, 79.0], "n": [4, 4],
                      "margin": 0.5}
    knn = summary["layers"]["res4"]["knn_top1@20"]
    assert knn["margin"] == pytest.approx(77.0 - 77.5) and knn["n"] == [2, 2]
    assert summary["best"] == {"layer": "res4", "metric": "linear_top1", "margin": 0.5}
    assert summary["seeds"] == [0, 1]
    table = format_margins({"rotnet": summary})
    assert "| rotnet " in table and " +0.50 " in table and "79.50 / 80.50 / 82.00" in table
    assert "res4 +0.5; -0.5" in table


def test_a_layer_missing_on_either_side_has_no_margin():
    pretrained = [layer_scores(_results({"res4": [70.0], "res5": [71.0]}, {"res4": 60.0}))]
    random = [layer_scores(_results({"res4": [65.0]}, {"res4": 61.0}))]
    table = margins(pretrained, random)
    assert sorted(table["layers"]) == ["res4"] and table["layers"]["res4"]["linear_top1"]["margin"] == 5.0
    assert margins(pretrained, [])["best"] is None
