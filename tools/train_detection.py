#!/usr/bin/env python
"""Fine-tune and evaluate a detector on a pretrained trunk, through detectron2's launcher.

    python tools/train_detection.py --config-file configs/detection/faster_rcnn_R50_C4_voc07.py --num-gpus 8 \
        train.init_checkpoint=output/jigsaw_R50/model_final.pth
    python tools/train_detection.py --config-file configs/detection/tiny/faster_rcnn_FPN_pasted_coco.py \
        train.init_checkpoint=output/tiny_jigsaw/model_final.pth
    python tools/train_detection.py --config-file ... --eval-only train.init_checkpoint=<detector .pth>
    python tools/train_detection.py --config-file ... --resume          # continue from output_dir

Multi-machine: --num-machines N --machine-rank R --dist-url tcp://HOST:PORT (detectron2's flags).
"""

from d2ssl.engine.detection import main
from d2ssl.engine.launch import launch_from_command_line

if __name__ == "__main__":
    launch_from_command_line(main)
