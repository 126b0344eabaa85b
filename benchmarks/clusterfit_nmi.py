#!/usr/bin/env python
"""Do a trained trunk's clusters follow the true classes better than a random trunk's? Prints JSON.

    python benchmarks/clusterfit_nmi.py output/clusterfit_chain/rotnet/model_final.pth [more .pth ...] \
        [--images 5000] [--clusters 10 50] [--seeds 0 1 2] \
        [--output benchmarks/results/clusterfit_nmi_cpu.json]

The first ``--images`` Fashion-MNIST training photos go through ClusterFit step 1 exactly as
configs/tiny/clusterfit_cluster.py does it (tiny ResNet-18 trunk, res5 average-pooled on the 64 px
deterministic view, L2 normalisation, faiss k-means with N_ITER 50), once with each trained
checkpoint (k-means seeds ``--seeds``) and once with a randomly initialised trunk per seed (init seed
= k-means seed). NMI, ARI and purity are against the true classes; ``margin`` is the smallest
trained NMI minus the largest random NMI over all seeds, per number of clusters.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch
from detectron2.config import instantiate

from d2ssl.checkpoint.load import load_pretrained_weights
from d2ssl.data.datasets import get_dataset_dicts
from d2ssl.data.mappers import ClassificationMapper
from d2ssl.engine.train_loop import setup_config
from d2ssl.evaluation.clustering import clustering_quality, preprocess_features, run_kmeans
from d2ssl.evaluation.features import extract_features

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny", "clusterfit.py")


def trunk_features(checkpoint: str | None, init_seed: int, images: list[dict], workdir: str) -> np.ndarray:
    cfg = setup_config(CONFIG)
    torch.manual_seed(init_seed)
    trunk = instantiate(cfg.model.trunk)
    if checkpoint:
        load_pretrained_weights(trunk, checkpoint, skip_layers=("num_batches_tracked", "heads"))
    mapper = ClassificationMapper(train=False, resize_size=64, crop_size=64)
    out = os.path.join(workdir, f"{os.path.basename(os.path.dirname(checkpoint or 'random'))}_{init_seed}")
    features = extract_features(trunk, images, mapper, out, split="train", batch_size=250, reuse=False)
    return np.asarray(features.features["res5"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+",
                        help="trained tiny trunks (e.g. a tiny RotNet's model_final.pth)")
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--clusters", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output")
    args = parser.parse_args()
    images = get_dataset_dicts("fashion_mnist_train", limit=args.images)
    labels = np.array([d["label"] for d in images])
    runs = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        trunks = [(c, 0, "trained") for c in args.checkpoints] + [(None, s, "random") for s in args.seeds]
        for checkpoint, init_seed, kind in trunks:
            x = preprocess_features(trunk_features(checkpoint, init_seed, images, workdir))
            kmeans_seeds = args.seeds if kind == "trained" else [init_seed]
            for k in args.clusters:
                for seed in kmeans_seeds:
                    ids = run_kmeans(x, k, n_iter=50, seed=seed).assignments
                    runs.append({"trunk": kind, "checkpoint": checkpoint, "init_seed": init_seed,
                                 "kmeans_seed": seed, "num_clusters": k, **clustering_quality(ids, labels)})
    summary = {}
    for k in args.clusters:
        trained = [r["nmi"] for r in runs if r["num_clusters"] == k and r["trunk"] == "trained"]
        random = [r["nmi"] for r in runs if r["num_clusters"] == k and r["trunk"] == "random"]
        summary[f"K={k}"] = {
            "trained_nmi_mean": round(float(np.mean(trained)), 4),
            "random_nmi_mean": round(float(np.mean(random)), 4),
            "margin_min_trained_minus_max_random": round(min(trained) - max(random), 4),
        }
    report = {
        "images": f"first {args.images} fashion_mnist_train photos, 64 px test view",
        "seconds": round(time.perf_counter() - start, 1),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "summary": summary,
        "runs": runs,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
