"""tools/benchmark.py: a suite of evaluation steps run from one checkpoint, each step skipped when done for
the same content, resumable after a failure or a kill, watched over a pretraining, and sent to SLURM."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from detectron2.config import instantiate

import d2ssl.evaluation.benchmark_suite as bench
import d2ssl.evaluation.linear_grid as linear_grid_module
from d2ssl.checkpoint.layouts import detectron2_to_torchvision_key
from d2ssl.engine.train_loop import setup_config
from d2ssl.utils.safe_io import sha256_of

REPO = Path(__file__).resolve().parents[2]

# A suite of the cheap steps on few images, written as a user would write their own.
SMALL_SUITE = """
steps = dict(
    features=dict(kind="extract_features", config="configs/eval/tiny/extract_features.py",
                  overrides=["dataloader.train.dataset.limit=120", "dataloader.test.dataset.limit=60"]),
    knn=dict(kind="knn", features="features", params=dict(k={k})),
    grid=dict(kind="linear_grid", features="features",
              params=dict(lrs=[0.01], weight_decays=[0.0], epochs=2, batch_size=64)),
)
"""


def _write_suite(folder: Path, k=(5, 10)) -> str:
    path = folder / "small_suite.py"
    path.write_text(SMALL_SUITE.format(k=list(k)))
    return str(path)


def _tiny_trunk_state(seed: int) -> dict[str, torch.Tensor]:
    cfg = setup_config(str(REPO / "configs/tiny/rotnet.py"))
    torch.manual_seed(seed)
    return instantiate(cfg.model).state_dict()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    """A d2ssl checkpoint of the tiny RotNet, the same trunk in torchvision's layout, and other weights."""
    folder = tmp_path_factory.mktemp("weights")
    state = _tiny_trunk_state(1)
    torch.save({"model": state, "iteration": 9}, folder / "d2ssl.pth")
    trunk = {k[len("trunk."):]: v for k, v in state.items() if k.startswith("trunk.")}
    torch.save({detectron2_to_torchvision_key(k): v for k, v in trunk.items()}, folder / "torchvision.pth")
    torch.save({"model": _tiny_trunk_state(2), "iteration": 9}, folder / "other.pth")
    return {name: str(folder / f"{name}.pth") for name in ("d2ssl", "torchvision", "other")}


def _results(output_dir: Path) -> dict:
    return json.loads((output_dir / "results.json").read_text())


def _metric(report: dict, step: str, metric: str) -> dict:
    return next(r for r in report["results"] if r["step"] == step and r["metric"] == metric)


def test_tiny_suite_end_to_end_for_a_d2ssl_checkpoint(checkpoints, tmp_path, capsys):
    out = tmp_path / "bench"
    status = bench.benchmark_main(["--weights", checkpoints["d2ssl"], "--suite", "tiny",
                                   "--output-dir", str(out)])
    assert status == 0
    report = _results(out)
    assert [s["status"] for s in report["steps"]] == ["done"] * 6
    sha = sha256_of(checkpoints["d2ssl"])
    assert {r["weights_sha256"] for r in report["results"]} == {sha}
    layers = ("conv1", "res2", "res3", "res4", "res5")  # every layer, as VISSL judges Jigsaw and RotNet
    for layer in layers:
        knn = _metric(report, "knn", f"{layer}/top1@20")
        assert 10.0 < knn["value"] <= 100.0 and knn["scored_on"].startswith("test")
        grid = _metric(report, "linear_grid", f"{layer}/test_top1")
        assert grid["selected_on"].startswith("val") and grid["scored_on"] == "test"  # never selected on test
    # Each layer's kNN is that layer's: the five values are not one layer's repeated.
    assert len({_metric(report, "knn", f"{layer}/top1@20")["value"] for layer in layers}) > 1
    assert sorted(report["steps"][2]["info"]) == sorted(layers)
    best = _metric(report, "linear", "best/top1")
    assert best["selected_on"].startswith("val")
    assert "bbox/AP" in {r["metric"] for r in report["results"] if r["step"] == "detection"}
    assert all(r["time"] and r["config"] for r in report["results"])
    table = (out / "results.md").read_text()
    for step in ("features", "knn", "linear_grid", "tsne", "linear", "detection"):
        assert f"| {step} " in table
    for png in ("knn_topk.png", "top1_per_layer.png", "tsne/tsne.png"):
        assert (out / png).stat().st_size > 0
    # Each step ran its tool in its own folder, with its own log.
    assert (out / "linear" / "summary.json").is_file() and (out / "detection" / "metrics.json").is_file()
    # Tools run in this process leave no log handler behind: the linear step's log is not in the features'.
    assert "training on" in (out / "linear" / "log.txt").read_text()
    assert "training on" not in (out / "features" / "log.txt").read_text()
    assert "linear" in capsys.readouterr().out


