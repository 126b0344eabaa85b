#!/usr/bin/env python
"""The fast linear path: a grid of linear classifiers on features written by tools/extract_features.py,
trained together as one batched layer; every cell's val and test top-1/top-5. The cell is selected on a
validation split (by default 10% of every class of the training features, seeded, not trained on) and
reported by its test top-1: never selected on the split it reports.

    python tools/linear_grid.py --features-dir output/tiny_features
    python tools/linear_grid.py --features-dir ... --val-fraction 0.2 --val-seed 1     # another hold-out
    python tools/linear_grid.py --features-dir ... --val-split val       # select on an extracted val split
    python tools/linear_grid.py --features-dir ... --lr 0.1 1 10 --weight-decay 0 1e-4 --standardize both \
        --epochs 100 --batch-size 256 --schedule cosine --embedding-map output/tsne.png

Writes linear_grid.json and linear_grid.txt to --output-dir (default: the features folder).
"""

import argparse

from d2ssl.evaluation.linear_grid import (
    DEFAULT_LRS,
    DEFAULT_WEIGHT_DECAYS,
    SCHEDULES,
    add_selection_arguments,
    format_grid_table,
    format_selection,
    linear_grid_on_cached_features,
)
from d2ssl.evaluation.plots import embedding_map_of_cached_features
from d2ssl.utils.errors import reporting_errors

STANDARDIZE = {"no": (False,), "yes": (True,), "both": (False, True)}

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features-dir", required=True)
    parser.add_argument("--train-split", default="train")
    add_selection_arguments(parser)
    parser.add_argument("--layer", default="res5")
    parser.add_argument("--output-dir", default=None)
    parser.add_argument("--lr", type=float, nargs="+", default=list(DEFAULT_LRS))
    parser.add_argument("--weight-decay", type=float, nargs="+", default=list(DEFAULT_WEIGHT_DECAYS))
    parser.add_argument("--standardize", choices=sorted(STANDARDIZE), default="no")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--schedule", choices=SCHEDULES, default="cosine")
    parser.add_argument("--milestones", type=int, nargs="*", default=[60, 80],
                        help="epochs, for --schedule step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--embedding-map", default="", help="PNG path for a t-SNE map of the test split")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
    args = parser.parse_args()
    with reporting_errors(debug=args.debug):
        result = linear_grid_on_cached_features(
            args.features_dir, args.train_split, args.test_split, args.layer, args.output_dir,
            val_split=args.val_split, val_fraction=args.val_fraction, val_seed=args.val_seed, lrs=args.lr,
            weight_decays=args.weight_decay, standardize=STANDARDIZE[args.standardize], epochs=args.epochs,
            batch_size=args.batch_size, momentum=args.momentum, schedule=args.schedule,
            milestones=args.milestones, seed=args.seed, device=args.device,
        )
        print(format_grid_table(result))
        print(format_selection(result))
        if args.embedding_map:
            embedding_map_of_cached_features(args.features_dir, args.test_split, args.embedding_map,
                                             args.layer)
