#!/usr/bin/env python
"""Weighted kNN under a named protocol (d2ssl.evaluation.knn's docstring cites each reference).

    # trunk (default): features written by tools/extract_features.py; k 20 and 200, T 0.07, cosine
    python tools/knn_eval.py --features-dir output/tiny_features
    python tools/knn_eval.py --features-dir ... --embedding-map output/tsne.png # + t-SNE of the test split
    # vissl: VISSL's nearest-neighbour benchmark as coded: k 200, sigma 0.1, raw inner products
    python tools/knn_eval.py --protocol vissl --features-dir output/tiny_features
    # npid_bank: NPID's published kNN: an NPID/PIRL checkpoint's memory bank votes for the embeddings
    # of the test images (k 200, T 0.07); the config is the one the checkpoint was pretrained with
    python tools/knn_eval.py --protocol npid_bank --config-file configs/tiny/npid.py \
        --checkpoint output/tiny_npid/model_final.pth --test-dataset fashion_mnist_test --image-size 32

--k / --temperature / --l2-norm override the protocol's values. Prints the results and writes them
as JSON ({features-dir}/knn_[vissl_]{layer}.json, or --output for npid_bank).
"""

import argparse
import json

from d2ssl.evaluation.knn import NPID_BANK_K, NPID_TEMPERATURE, PROTOCOLS, knn_on_cached_features
from d2ssl.evaluation.plots import embedding_map_of_cached_features
from d2ssl.utils.errors import reporting_errors


def npid_bank(args) -> dict:
    from d2ssl.data.datasets import get_dataset_dicts
    from d2ssl.data.mappers.classification import ClassificationMapper
    from d2ssl.engine.train_loop import setup_config
    from d2ssl.evaluation.knn import npid_bank_knn_from_config

    needed = {"--config-file": args.config_file, "--checkpoint": args.checkpoint,
              "--test-dataset": args.test_dataset}
    missing = [flag for flag, value in needed.items() if not value]
    if missing:
        raise ValueError(f"--protocol npid_bank needs {', '.join(missing)}")
    # NPID's validation view: Resize(256), CenterCrop(224) (lemniscate main.py).
    mapper = ClassificationMapper(train=False, crop_size=args.image_size,
                                  resize_size=args.resize_size or round(args.image_size * 256 / 224))
    return npid_bank_knn_from_config(
        setup_config(args.config_file, args.opts), args.checkpoint, get_dataset_dicts(args.test_dataset),
        mapper, (args.k or [NPID_BANK_K])[0], args.temperature or NPID_TEMPERATURE, args.head or None,
        args.output)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", choices=PROTOCOLS, default="trunk")
    parser.add_argument("--features-dir", help="trunk, vissl: the extract_features output")
    parser.add_argument("--train-split", default="train", help="the labelled images that vote")
    parser.add_argument("--test-split", default="test", help="the images classified")
    parser.add_argument("--layer", default="res5")
    parser.add_argument("--k", type=int, nargs="+", default=None, help="default: the protocol's")
    parser.add_argument("--temperature", type=float, default=None, help="default: the protocol's")
    parser.add_argument("--l2-norm", action=argparse.BooleanOptionalAction, default=None,
                        help="cosine (on) or raw inner product (off); default: the protocol's")
    parser.add_argument("--config-file", default="", help="npid_bank: the pretraining config")
    parser.add_argument("--checkpoint", default="", help="npid_bank: the run's model_final.pth")
    parser.add_argument("--test-dataset", default="", help="npid_bank: registered data set classified")
    parser.add_argument("--image-size", type=int, default=224, help="npid_bank: centre crop")
    parser.add_argument("--resize-size", type=int, default=0, help="npid_bank: default image-size * 256/224")
    parser.add_argument("--head", default="", help="npid_bank: embedding head (default head / image_head)")
    parser.add_argument("--output", default="", help="npid_bank: JSON file for the results")
    parser.add_argument("--embedding-map", default="", help="PNG path for a t-SNE map of the test split")
    parser.add_argument("--max-points", type=int, default=3000, help="points in the embedding map")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="npid_bank: key=value config overrides")
    args = parser.parse_args()
    with reporting_errors(debug=args.debug):
        if args.protocol == "npid_bank":
            results = npid_bank(args)
        else:
            if not args.features_dir:
                raise ValueError(f"--protocol {args.protocol} needs --features-dir")
            results = knn_on_cached_features(args.features_dir, args.train_split, args.test_split, args.layer,
                                             args.k, args.temperature, protocol=args.protocol,
                                             normalize=args.l2_norm)
        print(json.dumps(results, indent=2))
        if args.embedding_map:
            embedding_map_of_cached_features(args.features_dir, args.test_split, args.embedding_map,
                                             args.layer, args.max_points)