def test_foreign_layout_gives_the_features_of_the_same_trunk(checkpoints, tmp_path):
    suite = _write_suite(tmp_path)
    reports = {}
    for name in ("d2ssl", "torchvision"):
        out = tmp_path / name
        assert bench.benchmark_main(["--weights", checkpoints[name], "--suite", suite,
                                     "--output-dir", str(out), "--only", "features", "knn"]) == 0
        reports[name] = _results(out)
    features = {n: r["steps"][0]["info"]["test"]["weights_digest"] for n, r in reports.items()}
    # Two files, two sha256; the same trunk loaded from both, so the same kNN numbers.
    assert features["d2ssl"] == features["torchvision"]
    assert reports["d2ssl"]["weights_sha256"] != reports["torchvision"]["weights_sha256"]
    values = {n: [r["value"] for r in report["results"]] for n, report in reports.items()}
    assert values["d2ssl"] == values["torchvision"] and len(values["d2ssl"]) == 4
    assert reports["d2ssl"]["steps"][2]["status"] == "not run"  # --only


def test_rerun_after_a_failed_step_and_a_kill_skips_finished_steps_by_content(checkpoints, tmp_path,
                                                                              monkeypatch):
    suite, out = _write_suite(tmp_path), tmp_path / "bench"
    argv = ["--weights", checkpoints["d2ssl"], "--suite", suite, "--output-dir", str(out)]
    real_grid = linear_grid_module.linear_grid_on_cached_features
    calls = {"grid": 0, "config": 0}

    def grid_failing_once(*args, **kwargs):
        calls["grid"] += 1
        if calls["grid"] == 1:
            raise RuntimeError("node lost")
        return real_grid(*args, **kwargs)

    monkeypatch.setattr(linear_grid_module, "linear_grid_on_cached_features", grid_failing_once)
    assert bench.benchmark_main(argv) == 1
    report = _results(out)
    assert [s["status"] for s in report["steps"]] == ["done", "done", "failed"]  # the kNN still ran
    assert "FAILED: RuntimeError: node lost" in (out / "results.md").read_text()
    features_record = (out / "features" / "step.json").read_text()
    # A kill during the kNN step leaves its record "running".
    knn_record = json.loads((out / "knn" / "step.json").read_text())
    (out / "knn" / "step.json").write_text(json.dumps({**knn_record, "status": "running"}))

    real_run = bench._run_config_step

    def counting(*args, **kwargs):
        calls["config"] += 1
        return real_run(*args, **kwargs)

    monkeypatch.setattr(bench, "_run_config_step", counting)
    assert bench.benchmark_main(argv) == 0
    assert calls["config"] == 0  # the features were not extracted again
    assert (out / "features" / "step.json").read_text() == features_record
    report = _results(out)
    assert [s["status"] for s in report["steps"]] == ["done"] * 3
    assert [s["attempts"] for s in report["steps"]] == [1, 2, 2]
    assert _metric(report, "knn", "top1@5")["value"] == pytest.approx(knn_record["metrics"][0]["value"])


def test_changed_step_reruns_in_a_fresh_folder_and_other_weights_are_refused(checkpoints, tmp_path):
    out = tmp_path / "bench"
    argv = ["--weights", checkpoints["d2ssl"], "--output-dir", str(out), "--only", "features", "knn"]
    assert bench.benchmark_main([*argv, "--suite", _write_suite(tmp_path, k=(5,))]) == 0
    assert bench.benchmark_main([*argv, "--suite", _write_suite(tmp_path, k=(7,))]) == 0
    report = _results(out)
    assert {r["metric"] for r in report["results"]} == {"top1@7", "top5@7"}
    moved = list((out / bench.PREVIOUS_STEPS).iterdir())
    assert len(moved) == 1 and moved[0].name.startswith("knn-")
    assert json.loads((moved[0] / "step.json").read_text())["metrics"][0]["metric"] == "top1@5"
    with pytest.raises(bench.BenchmarkError,
                       match="holds the benchmark of other weights .*another --output-dir"):
        bench.run_suite(checkpoints["other"], _write_suite(tmp_path), str(out))


