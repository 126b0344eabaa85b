# The tiny suite's feature steps at the size of the "does every method learn" benchmark
# (benchmarks/every_method_vs_random.py): the first 5,000 training and 1,000 test Fashion-MNIST photos at
# 32 px (the scale the tiny configs pretrain NPID, PIRL, JigClu patches and the 32 px RotNet at), every
# layer, NPID's weighted kNN and the fast linear grid of benchmarks/pretraining_vs_random.py (lr 0.001-1 x
# wd 0, 1e-4, with and without standardisation, 30 epochs of batch 256, the cell selected on 10% of every
# training class held out). No training steps: minutes per trunk on one CPU core.
#
#   python tools/benchmark.py --weights output/tiny_rotnet/model_final.pth --suite tiny_layers \
#       --eval-seeds 0 1 2
#   python tools/benchmark.py --weights random:0 --suite tiny_layers --eval-seeds 0 1 2 \
#       --output-dir output/benchmark/random_s0
from .tiny import LAYERS

SIZE, TRAIN, TEST = 32, 5000, 1000

steps = dict(
    features=dict(
        kind="extract_features", config="configs/eval/tiny/extract_features.py",
        overrides=[f"dataloader.train.dataset.limit={TRAIN}", f"dataloader.test.dataset.limit={TEST}",
                   *(f"dataloader.{split}.mapper.{key}={SIZE}" for split in ("train", "test")
                     for key in ("resize_size", "crop_size")),
                   f"extraction.layers=[{','.join(LAYERS)}]"],
        description=f"global-average features of every layer at {SIZE} px, both splits, once",
    ),
    knn=dict(
        kind="knn", features="features", params=dict(k=[20, 200], layers=LAYERS),
        description="weighted kNN (T 0.07, cosine), every layer",
    ),
    linear_grid=dict(
        kind="linear_grid", features="features",
        params=dict(lrs=[0.001, 0.01, 0.1, 1.0], weight_decays=[0.0, 1e-4], standardize=[False, True],
                    epochs=30, batch_size=256, layers=LAYERS),
        description="fast linear grid per layer, cell selected on 10% of train held out",
    ),
)
