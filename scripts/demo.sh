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

echo "== 2/3 pretraining PIRL (image + 3x3 jigsaw tiles, InfoNCE against a memory bank) on 1,024 photos"
# A subset, so that in 300 steps of 32 images every memory-bank entry is refreshed ~9 times.
"${TRAIN[@]}" --config-file configs/tiny/pirl.py train.output_dir="$OUT/pirl" train.max_iter=300 \
    dataloader.train.dataset.limit=1024 model.loss.negative_sampling_params.num_negatives=512 \
    dataloader.train.num_workers=2

echo "== 3/3 detection transfer: convert the Jigsaw trunk, fine-tune Faster R-CNN (FPN) on a small COCO-format set"
"$PY" tools/convert_checkpoint.py "$OUT/jigsaw/model_final.pth" "$OUT/jigsaw/trunk_detectron2.pkl" --to detectron2
"$PY" tools/train_detection.py --num-gpus 0 --config-file configs/detection/tiny/faster_rcnn_FPN_pasted_coco.py \
    train.init_checkpoint="$OUT/jigsaw/trunk_detectron2.pkl" train.output_dir="$OUT/detection_jigsaw" \
    dataloader.train.dataset.names.root="$OUT/data/pasted_coco" dataloader.test.dataset.names.root="$OUT/data/pasted_coco"

echo "== report"
"$PY" tools/report.py "$OUT"
