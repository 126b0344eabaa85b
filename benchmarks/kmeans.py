#!/usr/bin/env python
"""Time faiss k-means (d2ssl.evaluation.clustering.run_kmeans, as tools/cluster_features.py calls it) on
random features, each case in a fresh process, and print JSON.

    python benchmarks/kmeans.py [--output benchmarks/results/kmeans_cpu.json]

Cases: 100k and 1.28M (ImageNet-1k train) x 128-d random Gaussian features, 1000 and 16000 clusters
(VISSL's NUM_CLUSTERS), VISSL's N_ITER 50. A case too slow for this machine runs fewer iterations
(``iterations_run``) and its 50-iteration time is extrapolated linearly from the measured seconds per
iteration (``extrapolated``: true). A case marked ``on_paper`` is not run at all: its time comes from
another measured case scaled by the number of distances computed per iteration (points trained on x
clusters), the cost of faiss's k-means. faiss's default ``max_points_per_centroid=256`` (kept, as
VISSL) subsamples the training set to 256 x K points, so 1.28M x 1000 trains on 256,000 points; every
point is still assigned to its nearest centroid at the end (``assign_seconds``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

DIM = 128
N_ITER = 50
MAX_POINTS_PER_CENTROID = 256  # faiss's default, kept by VISSL
# (points, clusters, iterations to run here); None: on paper from the measured scaling.
CASES = [
    (100_000, 1000, 10),
    (100_000, 16000, 2),
    (1_280_000, 1000, 3),
    (1_280_000, 16000, None),
]


def run_case(num_points: int, num_clusters: int, n_iter: int) -> dict:
    import faiss

    from d2ssl.evaluation.clustering import run_kmeans

    features = np.random.default_rng(0).standard_normal((num_points, DIM), dtype=np.float32)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    result = run_kmeans(features, num_clusters, n_iter=n_iter, seed=0, use_gpu=False)
    total = time.perf_counter() - start
    iterations = len(result.objective)
    per_iter = result.seconds / iterations
    return {
        "num_points": num_points,
        "num_clusters": num_clusters,
        "dim": DIM,
        "points_trained_on": min(num_points, MAX_POINTS_PER_CENTROID * num_clusters),
        "iterations_run": iterations,
        "train_seconds": round(result.seconds, 2),
        "seconds_per_iteration": round(per_iter, 3),
        "assign_seconds": round(total - result.seconds, 2),
        "seconds_for_50_iterations": round(per_iter * N_ITER + total - result.seconds, 1),
        "extrapolated": iterations < N_ITER,
        "device": result.device,
        "faiss_threads": faiss.omp_get_max_threads(),
        "load_average_1min_at_start": round(load, 2),
    }


def on_paper(num_points: int, num_clusters: int, measured: list[dict]) -> dict:
    """Scales the measured case with the same K (or the largest K) by distances per iteration."""
    base = max(measured, key=lambda r: (r["num_clusters"] == num_clusters,
                                        r["num_points"] * r["num_clusters"]))
    trained = min(num_points, MAX_POINTS_PER_CENTROID * num_clusters)
    iter_factor = trained * num_clusters / (base["points_trained_on"] * base["num_clusters"])
    assign_factor = num_points * num_clusters / (base["num_points"] * base["num_clusters"])
    per_iter = base["seconds_per_iteration"] * iter_factor
    assign = base["assign_seconds"] * assign_factor
    return {
        "num_points": num_points,
        "num_clusters": num_clusters,
        "dim": DIM,
        "points_trained_on": trained,
        "iterations_run": 0,
        "on_paper": True,
        "scaled_from": f"{base['num_points']} x {base['num_clusters']}",
        "seconds_per_iteration": round(per_iter, 1),
        "assign_seconds": round(assign, 1),
        "seconds_for_50_iterations": round(per_iter * N_ITER + assign, 0),
        "extrapolated": True,
    }


def machine() -> dict:
    import faiss
    import torch

    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if "model name" in line), "?")
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(),
        "faiss": faiss.__version__,
        "torch": torch.__version__,
        "gpu": faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", nargs=3, type=int, metavar=("POINTS", "CLUSTERS", "N_ITER"),
                        help="run one case in this process and print its JSON")
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(*args.case)))
        return
    results = []
    for num_points, num_clusters, n_iter in CASES:
        if n_iter is None:
            results.append(on_paper(num_points, num_clusters, [r for r in results if not r.get("on_paper")]))
        else:
            # A fresh process per case: no warm caches or allocator state carried over.
            out = subprocess.run(
                [sys.executable, __file__, "--case", str(num_points), str(num_clusters), str(n_iter)],
                check=True, capture_output=True, text=True,
            )
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr)
    load = round(os.getloadavg()[0], 2)
    report = {"machine": machine(), "load_average_1min_at_end": load, "results": results}
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
