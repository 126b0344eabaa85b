"""What runs learned: the demo's tables (``format_report``: what each pretraining run learned, where its
files are), and the report of any run folders or trees of them (``format_any_report``: benchmark suites
side by side, one row per trunk, and every other run with its data, weights, final and selected metrics)."""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Any

from omegaconf import OmegaConf
from tabulate import tabulate

from d2ssl.utils.margins import RANDOM, format_margins, margin_summary, read_trunk_scores
from d2ssl.utils.metrics import metric_trajectory, read_metrics

# Pretext metric each meta-architecture logs, and its chance level (None: no fixed chance level).
PRETEXT_METRICS: dict[str, tuple[str, float | None]] = {
    "jigsaw": ("jigsaw_accuracy", 1 / 24),
    "rotnet": ("rotnet_accuracy", 1 / 4),
    # Positive scored above all K negatives; chance 1 / (K + 1) depends on the run's K.
    "pirl": ("nce_top1_image", None),
    "npid": ("nce_top1", None),
    "jigclu": ("jigclu_location_accuracy", 1 / 4),
    # Pseudo-label top-1; chance 1 / K for the run's K clusters.
    "clusterfit": ("clusterfit_accuracy", None),
}


def run_chance(run_dir: str) -> float | None:
    """The top-1 chance level of a run's pretext from its config.yaml: ``1 / (K + 1)`` for an NCE run with
    K negatives, ``1 / K`` for a ClusterFit run's K pseudo-classes; None when the config says neither."""
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(path):
        return None
    cfg = OmegaConf.load(path)
    num_negatives = OmegaConf.select(cfg, "model.loss.negative_sampling_params.num_negatives")
    if num_negatives is not None:
        return 1.0 / (num_negatives + 1)
    dims = OmegaConf.select(cfg, "model.head.dims")
    return 1.0 / int(dims[-1]) if dims and str(dims[-1]).isdigit() else None


def _rate(value: float) -> str:
    """Three decimals, or two significant digits below 0.001 (an NCE chance of 1/4097 is not 0.000)."""
    return f"{value:.3f}" if value == 0 or value >= 0.001 else f"{value:.1e}"


def shown_path(path: str) -> str:
    """``path`` relative to the working directory when inside it (tables stay narrow), else as given."""
    relative = os.path.relpath(os.path.abspath(path))
    return path if relative.startswith("..") else relative


def _method_folders(demo_dir: str) -> list[tuple[str, str]]:
    """``(method, folder name)`` of the pretraining runs of ``demo_dir``: ``<method>`` or ``<method>_s<seed>``
    (a seed of benchmarks/every_method_vs_random.py), in PRETEXT_METRICS' order, then by seed."""
    names = sorted(os.listdir(demo_dir)) if os.path.isdir(demo_dir) else []
    out = []
    for method in PRETEXT_METRICS:
        out += [(method, n) for n in names if (n == method or re.fullmatch(rf"{method}_s\d+", n))
                and os.path.isdir(os.path.join(demo_dir, n))]
    return out


def pretraining_rows(demo_dir: str) -> list[list]:
    """One row per run folder of ``demo_dir`` named after a method (``<method>`` or ``<method>_s<seed>``):
    metric, first, last, chance."""
    rows = []
    for method, name in _method_folders(demo_dir):
        key, chance = PRETEXT_METRICS[method]
        run = os.path.join(demo_dir, name)
        try:
            first, last = metric_trajectory(run, key)
        except (FileNotFoundError, KeyError) as e:
            rows.append([name, key, "-", "-", "-", f"({e})"])
            continue
        if chance is None:
            chance = run_chance(run)
        rows.append([name, key, _rate(first), _rate(last), "-" if chance is None else _rate(chance),
                     shown_path(run)])
    return rows


def _final_box_ap(run: str) -> tuple[float, float] | None:
    try:
        evals = [r for r in read_metrics(run) if "bbox/AP" in r]
    except FileNotFoundError:
        return None
    return (evals[-1]["bbox/AP"], evals[-1]["bbox/AP50"]) if evals else None


