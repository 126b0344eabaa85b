#!/usr/bin/env python
"""Print what the runs under a folder learned: python tools/report.py output/demo"""

import argparse

from d2ssl.utils.report import format_report


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("demo_dir", help="folder holding one run folder per method (jigsaw/, pirl/, ...)")
    print(format_report(parser.parse_args().demo_dir))


if __name__ == "__main__":
    cli()
