# CPU-sized ClusterFit step 1 for the chain (scripts/clusterfit_chain.sh) and the tests: res5 features of
# a tiny RotNet trunk (configs/tiny/rotnet.py, 128-d) for the first NUM_IMAGES Fashion-MNIST training
# photos and the first 2,000 test photos (configs/eval/tiny/extract_features.py: 64 px), faiss k-means
# into NUM_CLUSTERS (tens of clusters for 10 classes, as ClusterFit's 16000 for ImageNet's 1000 classes).
#
#   python tools/cluster_features.py --config-file configs/tiny/clusterfit_cluster.py \
#       train.weights_init.PARAMS_FILE=output/tiny_rotnet/model_final.pth
from ..clusterfit.cluster_features_R50 import clustering
from ..eval.tiny.extract_features import dataloader, extraction, model, train  # noqa: F401

NUM_IMAGES = 10000
NUM_CLUSTERS = 50
OUTPUT_DIR = "output/tiny_clusterfit_cluster"
# What configs/tiny/clusterfit.py trains on (change both, or override its labels_file, with NUM_CLUSTERS).
LABELS_FILE = f"{OUTPUT_DIR}/fashion_mnist_train_N{NUM_CLUSTERS}_faiss_lbls.npy"

dataloader.train.dataset.limit = NUM_IMAGES  # the images configs/tiny/clusterfit.py trains on
train.weights_init.PARAMS_FILE = "output/tiny_rotnet/model_final.pth"
train.output_dir = OUTPUT_DIR
extraction.output_dir = f"{OUTPUT_DIR}/features"
clustering.NUM_CLUSTERS = NUM_CLUSTERS
# Empty: the output files are named after dataloader.train.dataset (fashion_mnist_train_N50_...; after
# dataloader.train.dataset=folder:/x/photos/train, photos_train_N50_...), d2ssl.config.dataset_name_of.
clustering.FEATURES.DATASET_NAME = ""
