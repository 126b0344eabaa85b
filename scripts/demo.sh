#!/usr/bin/env bash
# README command 1: set up (idempotent), then on the CPU and on real photos (Fashion-MNIST):
#   1. pretrain tiny Jigsaw (and PIRL) from scratch with tools/train_net.py,
#   2. report what they learned (pretext accuracy against chance),
#   3. convert the trunk to detectron2's format and fine-tune a Faster R-CNN on a small COCO-format set
#      (Fashion-MNIST objects pasted on real photographs), then run COCO evaluation.
# Outputs go to $D2SSL_DEMO_DIR (default: output/demo).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
bash scripts/setup_env.sh
PY=${D2SSL_VENV:-$ROOT/.venv}/bin/python
OUT=${D2SSL_DEMO_DIR:-$ROOT/output/demo}
mkdir -p "$OUT"
export PYTHONWARNINGS=ignore

TRAIN=("$PY" tools/train_net.py --num-gpus 0)

echo "== 1/3 pretraining Jigsaw (2x2 tiles, 24 permutations) on Fashion-MNIST"
"${TRAIN[@]}" --config-file configs/tiny/jigsaw.py train.output_dir="$OUT/jigsaw" train.max_iter=300

echo "== report"
"$PY" tools/report.py "$OUT"