def detection_rows(demo_dir: str) -> list[list]:
    """One row per ``detection*`` run folder: the COCO box AP/AP50 of its last evaluation."""
    rows = []
    for name in sorted(os.listdir(demo_dir)):
        run = os.path.join(demo_dir, name)
        if not name.startswith("detection") or not os.path.isdir(run):
            continue
        final = _final_box_ap(run)
        if final is None:
            rows.append([name, "-", "-", "-", shown_path(run)])
            continue
        last_iter = [r for r in read_metrics(run) if "bbox/AP" in r][-1]["iteration"]
        rows.append([name, last_iter, f"{final[0]:.1f}", f"{final[1]:.1f}", shown_path(run)])
    return rows


def _read_json(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _evaluation(features_dir: str) -> tuple[float | None, float | None]:
    """(fast-path linear test top-1 of the grid cell selected on validation, kNN top-1 at k=20) written
    under ``features_dir`` by ``tools/linear_grid.py`` and ``tools/knn_eval.py``. A ``linear_grid.json``
    without ``selected`` (an older one, whose "best" cell was chosen on the test split) gives no number."""
    grid = _read_json(os.path.join(features_dir, "linear_grid.json"))
    knn_files = sorted(glob.glob(os.path.join(features_dir, "knn_*.json")))  # knn_<layer>.json
    knn = _read_json(knn_files[0]) if knn_files else None
    linear = grid.get("selected", {}).get("test_top1") if grid else None
    return linear, (knn.get("top1@20") if knn else None)


def _pair(pretrained: float | None, random: float | None) -> str:
    if pretrained is None or random is None:
        return "-"
    return f"{pretrained:.1f} vs {random:.1f} ({pretrained - random:+.1f})"


def transfer_rows(demo_dir: str) -> list[list]:
    """What pretraining bought, one row per pretraining run that was evaluated: its pretext metric
    (last value and chance), then linear top-1, kNN top-1 and box AP of the pretrained trunk against a
    randomly initialised trunk of the same architecture under the same evaluation.

    Reads ``eval/<method>/`` and ``eval/<method>_random/`` (features, ``linear_grid.json``,
    ``knn_<layer>.json``; the demo links ``<method>_random`` to the random trunk seen at that method's
    image size), and ``detection_<method>/`` and ``detection_random/`` (COCO box AP).
    """
    eval_dir = os.path.join(demo_dir, "eval")
    methods = sorted(m for m in (os.listdir(eval_dir) if os.path.isdir(eval_dir) else [])
                     if "random" not in m and os.path.isdir(os.path.join(eval_dir, m))
                     and not os.path.isfile(os.path.join(eval_dir, m, "results.json")))  # margins' folders
    pretext = {row[0]: row for row in pretraining_rows(demo_dir)}
    random_ap = _final_box_ap(os.path.join(demo_dir, "detection_random"))
    rows = []
    for method in methods:
        linear, knn = _evaluation(os.path.join(eval_dir, method))
        linear_random, knn_random = _evaluation(os.path.join(eval_dir, f"{method}_random"))
        row = pretext.get(method)
        metric = f"{row[1]} {row[3]} (chance {row[4]})" if row else "-"
        ap = _final_box_ap(os.path.join(demo_dir, f"detection_{method}"))
        rows.append([method, metric, _pair(linear, linear_random), _pair(knn, knn_random),
                     _pair(ap[0] if ap else None, random_ap[0] if random_ap else None)])
    return rows


def format_report(demo_dir: str) -> str:
    pretraining = tabulate(
        pretraining_rows(demo_dir), headers=["method", "pretext metric", "first", "last", "chance", "output"],
        tablefmt="github", disable_numparse=True,
    )
    detection = tabulate(
        detection_rows(demo_dir), headers=["detection fine-tune", "iterations", "box AP", "AP50", "output"],
        tablefmt="github", disable_numparse=True,
    )
    text = f"Pretraining\n{pretraining}\n\nDetection transfer (COCO evaluation)\n{detection}"
    trunks = read_trunk_scores(os.path.join(demo_dir, "eval"))
    if RANDOM in trunks and len(trunks) > 1:
        random_seeds = sorted(trunks[RANDOM])
        title = (f"Every method against random trunks (tools/benchmark.py, every layer; margin: worst "
                 f"pretrained run minus best random run over every seed; random seeds {random_seeds})")
        text += f"\n\n{title}\n{format_margins(margin_summary(trunks))}"
    transfer = transfer_rows(demo_dir)
    if transfer:
        table = tabulate(
            transfer,
            headers=["method", "pretext metric (last)",
                     "linear top-1 on test (cell selected on val): pretrained vs random",
                     "kNN top-1 (k 20): pretrained vs random", "box AP: pretrained vs random"],
            tablefmt="github", disable_numparse=True,
        )
        title = "What pretraining bought (same evaluation; random: a random trunk of the same architecture)"
        text += f"\n\n{title}\n{table}"
    return text


# ---------------------------------------------------------------- any run folder, or a tree of them

# What a folder holds that says a tool ran there, by the file it leaves.
BENCHMARK_FILES = ("results.json", "suite.json")
_RECOGNISED = ("metrics.json", "summary.json", "linear_grid.json", "clustering_summary.json", "results.json")


class ReportError(FileNotFoundError):
    """A folder to report is missing; the message is one line naming it."""


def _is_run_folder(folder: str, names: list[str]) -> bool:
    return any(n in names for n in _RECOGNISED) or any(
        n.endswith("_meta.json") or (n.startswith("knn_") and n.endswith(".json")) for n in names)


def find_run_folders(root: str) -> list[str]:
    """Every folder under ``root`` (itself included) where a d2ssl tool wrote its outputs, in path order.
    A benchmark folder (``results.json`` + ``suite.json``) stands for its steps: they are not listed
    again; ``previous_runs/`` and ``previous_steps/`` (runs moved aside) are left out."""
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in ("previous_runs", "previous_steps"))
        if all(n in names for n in BENCHMARK_FILES):
            found.append(folder)
            dirs[:] = []
        elif _is_run_folder(folder, names):
            found.append(folder)
    return found


