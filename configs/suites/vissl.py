# VISSL's benchmark suite for a ResNet-50 trunk (facebookresearch/vissl configs/config/benchmark/): the
# 7-head linear benchmark on frozen conv1..res5 (configs/eval/linear_vissl_R50.py), the nearest-neighbour
# benchmark (k 200, sigma 0.1, raw inner products, on res5 features extracted once), semi-supervised full
# fine-tuning on 1% and 10% of the labels (semi_vissl_R50_*percent.py) and Faster R-CNN R50-C4 on VOC07
# (configs/detection/faster_rcnn_R50_C4_voc07.py).
#
#   python tools/benchmark.py --weights zoo:jigsaw_r50_in1k_goyal19 --suite vissl --num-gpus 8
steps = dict(
    features=dict(kind="extract_features", config="configs/eval/extract_features_R50.py",
                  description="res5 features of train and val, once"),
    knn=dict(kind="knn", features="features", params=dict(protocol="vissl"), num_gpus=1,
             description="VISSL's nearest-neighbour benchmark"),
    linear=dict(kind="train_linear", config="configs/eval/linear_vissl_R50.py",
                description="7 linear heads on frozen conv1..res5, 28 epochs"),
    semi_1percent=dict(kind="train_linear", config="configs/eval/semi_vissl_R50_1percent.py",
                       description="whole network fine-tuned on 1% of the labels"),
    semi_10percent=dict(kind="train_linear", config="configs/eval/semi_vissl_R50_10percent.py",
                        description="whole network fine-tuned on 10% of the labels"),
    voc07_c4=dict(kind="train_detection", config="configs/detection/faster_rcnn_R50_C4_voc07.py",
                  description="Faster R-CNN R50-C4 on VOC07 trainval, VOC07 test AP"),
)
