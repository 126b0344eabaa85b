#!/usr/bin/env python
"""Search lr, batch size and weight decay of a linear benchmark with Optuna (grid, random or TPE), locally:
the study is an SQLite file in --output-dir, so an interrupted sweep continues where it stopped and
several processes started with the same arguments share it.

Fast path, on features written by tools/extract_features.py:

    python tools/sweep.py --output-dir output/sweep_fast --features-dir output/tiny_features \
        --param lr=1e-3:10:log --param batch_size=64,128,256 --param weight_decay=1e-6:1e-3:log --n-trials 20

Full linear benchmark per trial (parameters are config keys; trailing key=value apply to every trial):

    python tools/sweep.py --output-dir output/sweep_jigclu --config-file configs/eval/linear_jigclu_R50.py \
        --param optimizer.lr=1:30:log --param dataloader.train.total_batch_size=256,512 --sampler grid \
        train.weights_init.PARAMS_FILE=output/jigclu_R50/model_final.pth

Trials are compared on a validation split, never on the reported one: fast path, --val-fraction of every
training class held out (or an extracted --val-split); full benchmark, the config's dataloader.val or
--val-fraction of its training data. The test top-1 of every trial is reported beside it.
A study in --output-dir is continued only for the same features (meta files' digests) or config, search
space and validation split; anything else is refused: use another --output-dir or --study-name.

Writes trials.csv, trials.json (selected_on, scored_on, the selected trial) and sweep.png to --output-dir.
"""

import argparse

from d2ssl.evaluation.linear_grid import add_selection_arguments
from d2ssl.evaluation.sweep import (
    SAMPLERS,
    TRACKERS,
    cached_features_objective,
    linear_benchmark_objective,
    parse_param,
    run_sweep,
)
from d2ssl.utils.errors import reporting_errors


def at_least_one(text: str) -> int:
    """argparse type: an integer >= 1 (0 grid points would sample nothing and fail deep in numpy)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", required=True, help="holds sweep.db, the tables, the plot, trials")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--features-dir", help="fast path: extracted features (train and --val-split)")
    source.add_argument("--config-file", help="full linear benchmark config (do_linear_benchmark)")
    parser.add_argument("--param", action="append", required=True, type=parse_param,
                        help="NAME=LOW:HIGH[:log] or NAME=A,B,C (repeat)")
    parser.add_argument("--sampler", choices=SAMPLERS, default="tpe")
    parser.add_argument("--n-trials", type=int, default=20, help="finished trials to reach in the study")
    parser.add_argument("--grid-points", type=at_least_one, default=3,
                        help="values per float range (grid sampler)")
    parser.add_argument("--study-name", default="sweep")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tracker", choices=TRACKERS, default=None, help="also log trials there (off)")
    add_selection_arguments(parser, scope="fast path: ")
    parser.add_argument("--layer", default="res5", help="fast path")
    parser.add_argument("--epochs", type=int, default=100, help="fast path, unless swept")
    parser.add_argument("--batch-size", type=int, default=256, help="fast path, unless swept")
    parser.add_argument("overrides", nargs="*", help="key=value for every trial's config (full benchmark)")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
    args = parser.parse_args()
    with reporting_errors(debug=args.debug):
        if args.features_dir:
            objective = cached_features_objective(
                args.features_dir, test_split=args.test_split, layer=args.layer, epochs=args.epochs,
                batch_size=args.batch_size, seed=args.seed, val_split=args.val_split,
                val_fraction=args.val_fraction, val_seed=args.val_seed,
            )
        else:
            objective = linear_benchmark_objective(args.config_file, args.overrides, args.output_dir,
                                                   val_fraction=args.val_fraction)
        run_sweep(objective, args.param, args.output_dir, n_trials=args.n_trials, sampler=args.sampler,
                  study_name=args.study_name, seed=args.seed, grid_points=args.grid_points,
                  tracker=args.tracker)
