#!/usr/bin/env python
"""The published checkpoints that zoo:<name> names, usable wherever a weights path is accepted.

    python tools/zoo.py                          # the entries, their published numbers, what is cached
    python tools/zoo.py --show pirl_r50_800ep    # URL, reference file and line, notes, numbers, cache path
    python tools/zoo.py --fetch pirl_r50_800ep   # download and check it now; prints the local path

Files are cached in $D2SSL_CACHE/zoo (default ~/.cache/d2ssl/zoo) and checked against their sha256;
$D2SSL_ZOO_MIRROR=<base URL> fetches <base URL>/<name>/<file name> instead (see d2ssl.checkpoint.zoo).
"""

import argparse
import logging

from d2ssl.checkpoint.zoo import describe_entry, local_zoo_file, zoo_cache_dir, zoo_table
from d2ssl.utils.errors import reporting_errors


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--show", metavar="NAME", help="print every field of NAME's entry")
    parser.add_argument("--fetch", metavar="NAME", help="download and check NAME, then print its local path")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    with reporting_errors(debug=args.debug):
        if args.fetch:
            print(local_zoo_file(args.fetch))
        elif args.show:
            print(describe_entry(args.show))
        else:
            print(zoo_table())
            print(f"\ncache: {zoo_cache_dir()}")


if __name__ == "__main__":
    cli()
