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
    python tools/train_linear.py --config-file ... --eval-only train.init_checkpoint=.../model_best.pth
"""

from d2ssl.engine.launch import launch_from_command_line
from d2ssl.evaluation.linear import main

if __name__ == "__main__":
    launch_from_command_line(main)
