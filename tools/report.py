#!/usr/bin/env python
"""Print what the runs under one or more folders learned:

    python tools/report.py output/demo                       # the demo's tables
    python tools/report.py output/benchmark/a output/benchmark/b   # benchmark suites, trunks as rows
    python tools/report.py output                            # every run folder of a tree

Benchmark folders (tools/benchmark.py) give one row per trunk, with the published numbers of a
zoo:<name> trunk beside; any other run folder (pretraining, linear, semi-supervised, detection,
features, kNN, linear grid, ClusterFit) one row: what ran, on which data and weights, the final and
the selected metrics (d2ssl.utils.report).
"""

import argparse

from d2ssl.utils.errors import reporting_errors
from d2ssl.utils.report import format_any_report


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="run folders or folders holding them")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
    args = parser.parse_args()
    with reporting_errors(debug=args.debug):
        print(format_any_report(args.folders))


if __name__ == "__main__":
    cli()
