#!/usr/bin/env python
"""Extract frozen-trunk features of the splits of an extraction config, through detectron2's launcher.

    python tools/extract_features.py --config-file configs/eval/tiny/extract_features.py --num-gpus 0 \
        train.init_checkpoint=output/tiny_jigsaw/model_final.pth extraction.output_dir=output/feats
    python tools/extract_features.py --config-file configs/eval/extract_features_R50.py --num-gpus 8 \
        train.weights_init.PARAMS_FILE=moco_v2_800ep_pretrain.pth.tar

Writes {split}_{layer}.npy, {split}_labels.npy, {split}_indices.npy, {split}_meta.json per split
(d2ssl.evaluation.features). A second run reuses them only when the digest of the weights loaded, the
data set's digest, the view, layers and pooling are the same (not the checkpoint's path: a checkpoint
rewritten in place is extracted again); the log names what changed. Set one of
train.weights_init.PARAMS_FILE and train.init_checkpoint, not both.
"""

from d2ssl.engine.launch import launch_from_command_line
from d2ssl.engine.train_loop import setup_from_args
from d2ssl.evaluation.features import extract_from_config
from d2ssl.evaluation.linear import announce_trunk_source


def main(args):
    cfg = setup_from_args(args)
    announce_trunk_source(cfg, random_trunk=args.random_trunk)  # a random trunk is said, never silent
    return extract_from_config(cfg)


if __name__ == "__main__":
    launch_from_command_line(main)
