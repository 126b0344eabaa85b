#!/usr/bin/env python
"""Pretrain with a d2ssl LazyConfig, through detectron2's launcher.

    python tools/train_net.py --config-file configs/pirl_R50.py --num-gpus 8 [key=value ...]
    python tools/train_net.py --config-file configs/tiny/jigsaw.py train.max_iter=50
    python tools/train_net.py --config-file ... --resume          # continue from output_dir

Multi-machine: --num-machines N --machine-rank R --dist-url tcp://HOST:PORT (detectron2's flags).
"""

from d2ssl.engine.launch import launch_from_command_line
from d2ssl.engine.train_loop import main

if __name__ == "__main__":
    launch_from_command_line(main)
