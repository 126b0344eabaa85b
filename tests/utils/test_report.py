import json
from pathlib import Path

import pytest

from d2ssl.utils.metrics import metric_trajectory
from d2ssl.utils.report import format_report, pretraining_rows


def _write_run(folder, records, config_yaml=None):
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    if config_yaml:
        (folder / "config.yaml").write_text(config_yaml)


def test_report_shows_first_and_last_pretext_metric_against_chance(tmp_path):
    _write_run(tmp_path / "jigsaw", [{"iteration": 19, "jigsaw_accuracy": 0.1}, {"iteration": 39, "lr": 0.1},
                                     {"iteration": 59, "jigsaw_accuracy": 0.7}])
    pirl = [{"iteration": 19, "nce_top1_image": 0.0}, {"iteration": 39, "nce_top1_image": 0.25}]
    config = "model:\n  loss:\n    negative_sampling_params:\n      num_negatives: 3\n"
    _write_run(tmp_path / "pirl", pirl, config)
    _write_run(tmp_path / "detection_jigsaw", [{"iteration": 99, "bbox/AP": 12.34, "bbox/AP50": 40.0}])
    rows = {r[0]: r for r in pretraining_rows(str(tmp_path))}
    assert rows["jigsaw"][2:5] == ["0.100", "0.700", "0.042"]
    assert rows["pirl"][2:5] == ["0.000", "0.250", "0.250"]  # chance 1 / (3 + 1)
    text = format_report(str(tmp_path))
    assert "detection_jigsaw" in text and "12.3" in text and "40.0" in text


def test_missing_metric_is_named(tmp_path):
    _write_run(tmp_path / "run", [{"iteration": 19, "lr": 0.1}])
    with pytest.raises(KeyError, match="jigsaw_accuracy"):
        metric_trajectory(str(tmp_path / "run"), "jigsaw_accuracy")
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        metric_trajectory(str(tmp_path / "nothing"), "jigsaw_accuracy")


def test_report_pairs_each_pretrained_trunk_with_its_random_baseline(tmp_path):
    rotnet = [{"iteration": 19, "rotnet_accuracy": 0.3}, {"iteration": 39, "rotnet_accuracy": 0.8}]
    _write_run(tmp_path / "rotnet", rotnet)
    for name, linear, knn in (("rotnet", 84.0, 80.5), ("rotnet_random", 80.0, 77.0)):
        folder = tmp_path / "eval" / name
        folder.mkdir(parents=True)
        (folder / "linear_grid.json").write_text(json.dumps({"selected": {"test_top1": linear}, "cells": []}))
        (folder / "knn_res4.json").write_text(json.dumps({"top1@20": knn, "top1@200": knn - 1}))
    _write_run(tmp_path / "detection_rotnet", [{"iteration": 99, "bbox/AP": 9.0, "bbox/AP50": 30.0}])
    _write_run(tmp_path / "detection_random", [{"iteration": 99, "bbox/AP": 7.5, "bbox/AP50": 20.0}])
    text = format_report(str(tmp_path))
    assert "84.0 vs 80.0 (+4.0)" in text
    assert "80.5 vs 77.0 (+3.5)" in text
    assert "9.0 vs 7.5 (+1.5)" in text
    assert "rotnet_accuracy 0.800 (chance 0.250)" in text


# ---------------------------------------------------------------- any run folder (tools/report.py)

