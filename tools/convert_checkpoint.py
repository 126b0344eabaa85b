#!/usr/bin/env python
"""Write the ResNet of a pretrained checkpoint for detectron2 or torchvision.

    python tools/convert_checkpoint.py output/jigclu_R50/model_final.pth jigclu_R50_d2.pkl --to detectron2
    python tools/convert_checkpoint.py moco_v2_800ep_pretrain.pth.tar r50_moco.pth --to torchvision

The input may be any iopath URI holding a d2ssl, torchvision, VISSL, Jigsaw Clustering, MoCo or
detectron2 checkpoint (recognised from its keys). --to detectron2 writes the model-zoo .pkl that
detectron2's DetectionCheckpointer loads into the ResNet of C4 and FPN detectors (MODEL.WEIGHTS /
train.init_checkpoint); --to torchvision writes a state dict torchvision.models.resnet50() (or the
constructor printed) loads with strict=True, with a zero fc when the checkpoint has no classifier.
"""

import argparse

from d2ssl.checkpoint.export import EXPORT_FORMATS, convert_checkpoint
from d2ssl.utils.errors import reporting_errors


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("input", help="checkpoint to read: any iopath URI, or zoo:<name> (a published "
                                      "checkpoint; python tools/zoo.py lists them)")
    parser.add_argument("output", help="file to write (.pkl for detectron2)")
    parser.add_argument("--to", required=True, choices=EXPORT_FORMATS)
    parser.add_argument("--state-dict-key-name", default=None,
                        help="key of the state dict in the file (default: found automatically)")
    parser.add_argument("--remove-prefix", default=None, help="prefix stripped from the keys first")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="outputs of torchvision's fc when one is made (default 1000)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="unpickle Python objects besides tensors (runs code stored in the file: "
                             "trusted files only)")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
    args = parser.parse_args()
    with reporting_errors(debug=args.debug):
        summary = convert_checkpoint(
            args.input, args.output, args.to, state_dict_key_name=args.state_dict_key_name,
            remove_prefix=args.remove_prefix, num_classes=args.num_classes, allow_pickle=args.allow_pickle,
        )
    print(summary)


if __name__ == "__main__":
    cli()
