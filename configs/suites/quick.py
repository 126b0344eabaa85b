# The quick look at a trunk on ImageNet-1k (datasets/imagenet/{train,val}): ResNet-50 res5 features
# extracted once (configs/eval/extract_features_R50.py: Resize 256, CenterCrop 224, global average), then
# on those features NPID's weighted kNN (k 20 and 200, T 0.07, cosine), the fast linear grid (cell
# selected on 10% of every training class held out, reported on val) and a t-SNE map. Hours on 8 GPUs
# instead of the days of the full linear benchmark; the numbers are not the published protocol's.
#
#   python tools/benchmark.py --weights zoo:pirl_r50_800ep --suite quick --num-gpus 8
steps = dict(
    features=dict(kind="extract_features", config="configs/eval/extract_features_R50.py",
                  description="res5 features of train and val, once"),
    knn=dict(kind="knn", features="features", params=dict(k=[20, 200]), num_gpus=1,
             description="NPID's weighted kNN on the features"),
    linear_grid=dict(kind="linear_grid", features="features", num_gpus=1,
                     params=dict(epochs=100, batch_size=256, device="cuda"),
                     description="linear grid on the features, selected on 10% of train held out"),
    tsne=dict(kind="tsne", features="features", params=dict(max_points=3000), num_gpus=1,
              description="t-SNE map of 3,000 val images"),
)
