# The CPU suite (tools/benchmark.py --suite tiny): every kind of step at tiny sizes, seconds each on a CPU
# core, for the tests and the demo. The tiny trunk (configs/common/models.py) on 600 Fashion-MNIST
# training photos and 300 test photos at 64 px. Its numbers show the path works, not what a trunk learned
# (4 detection iterations usually predict nothing: box AP n/a); see configs/suites/quick.py, jigclu.py
# and vissl.py for the published protocols.
#
#   python tools/benchmark.py --weights output/tiny_rotnet/model_final.pth --suite tiny
#
# A suite is a dict of steps run in order (d2ssl.evaluation.benchmark_suite): a tool run on a config with
# overrides, or a library call on the features an extract_features step wrote. Copy it to write your own.
TRAIN, TEST = 600, 300
LIMITS = [f"dataloader.train.dataset.limit={TRAIN}", f"dataloader.test.dataset.limit={TEST}"]

# Every layer, as VISSL judges Jigsaw and RotNet trunks (a pretext specialises the last block).
LAYERS = ["conv1", "res2", "res3", "res4", "res5"]

steps = dict(
    features=dict(
        kind="extract_features", config="configs/eval/tiny/extract_features.py",
        overrides=[*LIMITS, "extraction.batch_size=100", f"extraction.layers=[{','.join(LAYERS)}]"],
        description="global-average features of every layer, both splits, once",
    ),
    knn=dict(
        kind="knn", features="features", params=dict(k=[5, 10, 20, 50], layers=LAYERS),
        description="weighted kNN (T 0.07, cosine) at several k, every layer",
    ),
    linear_grid=dict(
        kind="linear_grid", features="features",
        params=dict(lrs=[0.01, 0.1], weight_decays=[0.0, 1e-4], epochs=10, batch_size=64, layers=LAYERS),
        description="fast linear grid on each layer's features, cell selected on 10% of train held out",
    ),
    tsne=dict(
        kind="tsne", features="features", params=dict(max_points=100),
        description="t-SNE map of the test features",
    ),
    linear=dict(
        kind="train_linear", config="configs/eval/tiny/linear.py",
        overrides=[*LIMITS, "train.max_iter=10", "train.eval_period=10", "train.checkpointer.period=5",
                   "dataloader.val.fraction=0.1"],
        description="fc on frozen res5 (JigClu/MoCo protocol), selected on 10% of train held out",
    ),
    detection=dict(
        kind="train_detection", config="configs/detection/tiny/faster_rcnn_FPN_pasted_coco.py",
        overrides=["train.max_iter=4", "train.eval_period=4", "train.checkpointer.period=2",
                   "train.precise_bn.num_iter=1", "lr_multiplier.scheduler.milestones=[2,3]",
                   "lr_multiplier.scheduler.num_updates=4", "lr_multiplier.warmup_length=0.25"],
        description="Faster R-CNN FPN fine-tune, COCO box AP on held-out pasted images",
    ),
)
