"""Did pretraining beat a random trunk beyond the seed spread? Margins between benchmark-suite results
(``tools/benchmark.py``'s ``results.json``) of pretrained trunks and of random trunks of the same
architecture, per layer and metric.

The margin of a layer and metric is the worst pretrained score (over every pretraining seed and every
evaluation seed) minus the best random score (over every initialisation seed and every evaluation
seed): > 0 means every pretrained run beat every random run there, a statement that seed luck cannot
make; the medians show the typical gap. Reads plain JSON, so it sits on the bottom floor (the report,
the demo and ``benchmarks/every_method_vs_random.py`` share it).
"""

from __future__ import annotations

import json
import os
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tabulate import tabulate

# metric name -> (step kind, metric of that step's results): the linear grid's test top-1 of the cell
# selected on held-out training rows, and NPID's weighted kNN at k 20.
METRICS: dict[str, tuple[str, str]] = {"linear_top1": ("linear_grid", "test_top1"),
                                       "knn_top1@20": ("knn", "top1@20")}
LAYERS = ("conv1", "res2", "res3", "res4", "res5")
RANDOM = "random"
METHOD_ORDER = ("jigsaw", "rotnet", "npid", "pirl", "jigclu", "clusterfit")  # the README's; others after
_TRUNK_FOLDER = re.compile(r"(?P<method>.+)_s(?P<seed>\d+)")

Scores = dict[str, dict[str, list[float]]]  # {layer: {metric: [value per evaluation seed]}}


def layer_scores(results: Iterable[Mapping[str, Any]]) -> Scores:
    """``{layer: {metric: values}}`` from a ``results.json``'s ``results`` (metrics named
    ``<layer>/<metric>`` by a step with ``layers=``; one value per evaluation seed)."""
    out: Scores = {}
    for r in results:
        layer, _, metric = str(r["metric"]).partition("/")
        if r.get("value") is None:
            continue
        for name, (kind, wanted) in METRICS.items():
            if r.get("kind") == kind and metric == wanted:
                out.setdefault(layer, {}).setdefault(name, []).append(float(r["value"]))
    return out


def read_trunk_scores(eval_dir: str) -> dict[str, dict[int, Scores]]:
    """``{method: {seed: scores}}`` of the benchmark folders ``<eval_dir>/<method>_s<seed>/`` that hold a
    ``results.json`` (``random_s<seed>``: the random trunks)."""
    out: dict[str, dict[int, Scores]] = {}
    for name in sorted(os.listdir(eval_dir)) if os.path.isdir(eval_dir) else []:
        match = _TRUNK_FOLDER.fullmatch(name)
        path = os.path.join(eval_dir, name, "results.json")
        if match and os.path.isfile(path):
            with open(path) as f:
                results = json.load(f)["results"]
            out.setdefault(match["method"], {})[int(match["seed"])] = layer_scores(results)
    return out


def _stats(values: Sequence[float]) -> list[float]:
    return [round(min(values), 2), round(statistics.median(values), 2), round(max(values), 2)]


def margins(pretrained: Sequence[Scores], random: Sequence[Scores]) -> dict[str, Any]:
    """Per layer and metric: pretrained and random ``[min, median, max]``, the number of runs of each and
    the margin (worst pretrained - best random); ``best``: the layer and metric of the largest margin."""
    layers: dict[str, dict[str, Any]] = {}
    for layer in LAYERS:
        for metric in METRICS:
            p = [v for s in pretrained for v in s.get(layer, {}).get(metric, [])]
            q = [v for s in random for v in s.get(layer, {}).get(metric, [])]
            if p and q:
                layers.setdefault(layer, {})[metric] = {
                    "pretrained": _stats(p), "random": _stats(q), "n": [len(p), len(q)],
                    "margin": round(min(p) - max(q), 2)}
    cells = [(layer, metric, v["margin"]) for layer, ms in layers.items() for metric, v in ms.items()]
    best = max(cells, key=lambda c: c[2], default=None)
    return {"layers": layers, "best": dict(zip(("layer", "metric", "margin"), best)) if best else None}


def margin_summary(trunks: Mapping[str, Mapping[int, Scores]]) -> dict[str, dict[str, Any]]:
    """``margins`` of every method of ``read_trunk_scores`` against its ``random`` trunks."""
    random = list(trunks.get(RANDOM, {}).values())
    methods = sorted((m for m in trunks if m != RANDOM),
                     key=lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), m))
    return {method: {"seeds": sorted(trunks[method]), **margins(list(trunks[method].values()), random)}
            for method in methods}


def format_margins(summary: Mapping[str, Mapping[str, Any]], random_seeds: Sequence[int] = ()) -> str:
    """A Markdown table: per method its best layer and margin with both spreads, and the margin at every
    layer (linear; kNN)."""
    rows = []
    for method, s in summary.items():
        best = s.get("best")
        if not best:
            continue
        cell = s["layers"][best["layer"]][best["metric"]]
        per_layer = ", ".join(f"{layer} {v['linear_top1']['margin']:+.1f}; {v['knn_top1@20']['margin']:+.1f}"
                              for layer, v in s["layers"].items() if len(v) == len(METRICS))
        rows.append([method, len(s["seeds"]), f"{best['layer']} {best['metric']}",
                     f"{best['margin']:+.2f}",
                     " / ".join(f"{x:.2f}" for x in cell["pretrained"]),
                     " / ".join(f"{x:.2f}" for x in cell["random"]), f"{cell['n'][0]} vs {cell['n'][1]}",
                     per_layer])
    headers = ["method", "pretraining seeds", "best layer, metric", "margin", "pretrained min / median / max",
               "random min / median / max", "runs", "margin per layer (linear; kNN@20)"]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True) + "\n"