def test_watch_evaluates_each_new_checkpoint_once(checkpoints, tmp_path):
    run = tmp_path / "pretraining"
    run.mkdir()
    for iteration, name in ((4, "d2ssl"), (9, "other")):
        (run / f"model_{iteration:07d}.pth").write_bytes(Path(checkpoints[name]).read_bytes())
    suite, out = _write_suite(tmp_path), tmp_path / "watch"
    suite = bench.load_suite(suite)
    suite = bench.Suite(suite.name, suite.path, suite.steps[:2])  # features and kNN
    table = bench.watch(str(run), suite, str(out), max_polls=1)
    assert table["iterations"] == [4, 9]
    assert table["rows"]["4"]["knn/top1@5"] != table["rows"]["9"]["knn/top1@5"]  # two trunks
    assert (out / "top1_vs_iteration.png").stat().st_size > 0
    assert re.search(r"^\| 4 +\|", (out / "watch.md").read_text(), re.M)
    first = (out / "iter_0000004" / "features" / "step.json").read_text()
    # A later poll sees one new checkpoint; the period keeps iterations 9 and 19 (iteration + 1 = 10, 20).
    (run / "model_0000014.pth").write_bytes(Path(checkpoints["d2ssl"]).read_bytes())
    (run / "model_0000019.pth").write_bytes(Path(checkpoints["d2ssl"]).read_bytes())
    table = bench.watch(str(run), suite, str(out), period=10, max_polls=1)
    assert table["iterations"] == [4, 9, 19]
    assert (out / "iter_0000004" / "features" / "step.json").read_text() == first
    assert not (out / "iter_0000014").exists()


@pytest.mark.parametrize("suite,graph", [
    ("jigclu", ["benchmarks: array of 4 [linear, semi_1percent, semi_10percent, coco_fpn], 8 GPUs",
                "table: job [results.json, results.md], 0 GPUs, after benchmarks (any end)"]),
    ("vissl", ["features: job [features], 8 GPUs",
               "after_features: job [knn], 1 GPUs, after features (ok)",
               "benchmarks: array of 4 [linear, semi_1percent, semi_10percent, voc07_c4], 8 GPUs",
               "table: job [results.json, results.md], 0 GPUs, after features and after_features and "
               "benchmarks (any end)"]),
    ("quick", ["features: job [features], 8 GPUs",
               "after_features: array of 3 [knn, linear_grid, tsne], 1 GPUs, after features (ok)"]),
])
def test_submit_dry_run_prints_the_job_graph_of_the_full_suites(suite, graph, capsys, tmp_path):
    argv = ["--weights", "zoo:jigclu_r50_200ep", "--suite", suite, "--output-dir", "out/b"]
    assert bench.benchmark_main([*argv, "--submit", "--dry-run", "--log-folder", str(tmp_path / "%j")]) == 0
    text = capsys.readouterr().out
    for line in graph:
        assert f"#   {line}" in text, line
    scripts = text.split("# ---- ")[1:]
    assert len(scripts) == len(bench.plan_jobs(bench.load_suite(suite), 8))
    for script in scripts:
        assert "#SBATCH --ntasks-per-node=1" in script and "submitit.core._submit" in script
    if suite != "jigclu":
        after = next(s for s in scripts if s.startswith("after_features"))
        assert re.search(r"#SBATCH --dependency='?afterok:\$\{FEATURES_JOB_ID\}", after)
        assert "--only knn --num-gpus 1" in after
    table = next(s for s in scripts if s.startswith("table"))
    assert re.search(r"#SBATCH --dependency='?afterany:\$\{[A-Z_]+_JOB_ID\}", table)
    assert "--tables-only" in table
    if suite == "quick":
        return
    benchmarks = next(s for s in scripts if s.startswith("benchmarks"))
    assert "#SBATCH --array=0-3%4" in benchmarks and "#SBATCH --gpus-per-node=8" in benchmarks
    assert f"--weights zoo:jigclu_r50_200ep --suite {REPO}/configs/suites/{suite}.py --output-dir " \
           f"{Path('out/b').absolute()}" in benchmarks
    assert "--only semi_1percent --num-gpus 8" in benchmarks


