#!/usr/bin/env python
"""Extract frozen-trunk features of the splits of an extraction config, through detectron2's launcher.

    python tools/extract_features.py --config-file configs/eval/tiny/extract_features.py --num-gpus 0 \
        train.init_checkpoint=output/tiny_jigsaw/model_final.pth extraction.output_dir=output/feats
    python tools/extract_features.py --config-file configs/eval/extract_features_R50.py --num-gpus 8 \
        train.weights_init.PARAMS_FILE=moco_v2_800ep_pretrain.pth.tar

Writes {split}_{layer}.npy, {split}_labels.npy, {split}_indices.npy, {split}_meta.json per split
(d2ssl.evaluation.features); a second run with the same settings reuses them.
"""

from d2ssl.engine.launch import launch_from_command_line
from d2ssl.engine.train_loop import setup_from_args
from d2ssl.evaluation.features import extract_from_config


def main(args):
    return extract_from_config(setup_from_args(args))


if __name__ == "__main__":
    launch_from_command_line(main)
