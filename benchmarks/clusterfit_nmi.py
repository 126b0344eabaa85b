#!/usr/bin/env python
"""Do a trained trunk's clusters follow the true classes better than a random trunk's? Prints JSON.

    # the setting of tests/evaluation/test_clustering_trained_trunk.py: tiny RotNets trained here
    # (seeds 0-2, TRAINING_OVERRIDES: 300 steps on 32 px views) vs random trunks (init seeds 0-2),
    # res4 on the 32 px view, 50 clusters
    OMP_NUM_THREADS=1 python benchmarks/clusterfit_nmi.py --train-seeds 0 1 2 --image-size 32 \
        --layers res4 res5 --clusters 10 50 --output benchmarks/results/clusterfit_nmi_cpu.json
    # or checkpoints trained elsewhere (e.g. the chain's 64 px RotNet)
    python benchmarks/clusterfit_nmi.py output/clusterfit_chain/rotnet/model_final.pth [more .pth ...]

The first ``--images`` Fashion-MNIST training photos go through ClusterFit step 1 as
configs/tiny/clusterfit_cluster.py does it (tiny ResNet-18 trunk, a layer average-pooled on the
deterministic ``--image-size`` view, L2 normalisation, faiss k-means with N_ITER 50), once per trained
trunk and once per randomly initialised trunk (``--init-seeds``), each with every k-means seed
(``--kmeans-seeds``). NMI, ARI and purity are against the true classes. Per layer and number of
clusters, ``margin`` is the smallest trained NMI minus the largest random NMI over all trunks and
k-means seeds: positive means every trained trunk beat every random one.
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
from detectron2.utils.env import seed_all_rng

from d2ssl.checkpoint.load import load_pretrained_weights
from d2ssl.data.datasets import get_dataset_dicts
from d2ssl.data.mappers import ClassificationMapper
from d2ssl.engine.train_loop import do_train, setup_config
from d2ssl.evaluation.clustering import clustering_quality, preprocess_features, run_kmeans
from d2ssl.evaluation.features import extract_features

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "tiny")
# The tiny RotNet of configs/tiny/rotnet.py, cut to what a test can afford on 2 CPU cores: 300 steps
# (x0.1 after 240) on 32 px views (a quarter of the 64 px pixels) without the kNN monitor. Measured
# with benchmarks/results/clusterfit_nmi_cpu.json; its res4 at 32 px clusters the classes clearly better
# than a random trunk's, where the 64 px / 200 step / res5 setting of the chain did only on average.
TRAINING_OVERRIDES = ("train.max_iter=300", "dataloader.train.mapper.crop_size=32",
                      "train.knn_monitor.period=0", "train.checkpointer.period=100000",
                      "train.log_period=100")


def train_tiny_rotnet(seed: int, output_dir: str) -> str:
    """Trains configs/tiny/rotnet.py with ``TRAINING_OVERRIDES`` and ``seed`` (model init and data
    order, as tools/train_net.py seeds them) in this process; returns its model_final.pth."""
    cfg = setup_config(os.path.join(CONFIGS, "rotnet.py"), [
        *TRAINING_OVERRIDES, f"train.seed={seed}", f"dataloader.train.seed={seed}",
        f"train.output_dir={output_dir}"])
    seed_all_rng(seed)
    do_train(cfg)
    return os.path.join(output_dir, "model_final.pth")


def trunk_features(checkpoint: str | None, init_seed: int, images: list[dict], output_dir: str,
                   layers: tuple[str, ...] = ("res5",), image_size: int = 64) -> dict[str, np.ndarray]:
    """``{layer: (N, D)}`` average-pooled features of ``images`` seen through the deterministic
    ``image_size`` view, from the tiny trunk initialised with ``init_seed`` then, if given, loaded with
    ``checkpoint``'s trunk."""
    cfg = setup_config(os.path.join(CONFIGS, "clusterfit.py"))
    cfg.model.trunk.out_features = tuple(layers)
    torch.manual_seed(init_seed)
    trunk = instantiate(cfg.model.trunk)
    if checkpoint:
        load_pretrained_weights(trunk, checkpoint, skip_layers=("num_batches_tracked", "heads"))
    mapper = ClassificationMapper(train=False, resize_size=image_size, crop_size=image_size)
    features = extract_features(trunk, images, mapper, output_dir, split="train", layers=layers,
                                batch_size=250, reuse=False)
    return {layer: np.asarray(features.features[layer]) for layer in layers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="*",
                        help="trained tiny trunks (e.g. a tiny RotNet's model_final.pth)")
    parser.add_argument("--train-seeds", type=int, nargs="*", default=[],
                        help="also train a tiny RotNet per seed here (TRAINING_OVERRIDES)")
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--layers", nargs="+", default=["res5"])
    parser.add_argument("--clusters", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--init-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--kmeans-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output")
    args = parser.parse_args()
    if not args.checkpoints and not args.train_seeds:
        parser.error("give trained checkpoints and/or --train-seeds")
    images = get_dataset_dicts("fashion_mnist_train", limit=args.images)
    labels = np.array([d["label"] for d in images])
    layers = tuple(args.layers)
    runs, training_seconds = [], {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        trunks = [(c, 0, "trained", None) for c in args.checkpoints]
        for seed in args.train_seeds:
            tic = time.perf_counter()
            checkpoint = train_tiny_rotnet(seed, os.path.join(workdir, f"rotnet_{seed}"))
            trunks.append((checkpoint, 0, "trained", seed))
            training_seconds[seed] = round(time.perf_counter() - tic, 1)
        trunks += [(None, s, "random", None) for s in args.init_seeds]
        for i, (checkpoint, init_seed, kind, train_seed) in enumerate(trunks):
            features = trunk_features(checkpoint, init_seed, images, os.path.join(workdir, f"features_{i}"),
                                      layers, args.image_size)
            for layer in layers:
                x = preprocess_features(features[layer])
                for k in args.clusters:
                    for seed in args.kmeans_seeds:
                        ids = run_kmeans(x, k, n_iter=50, seed=seed).assignments
                        runs.append({"trunk": kind, "train_seed": train_seed,
                                     "checkpoint": checkpoint if train_seed is None else None,
                                     "init_seed": init_seed if kind == "random" else None,
                                     "layer": layer, "kmeans_seed": seed, "num_clusters": k,
                                     **clustering_quality(ids, labels)})
    summary = {}
    for layer in layers:
        for k in args.clusters:
            def nmis(kind, layer=layer, k=k):
                return [r["nmi"] for r in runs
                        if (r["layer"], r["num_clusters"], r["trunk"]) == (layer, k, kind)]

            trained, random = nmis("trained"), nmis("random")
            summary[f"{layer} K={k}"] = {
                "trained_nmi_mean": round(float(np.mean(trained)), 4),
                "trained_nmi_min": round(min(trained), 4),
                "random_nmi_mean": round(float(np.mean(random)), 4),
                "random_nmi_max": round(max(random), 4),
                "margin_min_trained_minus_max_random": round(min(trained) - max(random), 4),
            }
    training = "configs/tiny/rotnet.py " + " ".join(TRAINING_OVERRIDES) if args.train_seeds else ""
    report = {
        "images": f"first {args.images} fashion_mnist_train photos, {args.image_size} px test view",
        "trained": {"checkpoints": args.checkpoints, "train_seeds": args.train_seeds,
                    "training": training,
                    "training_seconds": training_seconds},
        "seconds": round(time.perf_counter() - start, 1),
        "torch_threads": torch.get_num_threads(),
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
