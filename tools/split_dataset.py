#!/usr/bin/env python
"""Splits a labelled data set by fixed ratios per class, from a seed, into list files that
``dataloader.<split>.dataset=list:FILE`` loads with their labels (``PATH LABEL`` lines, paths relative to
the data set's root, sub-folders kept; ``split.json`` beside them records the root, ``classes.txt`` the
class names) and ``subset_from_list`` reads back, so the same split serves every run.

    python tools/split_dataset.py --dataset folder:/data/flowers --output-dir splits/flowers   # 70/15/15
    python tools/split_dataset.py --dataset fashion_mnist_train --ratios 0.9 0.1 --seed 1 --output-dir ...
    python tools/split_dataset.py --dataset list:all.txt --ratios 0.8 0.1 0.1 --names a b c --output-dir ...

Writes {output-dir}/train.txt, val.txt, test.txt (or --names), split.json and classes.txt, and prints the
lists' paths; then, e.g., ``dataloader.train.dataset=list:{output-dir}/train.txt``. (Images held in memory,
such as Fashion-MNIST, have no path: their lists name image ids, for ``subset_from_list`` only.)
"""

import argparse

from d2ssl.data.splits import write_dataset_split
from d2ssl.utils.errors import reporting_errors

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True,
                        help="folder:PATH, list:FILE, catalog:NAME[,NAME...] or a registered data set name")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.7, 0.15, 0.15],
                        help="fraction of every class in each part, summing to 1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--names", nargs="+", default=None,
                        help="one list file name per ratio (default train val test)")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
    args = parser.parse_args()
    with reporting_errors(debug=args.debug):
        for path in write_dataset_split(args.dataset, args.output_dir, args.ratios, args.seed, args.names):
            print(path)
