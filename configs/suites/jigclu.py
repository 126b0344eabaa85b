# Jigsaw Clustering's published benchmarks (dvlab-research/JigsawClustering README: linear 100 epochs,
# semi-supervised 1% and 10%, COCO detection with FPN), each through its d2ssl config:
#   configs/eval/linear_jigclu_R50.py, semi_jigclu_R50_1percent.py, semi_jigclu_R50_10percent.py,
#   configs/detection/faster_rcnn_R50_FPN_coco.py (datasets/imagenet, datasets/coco).
#
#   python tools/benchmark.py --weights zoo:jigclu_r50_200ep --suite jigclu --num-gpus 8
#   python tools/benchmark.py --weights W --suite jigclu --submit --dry-run      # the four as SLURM jobs
steps = dict(
    linear=dict(kind="train_linear", config="configs/eval/linear_jigclu_R50.py",
                description="fc on frozen res5, 100 epochs (MoCo's main_lincls.py protocol)"),
    semi_1percent=dict(kind="train_linear", config="configs/eval/semi_jigclu_R50_1percent.py",
                       description="whole network fine-tuned on 1% of the labels"),
    semi_10percent=dict(kind="train_linear", config="configs/eval/semi_jigclu_R50_10percent.py",
                        description="whole network fine-tuned on 10% of the labels"),
    coco_fpn=dict(kind="train_detection", config="configs/detection/faster_rcnn_R50_FPN_coco.py",
                  description="Faster R-CNN R50-FPN on COCO train2017, box AP on val2017"),
)
