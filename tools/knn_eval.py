#!/usr/bin/env python
"""Weighted kNN (NPID's protocol) on features written by tools/extract_features.py.

    python tools/knn_eval.py --features-dir output/tiny_features              # k 20 and 200, T 0.07
    python tools/knn_eval.py --features-dir ... --k 200 --temperature 0.1      # VISSL's TOPK/SIGMA
    python tools/knn_eval.py --features-dir ... --embedding-map output/tsne.png # + t-SNE of the test split

Prints and writes {features-dir}/knn_{layer}.json.
"""

import argparse
import json

from d2ssl.evaluation.knn import NPID_KS, NPID_TEMPERATURE, knn_on_cached_features
from d2ssl.evaluation.plots import embedding_map_of_cached_features
from d2ssl.utils.errors import reporting_errors

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features-dir", required=True)
    parser.add_argument("--train-split", default="train", help="the labelled images that vote")
    parser.add_argument("--test-split", default="test", help="the images classified")
    parser.add_argument("--layer", default="res5")
    parser.add_argument("--k", type=int, nargs="+", default=list(NPID_KS))
    parser.add_argument("--temperature", type=float, default=NPID_TEMPERATURE)
    parser.add_argument("--embedding-map", default="", help="PNG path for a t-SNE map of the test split")
    parser.add_argument("--max-points", type=int, default=3000, help="points in the embedding map")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
    args = parser.parse_args()
    with reporting_errors(debug=args.debug):
        results = knn_on_cached_features(args.features_dir, args.train_split, args.test_split, args.layer,
                                         args.k, args.temperature)
        print(json.dumps(results, indent=2))
        if args.embedding_map:
            embedding_map_of_cached_features(args.features_dir, args.test_split, args.embedding_map,
                                             args.layer, args.max_points)
