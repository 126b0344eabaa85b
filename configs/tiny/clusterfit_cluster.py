# CPU-sized ClusterFit step 1 for the chain (scripts/clusterfit_chain.sh) and the tests: res5 features of
# a tiny RotNet trunk (configs/tiny/rotnet.py, 128-d) for the first NUM_IMAGES Fashion-MNIST training
# photos and the first 2,000 test photos (upscaled to 64 px as every configs/tiny/ file), faiss k-means
# into NUM_CLUSTERS (tens of clusters for 10 classes, as ClusterFit's 16000 for ImageNet's 1000 classes).
#
#   python tools/cluster_features.py --config-file configs/tiny/clusterfit_cluster.py \
#       train.weights_init.PARAMS_FILE=output/tiny_rotnet/model_final.pth
from detectron2.config import LazyCall as L

from d2ssl.data.datasets import get_dataset_dicts

from ..clusterfit.cluster_features_R50 import clustering, dataloader, extraction, train
from ..common.models import tiny_trunk

NUM_IMAGES = 10000
NUM_CLUSTERS = 50
OUTPUT_DIR = "output/tiny_clusterfit_cluster"
# What configs/tiny/clusterfit.py trains on (change both, or override its labels_file, with NUM_CLUSTERS).
LABELS_FILE = f"{OUTPUT_DIR}/fashion_mnist_train_N{NUM_CLUSTERS}_faiss_lbls.npy"

dataloader.train.dataset = L(get_dataset_dicts)(names="fashion_mnist_train", limit=NUM_IMAGES)
dataloader.test.dataset = L(get_dataset_dicts)(names="fashion_mnist_test", limit=2000)
for split in ("train", "test"):
    dataloader[split].mapper.update(resize_size=64, crop_size=64)

model = tiny_trunk()
train.device = "cpu"
train.weights_init.PARAMS_FILE = "output/tiny_rotnet/model_final.pth"

extraction.update(batch_size=128, num_workers=0, output_dir=f"{OUTPUT_DIR}/features")
clustering.update(NUM_CLUSTERS=NUM_CLUSTERS, OUTPUT_DIR=OUTPUT_DIR)
clustering.FEATURES.DATASET_NAME = "fashion_mnist"
