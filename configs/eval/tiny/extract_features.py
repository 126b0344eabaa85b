# CPU-sized feature extraction for the demo and the tests: the tiny trunk (configs/common/models.py) on
# 10,000 Fashion-MNIST training photos and 2,000 test photos, 28 px upscaled to 64 as the tiny
# pretraining configs see them (configs/tiny/jigsaw.py), res5 global average (128-d).
#
#   python tools/extract_features.py --config-file configs/eval/tiny/extract_features.py --num-gpus 0 \
#       train.init_checkpoint=output/tiny_jigsaw/model_final.pth extraction.output_dir=output/tiny_features
from detectron2.config import LazyCall as L

from d2ssl.data.datasets import get_dataset_dicts

from ...common.models import tiny_trunk
from ..extract_features_R50 import dataloader, extraction, train

model = tiny_trunk()
dataloader.train.dataset = L(get_dataset_dicts)(names="fashion_mnist_train", limit=10000)
dataloader.test.dataset = L(get_dataset_dicts)(names="fashion_mnist_test", limit=2000)
for split in ("train", "test"):
    dataloader[split].mapper.update(resize_size=64, crop_size=64)

train.update(device="cpu", reference_world_size=0, output_dir="output/tiny_features")
extraction.update(batch_size=256, num_workers=0, output_dir="output/tiny_features")