def _json(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def _config(folder, text):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(text)


def test_report_of_a_tree_names_what_ran_on_which_data_and_weights(tmp_path):
    from d2ssl.utils.report import format_any_report

    root = tmp_path / "runs"
    pretrain = root / "pretraining" / "rotnet_a"
    _write_run(pretrain, [{"iteration": 9, "rotnet_accuracy": 0.3, "total_loss": 1.2},
                          {"iteration": 19, "rotnet_accuracy": 0.6, "total_loss": 0.9}],
               "dataloader:\n  train:\n    dataset:\n      _target_: d2ssl.data.datasets.get_dataset_dicts\n"
               "      names: fashion_mnist_train\n      limit: 600\ntrain:\n  init_checkpoint: ''\n")
    linear = root / "linear_b"
    _config(linear, "dataloader:\n  train:\n    dataset:\n"
                    "      _target_: d2ssl.data.datasets.load_image_folder\n      root: /data/in/train\n"
                    "train:\n  weights_init:\n    PARAMS_FILE: trunk_b.pth\n")
    _json(linear / "summary.json", {"top1": 61.5, "scored_on": "test", "selected_on": "val: 0.1 of train",
                                    "best": {"top1": 62.0}})
    _json(root / "linear_f" / "summary.json", {"top1": 50.0, "selected_on": None, "best": {"top1": 52.0}})
    _write_run(root / "det_c", [{"iteration": 99, "bbox/AP": 12.5, "bbox/AP50": 30.25}])
    features = root / "features_d"
    for split, count in (("train", 600), ("test", 300)):
        _json(features / f"{split}_meta.json",
              {"num_images": count, "checkpoint": "trunk_d.pth", "weights_digest": "ab" * 32})
    _json(features / "knn_res5.json", {"protocol": "trunk", "layer": "res5", "top1@20": 70.5, "top5@20": 9.0})
    _json(features / "linear_grid.json",
          {"selected_on": "val: 0.1 of every class", "selected": {"test_top1": 66.25}})
    _json(root / "cluster_e" / "clustering_summary.json",
          {"NUM_CLUSTERS": 16, "num_images": 600, "train_quality": {"nmi": 0.4123, "purity": 0.5}})
    _write_run(root / "linear_b" / "previous_runs" / "old", [{"iteration": 1, "bbox/AP": 1.0}])  # moved aside

    text = format_any_report([str(root)])
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith(f"| {root}")}
    assert set(rows) == {str(root / n) for n in ("pretraining/rotnet_a", "linear_b", "det_c", "features_d",
                                                  "cluster_e", "linear_f")}
    assert rows[str(pretrain)][:3] == ["pretraining (rotnet)", "get_dataset_dicts(names=fashion_mnist_train, "
                                       "limit=600)", "random init"]
    assert "rotnet_accuracy 0.300 -> 0.600" in rows[str(pretrain)][3]
    assert rows[str(linear)][0] == "linear / semi-supervised" and rows[str(linear)][2] == "trunk_b.pth"
    assert rows[str(linear)][3] == "top1 61.50 (last evaluation, test)"
    assert rows[str(linear)][4] == "top1 62.00 (selected on val: 0.1 of train)"
    assert rows[str(root / "linear_f")][4] == "-"  # its "best" was chosen on the test split: no selection
    assert rows[str(root / "det_c")][3].startswith("box AP 12.50, AP50 30.25")
    assert rows[str(features)][0] == "features, kNN (trunk, res5), linear grid"
    assert rows[str(features)][1] == "test: 300 images, train: 600 images"
    assert rows[str(features)][2].startswith("trunk_d.pth (trunk abababababab")
    assert rows[str(features)][3] == "top1@20 70.50"
    assert rows[str(features)][4] == "test top1 66.25 (cell selected on val: 0.1 of every class)"
    assert rows[str(root / "cluster_e")][3] == "16 clusters of 600 images, nmi 0.412, purity 0.500"


def _benchmark(folder, weights, results, steps):
    _json(folder / "suite.json", {"suite": "tiny", "weights": weights, "weights_sha256": "5" * 64})
    _json(folder / "results.json", {"suite": "tiny", "weights": weights, "weights_sha256": "5" * 64,
                                    "steps": steps, "results": results})


def test_report_puts_benchmark_trunks_side_by_side_with_published_numbers(tmp_path):
    from d2ssl.checkpoint.zoo import published_numbers
    from d2ssl.utils.report import format_any_report

    done = [{"step": "knn", "status": "done"}, {"step": "linear", "status": "done"}]
    _benchmark(tmp_path / "a", "zoo:jigclu_r50_200ep",
               [{"step": "knn", "metric": "top1@20", "value": 50.0},
                {"step": "knn", "metric": "top5@20", "value": 80.0},
                {"step": "linear", "metric": "top1", "value": 66.5}], done)
    _benchmark(tmp_path / "b", "mine.pth", [{"step": "knn", "metric": "top1@20", "value": 40.0}],
               [done[0], {"step": "linear", "status": "failed"}])
    text = format_any_report([str(tmp_path / "a"), str(tmp_path / "b")])
    header = next(line for line in text.splitlines() if line.startswith("| trunk"))
    columns = [c.strip() for c in header.split("|")[1:-1]]
    assert columns[:4] == ["trunk", "sha256", "knn top1@20", "linear top1"]
    row_a = next(line for line in text.splitlines() if line.startswith("| zoo:jigclu_r50_200ep"))
    row_b = next(line for line in text.splitlines() if line.startswith("| mine.pth"))
    assert "| 50.00 " in row_a and "| 66.50 " in row_a and "80.00" not in row_a  # top-5 is left out
    first = published_numbers("jigclu_r50_200ep")[0]
    assert f"{first['benchmark']} {first['metric']} {first['value']}" in row_a
    assert "| 40.00 " in row_b and "| FAILED " in row_b