@pytest.mark.parametrize("steps,message", [
    ("dict(a=dict(kind='knnn', features='f'))", r"steps.a: kind='knnn'; choose one of"),
    ("dict(a=dict(kind='knn', features='f'))", r"steps.a: features='f' must name an earlier extract_"),
    ("dict(a=dict(kind='train_linear', config='no/such.py'))", r"steps.a: config='no/such.py' is not a file"),
    ("dict(a=dict(kind='knn', feature='f'))", r"steps.a: unknown key 'feature'"),
    ("[dict(kind='knn')]", r"a suite file defines steps = dict\("),
])
def test_bad_suite_files_are_refused_naming_the_step_and_key(steps, message, tmp_path):
    path = tmp_path / "bad.py"
    path.write_text(f"steps = {steps}\n")
    with pytest.raises(bench.BenchmarkError, match=f"{re.escape(str(path))}: {message}"):
        bench.load_suite(str(path))
    with pytest.raises(bench.BenchmarkError, match=r"--suite 'nope': no such suite file; .*'tiny'"):
        bench.load_suite("nope")


def test_tables_plot_top1_per_layer_and_knn_against_k(tmp_path):
    def result(step, kind, metric, value):
        return {"step": step, "kind": kind, "metric": metric, "value": value}

    knn = [result("knn", "knn", f"top1@{k}", v) for k, v in ((5, 60.0), (20, 65.0))]
    heads = [result("linear", "train_linear", f"{h}/top1", v) for h, v in (("conv1", 20.0), ("res5", 50.0))]
    others = [result("linear", "train_linear", "best/top1", 51.0),
              result("det", "train_detection", "bbox/AP", None)]
    report = {"results": knn + heads + others}
    bench._plots(str(tmp_path), report)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["knn_topk.png", "linear_heads.png"]
    layered = [result("grid", "linear_grid", f"{layer}/test_top1", v) for layer, v in (("res4", 70.0),
                                                                                     ("res5", 65.0))]
    (tmp_path / "layers").mkdir()
    bench._plots(str(tmp_path / "layers"), {"results": layered})
    assert [p.name for p in (tmp_path / "layers").iterdir()] == ["top1_per_layer.png"]
    assert bench._metric("bbox/AP", float("nan"), None, "test")["value"] is None  # strict JSON, shown n/a


def test_linear_numbers_selected_on_test_are_left_out():
    optimistic = {"top1": 60.0, "conv1/top1": 20.0, "res5/top1": 60.0, "scored_on": "test",
                  "selected_on": None,
                  "head_rule": "top1/top5: the head with the highest test top-1 (optimistic across heads)",
                  "best": {"top1": 61.0, "selected_on": "test", "label": "best on test (optimistic)"}}
    assert [m["metric"] for m in bench.linear_summary_metrics(optimistic)] == ["conv1/top1", "res5/top1"]
    selected = dict(optimistic, selected_on="val: 0.1 of every class", **{"val/top1": 58.0},
                    best={"top1": 59.0, "selected_on": "val: 0.1 of every class", "scored_on": "test"})
    metrics = {m["metric"]: m for m in bench.linear_summary_metrics(selected)}
    assert sorted(metrics) == ["best/top1", "conv1/top1", "res5/top1", "top1"]
    assert metrics["top1"]["selected_on"].startswith("val")
    assert metrics["best/top1"]["selected_on"].startswith("val")
    assert all(m["scored_on"] == "test" for m in metrics.values())


