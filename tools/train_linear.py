#!/usr/bin/env python
"""Linear benchmarks on a frozen trunk and semi-supervised fine-tuning, through detectron2's launcher.
The config decides which (``configs/eval/``):

    python tools/train_linear.py --config-file configs/eval/linear_jigclu_R50.py --num-gpus 8 \
        train.weights_init.PARAMS_FILE=output/jigclu_R50/model_final.pth
    python tools/train_linear.py --config-file configs/eval/linear_vissl_R50.py --num-gpus 8 \
        train.weights_init.PARAMS_FILE=jigsaw_vissl.torch
    python tools/train_linear.py --config-file configs/eval/semi_jigclu_R50_1percent.py --num-gpus 8 ...
    python tools/train_linear.py --config-file configs/eval/tiny/linear.py        # CPU, minutes
    python tools/train_linear.py --config-file ... --resume                       # continue from output_dir
    # model_best.pth selected on 10% of every training class held out (dataloader.val.seed) or on a val set:
    python tools/train_linear.py --config-file ... dataloader.val.fraction=0.1
    python tools/train_linear.py --config-file ... dataloader.val.dataset=folder:/data/val
    python tools/train_linear.py --config-file ... --eval-only train.init_checkpoint=.../model_best.pth

The headline (log, summary.json in train.output_dir) is the last evaluation's test top-1 of every head.
The "best" evaluation is separate: selected on the validation split when one is configured (then
model_best.pth is written and its test top-1 reported), otherwise labelled "best on test (optimistic,
not for publication)" with no model_best.pth. model.num_classes=null takes the number of classes from
the labels; a set number that disagrees with the data is an error.
"""

from d2ssl.engine.launch import launch_from_command_line
from d2ssl.evaluation.linear import main

if __name__ == "__main__":
    launch_from_command_line(main)