def test_report_of_a_missing_folder_is_one_error_line(tmp_path, monkeypatch, capsys):
    import runpy
    import sys

    monkeypatch.setattr(sys, "argv", ["report.py", str(tmp_path / "nothing")])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(Path(__file__).resolve().parents[2] / "tools" / "report.py"), run_name="__main__")
    assert stop.value.code == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: no such run folder: {tmp_path / 'nothing'} (give folders written by d2ssl's "
                      f"tools)"]
    assert "Traceback" not in captured.err and captured.out == ""


def test_report_of_the_demo_folder_keeps_the_demo_tables(tmp_path):
    from d2ssl.utils.report import format_any_report

    _write_run(tmp_path / "jigsaw", [{"iteration": 19, "jigsaw_accuracy": 0.1},
                                     {"iteration": 59, "jigsaw_accuracy": 0.7}])
    _write_run(tmp_path / "detection_jigsaw", [{"iteration": 99, "bbox/AP": 12.34, "bbox/AP50": 40.0}])
    assert format_any_report([str(tmp_path)]) == format_report(str(tmp_path))  # nothing listed twice


def test_report_of_the_every_method_demo_shows_margins_once(tmp_path):
    """The demo's layout since every method is benchmarked (benchmarks/every_method_vs_random.py):
    <method>_s<seed>/ pretraining runs, eval/<method>_s<seed>/ benchmark folders, random_s<seed>/."""
    from d2ssl.utils.report import format_any_report

    _write_run(tmp_path / "rotnet_s0", [{"iteration": 19, "rotnet_accuracy": 0.3},
                                        {"iteration": 39, "rotnet_accuracy": 0.9}])
    _write_run(tmp_path / "detection_random", [{"iteration": 99, "bbox/AP": 7.5, "bbox/AP50": 20.0}])
    trunks = (("rotnet_s0", (81.0, 82.0)), ("random_s0", (77.0, 78.5)), ("random_s1", (76.0, 77.0)))
    for name, values in trunks:
        results = [{"step": f"linear_grid_seed{i}", "kind": "linear_grid", "metric": "res4/test_top1",
                    "value": v, "eval_seed": i} for i, v in enumerate(values)]
        results.append({"step": "knn", "kind": "knn", "metric": "res4/top1@20", "value": values[0] - 2})
        _json(tmp_path / "eval" / name / "results.json", {"results": results})
        _json(tmp_path / "eval" / name / "suite.json", {"suite": "tiny_layers"})
    assert pretraining_rows(str(tmp_path))[0][:4] == ["rotnet_s0", "rotnet_accuracy", "0.300", "0.900"]
    text = format_any_report([str(tmp_path)])
    assert "Every method against random trunks" in text and "random seeds [0, 1]" in text
    # rotnet: worst run 81.0, best random run 78.5 -> +2.5 on the linear probe; kNN 79.0 - 75.0 = +4.0,
    # the best margin, with its spreads (one pretrained run against two random ones).
    row = next(line for line in text.splitlines() if line.startswith("| rotnet "))
    assert "res4 knn_top1@20" in row and " +4.00 " in row and "res4 +2.5; +4.0" in row
    assert "79.00 / 79.00 / 79.00" in row and "74.00 / 74.50 / 75.00" in row and "1 vs 2" in row
    assert "Benchmarks (one row per trunk" not in text  # the trunks' folders are in the margins, not twice


def test_chance_of_clusterfit_and_of_many_negatives_is_shown(tmp_path):
    _write_run(tmp_path / "clusterfit_s0", [{"iteration": 19, "clusterfit_accuracy": 0.06},
                                            {"iteration": 39, "clusterfit_accuracy": 0.44}],
               "model:\n  head:\n    dims: [128, 50]\n")
    config = "model:\n  loss:\n    negative_sampling_params:\n      num_negatives: 4096\n"
    npid = [{"iteration": 19, "nce_top1": 0.0}, {"iteration": 39, "nce_top1": 0.031}]
    _write_run(tmp_path / "npid_s0", npid, config)
    rows = {r[0]: r for r in pretraining_rows(str(tmp_path))}
    assert rows["clusterfit_s0"][1:5] == ["clusterfit_accuracy", "0.060", "0.440", "0.020"]  # 1 / 50 clusters
    assert rows["npid_s0"][2:5] == ["0.000", "0.031", "2.4e-04"]  # 1 / 4097, not "0.000"