def test_eval_seeds_repeat_the_seeded_steps_and_extract_once(checkpoints, tmp_path, monkeypatch):
    suite, out = _write_suite(tmp_path), tmp_path / "bench"
    argv = ["--weights", checkpoints["d2ssl"], "--suite", suite, "--output-dir", str(out)]
    assert bench.benchmark_main([*argv, "--eval-seeds", "0", "1"]) == 0
    report = _results(out)
    assert [s["step"] for s in report["steps"]] == ["features", "knn", "grid_seed0", "grid_seed1"]
    grids = {s: _metric(report, f"grid_seed{s}", "test_top1") for s in (0, 1)}
    for seed, grid in grids.items():
        assert grid["eval_seed"] == seed and f"(seed {seed}," in grid["selected_on"]  # its own held-out rows
    record = json.loads((out / "grid_seed1" / "step.json").read_text())
    assert record["params"]["seed"] == record["params"]["val_seed"] == 1
    spread = next(s for s in report["seed_spread"] if s["metric"] == "test_top1")
    values = sorted(g["value"] for g in grids.values())
    assert spread["step"] == "grid" and spread["n"] == 2
    assert (spread["min"], spread["max"]) == (values[0], values[1])
    assert spread["median"] == pytest.approx(sum(values) / 2)
    assert "Over the evaluation seeds" in (out / "results.md").read_text()
    # A third seed runs only its own grid: the features, the kNN and the first two grids are done.
    ran = []
    real = bench._run_features_step
    monkeypatch.setattr(bench, "_run_features_step", lambda step, *a: ran.append(step.name) or real(step, *a))
    monkeypatch.setattr(bench, "_run_config_step", lambda *a: pytest.fail("features extracted again"))
    assert bench.benchmark_main([*argv, "--eval-seeds", "0", "1", "2"]) == 0
    assert ran == ["grid_seed2"]
    with pytest.raises(bench.BenchmarkError, match=r"--eval-seeds \[1, 1\]: a seed is given twice"):
        bench.with_eval_seeds(bench.load_suite(suite), [1, 1])


def test_seeded_random_trunks_are_named_by_their_seed(tmp_path):
    suite = bench.load_suite(_write_suite(tmp_path))
    digests = {}
    for weights, folder in (("random:3", "a"), ("random:4", "b"), ("random:3", "c")):
        out = tmp_path / folder
        report = bench.run_suite(weights, suite, str(out), only=["features"])
        assert report["weights_sha256"] == weights and report["steps"][0]["status"] == "done"
        digests[folder] = report["steps"][0]["info"]["test"]["weights_digest"]
    assert digests["a"] == digests["c"] != digests["b"]  # seed 3 twice: one trunk; seed 4: another
    # A training step draws its random trunk and its head from one train.seed: with an evaluation seed
    # the two cannot be told apart, so that step is refused rather than run on the wrong trunk.
    linear = bench.Step(name="linear", kind="train_linear", config=str(REPO / "configs/eval/tiny/linear.py"))
    assert "train.seed=3" in bench.step_overrides(linear, "random:3", str(tmp_path / "l"))
    seeded = bench.with_eval_seeds(bench.Suite("s", "s.py", (linear,)), [0]).steps[0]
    assert seeded.name == "linear_seed0" and "train.seed=0" in seeded.overrides
    with pytest.raises(bench.BenchmarkError, match=r"random:3 with an evaluation seed.*--weights random "):
        bench.step_overrides(seeded, "random:3", str(tmp_path / "l"))
    with pytest.raises(bench.BenchmarkError, match=r"no such file .*'random:<seed>'"):
        bench.weights_identity("random:x")


def test_submit_dry_run_with_eval_seeds_sends_one_job_per_seeded_step(capsys, tmp_path):
    argv = ["--weights", "random:2", "--suite", "quick", "--output-dir", "out/b", "--eval-seeds", "0", "1",
            "--submit", "--dry-run", "--log-folder", str(tmp_path / "%j")]
    assert bench.benchmark_main(argv) == 0
    text = capsys.readouterr().out
    graph = "#   after_features: array of 4 [knn, linear_grid_seed0, linear_grid_seed1, tsne], 1 GPUs"
    assert f"{graph}, after features (ok)" in text
    # Each job reruns tools/benchmark.py with the same seeds, so its step names resolve to the same steps.
    after = next(s for s in text.split("# ---- ")[1:] if s.startswith("after_features"))
    assert "--weights random:2 " in after and "--eval-seeds 0 1 --only" in after
