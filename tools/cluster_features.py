#!/usr/bin/env python
"""ClusterFit step 1: extract a trunk's features, k-means them with faiss, write the pseudo-labels.

    python tools/cluster_features.py --config-file configs/clusterfit/cluster_features_R50.py --num-gpus 8 \
        train.weights_init.PARAMS_FILE=output/rotnet_R50/model_final.pth
    python tools/cluster_features.py --config-file configs/tiny/clusterfit_cluster.py          # CPU, minutes
    python tools/cluster_features.py --config-file ... clustering.FEATURES.EXTRACT=False \
        clustering.FEATURES.PATH=output/features clustering.NUM_CLUSTERS=1000   # re-cluster cached features

Features are extracted by every process (one shard each), or reused when their weights, data and view
digests match (d2ssl.evaluation.features); k-means runs in the main one (faiss on the GPU with
faiss-gpu). Outputs, written atomically: see d2ssl.evaluation.clustering.
"""

from d2ssl.engine.launch import launch_from_command_line
from d2ssl.evaluation.clustering import main

if __name__ == "__main__":
    launch_from_command_line(main)