def _config(folder: str) -> Any:
    path = os.path.join(folder, "config.yaml")
    try:
        return OmegaConf.load(path) if os.path.isfile(path) else None
    except Exception:  # noqa: BLE001  (a config a report cannot read: its row says "-")
        return None


def _describe_call(node: Any) -> str:
    """``get_dataset_dicts(names=fashion_mnist_train, limit=600)`` for a config's data set node."""
    if node is None:
        return "-"
    if not OmegaConf.is_config(node):
        return str(node)
    target = str(node.get("_target_", "")).rsplit(".", 1)[-1]
    def show(value: Any) -> Any:
        if OmegaConf.is_dict(value):
            return _describe_call(value)
        return OmegaConf.to_container(value) if OmegaConf.is_list(value) else value

    args = ", ".join(f"{k}={show(v)}" for k, v in node.items() if k != "_target_" and v is not None)
    return f"{target}({args})" if target else args


def _data_and_weights(folder: str) -> tuple[str, str]:
    cfg = _config(folder)
    metas = sorted(glob.glob(os.path.join(folder, "*_meta.json")))
    if cfg is not None:
        data = _describe_call(OmegaConf.select(cfg, "dataloader.train.dataset"))
        weights = (OmegaConf.select(cfg, "train.weights_init.PARAMS_FILE") or
                   OmegaConf.select(cfg, "train.init_checkpoint") or "random init")
        return data, str(weights)
    if metas:
        meta = _read_json(metas[0]) or {}
        data = ", ".join(f"{os.path.basename(m)[:-len('_meta.json')]}: "
                         f"{(_read_json(m) or {}).get('num_images')} images" for m in metas)
        trunk = str(meta.get("weights_digest"))[:12]
        return data, f"{meta.get('checkpoint') or 'random init'} (trunk {trunk})"
    return "-", "-"


