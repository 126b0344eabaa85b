#!/usr/bin/env python
"""One command from a checkpoint to the full results table: a suite of evaluations (configs/suites/),
each step in its own folder, skipped when already done for the same weights, config and data.

    python tools/benchmark.py --weights output/tiny_rotnet/model_final.pth --suite tiny      # CPU, a minute
    python tools/benchmark.py --weights zoo:jigclu_r50_200ep --suite jigclu --num-gpus 8
    python tools/benchmark.py --weights r50_torchvision.pth --suite quick --output-dir output/bench/tv
    python tools/benchmark.py --weights random --suite tiny --output-dir output/bench/random  # the baseline
    # evaluate each checkpoint of a pretraining as it appears (every 5000 iterations), a table per iteration:
    python tools/benchmark.py --watch output/jigclu_R50 --period 5000 --suite quick --output-dir out/watch
    # the steps as SLURM jobs with dependencies (features before kNN and the grid); print them only:
    python tools/benchmark.py --weights W --suite vissl --submit --dry-run

Writes <output-dir>/results.json (every metric with its step, the split that selected it, the split that
scored it, the weights digest, the config, the time), results.md (one table) and PNGs; rerunning the same
command continues after a kill or a failed step (see d2ssl.evaluation.benchmark_suite). Exit status 1
when a step failed or was blocked; the table marks it.
"""

import sys

from d2ssl.evaluation.benchmark_suite import argument_parser, run_benchmark
from d2ssl.utils.errors import reporting_errors

if __name__ == "__main__":
    args = argument_parser().parse_args()
    with reporting_errors(debug=args.debug):
        status = run_benchmark(args)
    sys.exit(status)
