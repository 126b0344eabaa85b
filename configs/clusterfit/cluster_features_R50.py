# ClusterFit step 1 (Yan et al., CVPR 2020) on ImageNet-1k with ResNet-50, after VISSL's
# configs/config/pretrain/clusterfit/cluster_features_resnet_8gpu_imagenet.yaml and
# tools/cluster_features_and_label.py: res5 features (global average pool, VISSL's AvgPool2d 7x7 of a 224
# crop) of any trunk d2ssl can load, on the deterministic view (Resize 256, CenterCrop 224), L2-normalised,
# faiss k-means into 16000 clusters with 50 iterations; each training image's cluster id is its
# pseudo-label for step 2 (configs/clusterfit/clusterfit_R50.py), and the val split is assigned to the
# nearest centroid (VISSL's TEST_PARTITION).
#
#   python tools/cluster_features.py --config-file configs/clusterfit/cluster_features_R50.py --num-gpus 8 \
#       train.weights_init.PARAMS_FILE=output/rotnet_R50/model_final.pth
#
# Writes to train.output_dir: imagenet1k_train_N16000_faiss_lbls.npy (the labels_file of step 2),
# the centroids, the val split's labels, clustering_summary.json (sizes, empty clusters, objective per
# iteration, time, NMI/ARI/purity against the true classes) and clustering.png.
# The feature extraction is configs/eval/extract_features_R50.py (d2ssl.evaluation.features): the trunk
# alone (VISSL's SKIP_LAYERS "heads"), the train and val splits on the deterministic view, res5 averaged.
from ..eval.extract_features_R50 import dataloader, extraction, model, train  # noqa: F401

train.weights_init.PARAMS_FILE = ""  # the trunk to cluster with: any layout d2ssl.checkpoint reads
train.output_dir = "output/cluster_features_R50"
extraction.output_dir = "output/cluster_features_R50/features"

# VISSL's CLUSTERFIT section, same names and values (cluster_features_resnet_8gpu_imagenet.yaml l. 63-75 at
# commit 09270ed); SEED, L2_NORMALIZE and USE_GPU are d2ssl's: VISSL always L2-normalises, passes no seed to
# faiss.Kmeans (tools/cluster_features_and_label.py l. 102-104), so faiss's default 1234, and uses the GPU
# when torch sees one.
clustering = dict(
    NUM_CLUSTERS=16000,
    N_ITER=50,
    SEED=1234,  # faiss's default, what VISSL ran
    L2_NORMALIZE=True,
    USE_GPU=None,  # None: faiss on the GPU when faiss-gpu sees one (pip install -e '.[gpu]'), else the CPU
    OUTPUT_DIR="",  # empty: train.output_dir
    FEATURES=dict(
        # True: extract (a finished extraction with the same data, view and weights is reused);
        # False: read already extracted features from PATH (empty: extraction.output_dir). VISSL's tool
        # extracts whatever EXTRACT says.
        EXTRACT=True,
        PATH="",
        DATA_PARTITION="train",  # a dataloader split (VISSL: TRAIN)
        TEST_PARTITION="test",  # null: no held-out assignment (VISSL: TEST)
        DATASET_NAME="imagenet1k",  # prefix of the output files, as VISSL's
        LAYER_NAME="res5",
        # Whitening PCA output dims after the L2 normalisation, not renormalised (VISSL's vissl/utils/pca.py,
        # d2ssl.evaluation.clustering.WhiteningPCA), 0: none, as the published run.
        DIMENSIONALITY_REDUCTION=0,
    ),
)