def _fmt(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def describe_run_folder(folder: str) -> list[str]:
    """``[folder, what ran, data, weights, final metrics, selected metric]`` of one run folder."""
    names = set(os.listdir(folder))
    what, final, selected = [], [], []
    records = []
    if "metrics.json" in names:
        try:
            records = read_metrics(folder)
        except (OSError, ValueError):
            records = []
    boxes = [r for r in records if "bbox/AP" in r]
    summary = _read_json(os.path.join(folder, "summary.json")) if "summary.json" in names else None
    if boxes:
        what.append("detection")
        final.append(f"box AP {_fmt(boxes[-1]['bbox/AP'])}, AP50 {_fmt(boxes[-1].get('bbox/AP50'))} "
                     f"(iteration {boxes[-1].get('iteration')})")
    elif summary is not None:
        what.append("linear / semi-supervised")
        final.append(f"top1 {_fmt(summary.get('top1'))} (last evaluation, "
                     f"{summary.get('scored_on', 'test')})")
        best = summary.get("best") or {}
        # A "best" chosen on the test split (no validation split) is no selection: not shown.
        if summary.get("selected_on") and best.get("top1") is not None:
            selected.append(f"top1 {_fmt(best['top1'])} (selected on {summary['selected_on']})")
    elif records:
        pretext = [(m, key) for m, (key, _) in PRETEXT_METRICS.items() if any(key in r for r in records)]
        losses = sorted({k for r in records for k in r if k == "total_loss" or k.startswith("loss")})
        if pretext:
            method, key = pretext[0]
            what.append(f"pretraining ({method})")
            first, last = metric_trajectory(folder, key)
            final.append(f"{key} {first:.3f} -> {last:.3f}")
        else:
            what.append("training")
        if losses:
            last = [r for r in records if losses[0] in r][-1]
            final.append(f"{losses[0]} {_fmt(last[losses[0]])} (iteration {last.get('iteration')})")
    if "clustering_summary.json" in names:
        cluster = _read_json(os.path.join(folder, "clustering_summary.json")) or {}
        what.append("ClusterFit clustering")
        quality = cluster.get("train_quality") or {}
        final.append(f"{cluster.get('NUM_CLUSTERS', '?')} clusters of {cluster.get('num_images', '?')} images"
                     + "".join(f", {k} {quality[k]:.3f}" for k in ("nmi", "purity") if k in quality))
    if any(n.endswith("_meta.json") for n in names):
        what.append("features")
    for name in sorted(n for n in names if n.startswith("knn_") and n.endswith(".json")):
        knn = _read_json(os.path.join(folder, name)) or {}
        what.append(f"kNN ({knn.get('protocol', 'trunk')}, {knn.get('layer', '?')})")
        final.append(", ".join(f"{k} {_fmt(v)}" for k, v in knn.items() if k.startswith("top1@")))
    if "linear_grid.json" in names:
        grid = _read_json(os.path.join(folder, "linear_grid.json")) or {}
        what.append("linear grid")
        chosen = grid.get("selected")
        if chosen and "test_top1" in chosen:
            selected.append(f"test top1 {_fmt(chosen['test_top1'])} (cell selected on "
                            f"{grid.get('selected_on')})")
    if "results.json" in names:
        report = _read_json(os.path.join(folder, "results.json")) or {}
        what.append(f"benchmark suite {report.get('suite', '?')}")
        done = [s for s in report.get("steps", []) if s.get("status") == "done"]
        final.append(f"{len(done)} of {len(report.get('steps', []))} steps done")
    data, weights = _data_and_weights(folder)
    if "results.json" in names:
        weights = str((_read_json(os.path.join(folder, "results.json")) or {}).get("weights"))
    return [folder, ", ".join(what) or "-", data, weights, "; ".join(final) or "-",
            "; ".join(selected) or "-"]


def _headline(metric: str) -> bool:
    # The comparison keeps the numbers papers report: top-1 (not top-5) and box AP / AP50.
    return ("top1" in metric and not metric.startswith("val/")) or metric in ("bbox/AP", "bbox/AP50")


def _cell(result: dict | None, failed: bool) -> str:
    if result is None:
        return "FAILED" if failed else "-"
    return "n/a" if result["value"] is None else _fmt(result["value"])


def benchmark_rows(folders: list[str]) -> tuple[list[str], list[list[str]]]:
    """One row per benchmark folder (a trunk): its headline metrics by ``step metric``, and, for a
    ``zoo:<name>`` trunk, the numbers its reference published (``d2ssl.checkpoint.zoo``)."""
    from d2ssl.checkpoint.zoo import ZooError, is_zoo_name, published_numbers

    reports = [(f, _read_json(os.path.join(f, "results.json")) or {}) for f in folders]
    columns: list[str] = []
    for _, report in reports:
        for r in report.get("results", []):
            column = f"{r['step']} {r['metric']}"
            if _headline(r["metric"]) and column not in columns:
                columns.append(column)
    rows = []
    for folder, report in reports:
        values = {f"{r['step']} {r['metric']}": r for r in report.get("results", [])}
        failed = [s["step"] for s in report.get("steps", []) if s.get("status") != "done"]
        published = "-"
        weights = str(report.get("weights"))
        if is_zoo_name(weights):
            try:
                published = "; ".join(f"{n['benchmark']} {n['metric']} {n['value']}"
                                      for n in published_numbers(weights))
            except ZooError:
                published = "(not a zoo entry)"
        rows.append([weights, str(report.get("weights_sha256", ""))[:12],
                     *(_cell(values.get(c), c.split(" ")[0] in failed) for c in columns),
                     published, folder])
    return ["trunk", "sha256", *columns, "published (zoo)", "folder"], rows


def _is_demo_layout(folder: str) -> bool:
    return bool(_method_folders(folder)) or os.path.isdir(os.path.join(folder, "eval")) or \
        any(n.startswith("detection") for n in os.listdir(folder))


def _shown_by_demo_tables(folder: str, root: str) -> bool:
    relative = os.path.relpath(folder, root).split(os.sep)
    return relative[0] in {name for _, name in _method_folders(root)} or relative[0].startswith("detection") \
        or (relative[0] == "eval" and len(relative) == 2)


def format_any_report(paths: list[str]) -> str:
    """The report of any run folders or trees of them: the demo's tables where a folder has the demo's
    layout, one comparison row per benchmark suite folder (trunks as rows), and one row per other run
    folder (what ran, data, weights, final and selected metrics).

    Raises:
        ReportError: a path is not a folder (one line naming it).
    """
    for path in paths:
        if not os.path.isdir(path):
            raise ReportError(f"no such run folder: {path} (give folders written by d2ssl's tools)")
    sections, benchmarks, runs = [], [], []
    for path in paths:
        demo = _is_demo_layout(path)
        if demo:
            sections.append(format_report(path))
        for folder in find_run_folders(path):
            if demo and _shown_by_demo_tables(folder, path):
                continue  # in the demo's tables (a trunk's benchmark: in the margins)
            if all(os.path.isfile(os.path.join(folder, n)) for n in BENCHMARK_FILES):
                benchmarks.append(folder)
            else:
                runs.append(describe_run_folder(folder))
    if benchmarks:
        headers, rows = benchmark_rows(benchmarks)
        sections.append("Benchmarks (one row per trunk; test split unless the column says; FAILED: the step "
                        "failed)\n" + tabulate(rows, headers=headers, tablefmt="github",
                                                 disable_numparse=True))
    if runs:
        headers = ["folder", "what ran", "data", "weights", "final", "selected"]
        sections.append("Runs\n" + tabulate(runs, headers=headers, tablefmt="github", disable_numparse=True))
    if not sections:
        return f"no run folders under {', '.join(paths)} (no metrics.json, summary.json, features, ...)"
    return "\n\n".join(sections)
