#!/usr/bin/env bash
# ClusterFit on the CPU, on Fashion-MNIST, as in the paper's chain (Yan et al., CVPR 2020):
#   1. a tiny RotNet pretrained from scratch           configs/tiny/rotnet.py            (tools/train_net.py)
#   2. its res5 features clustered by faiss k-means    configs/tiny/clusterfit_cluster.py (tools/cluster_features.py)
#   3. a fresh trunk trained on the pseudo-labels      configs/tiny/clusterfit.py        (tools/train_net.py)
#   4. the linear benchmark of the ClusterFit trunk    configs/eval/tiny/linear.py       (tools/train_linear.py)
# and, for comparison, the linear benchmark of the RotNet trunk it was distilled from.
#
#   bash scripts/clusterfit_chain.sh [OUTPUT_DIR=output/clusterfit_chain] [extra key=value for every step]
#
# Each step's folder holds detectron2's log and metrics.json; step 2 writes clustering_summary.json
# (cluster sizes, k-means objective, NMI/ARI/purity against the true classes) and clustering.png.
# A finished step is not redone: delete its folder to rerun it.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-output/clusterfit_chain}
PY=${PYTHON:-.venv/bin/python}
K=50  # configs/tiny/clusterfit_cluster.py NUM_CLUSTERS

step() {  # step NAME DONE_FILE COMMAND...
  local name=$1 done_file=$2; shift 2
  if [[ -e $done_file ]]; then echo "== $name: done already ($done_file)"; return; fi
  echo "== $name"
  "$@"
}

step "1/5 RotNet pretraining" "$OUT/rotnet/model_final.pth" \
  $PY tools/train_net.py --config-file configs/tiny/rotnet.py --num-gpus 0 --start-over train.output_dir="$OUT/rotnet"
step "2/5 clustering of the RotNet features" "$OUT/cluster/clustering_summary.json" \
  $PY tools/cluster_features.py --config-file configs/tiny/clusterfit_cluster.py --num-gpus 0 \
    train.weights_init.PARAMS_FILE="$OUT/rotnet/model_final.pth" clustering.NUM_CLUSTERS=$K \
    extraction.output_dir="$OUT/cluster/features" train.output_dir="$OUT/cluster"
step "3/5 ClusterFit training on the pseudo-labels" "$OUT/clusterfit/model_final.pth" \
  $PY tools/train_net.py --config-file configs/tiny/clusterfit.py --num-gpus 0 --start-over \
    dataloader.train.dataset.labels_file="$OUT/cluster/fashion_mnist_train_N${K}_faiss_lbls.npy" \
    model.head.dims="[128,$K]" train.output_dir="$OUT/clusterfit"
for trunk in clusterfit rotnet; do
  n=$([[ $trunk == clusterfit ]] && echo 4 || echo 5)
  step "$n/5 linear benchmark of the $trunk trunk" "$OUT/linear_$trunk/model_final.pth" \
    $PY tools/train_linear.py --config-file configs/eval/tiny/linear.py --num-gpus 0 --start-over \
      train.weights_init.PARAMS_FILE="$OUT/$trunk/model_final.pth" train.output_dir="$OUT/linear_$trunk"
done

$PY - "$OUT" <<'PY'
import json, sys
from d2ssl.utils.metrics import read_metrics
out = sys.argv[1]
summary = json.load(open(f"{out}/cluster/clustering_summary.json"))
q, s = summary["train_quality"], summary["sizes"]
print(f"clusters of the RotNet features: K={summary['NUM_CLUSTERS']} NMI {q['nmi']:.3f} ARI {q['ari']:.3f} "
      f"purity {q['purity']:.3f}; sizes {s['min']}..{s['max']} (median {s['median']:.0f}), {s['num_empty']} empty")
fit = [r for r in read_metrics(f"{out}/clusterfit") if "clusterfit_accuracy" in r]
print(f"ClusterFit top-1 against the pseudo-labels: first {fit[0]['clusterfit_accuracy']:.3f}, "
      f"last {fit[-1]['clusterfit_accuracy']:.3f} (chance {1 / summary['NUM_CLUSTERS']:.3f})")
for trunk in ("clusterfit", "rotnet"):
    top1 = [r["top1"] for r in read_metrics(f"{out}/linear_{trunk}") if "top1" in r]
    print(f"linear benchmark of the {trunk} trunk: top-1 {max(top1):.1f} % (best of {len(top1)} evaluations, "
          f"last {top1[-1]:.1f} %)")
PY
