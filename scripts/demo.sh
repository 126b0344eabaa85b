#!/usr/bin/env bash
# README command 1: set up (idempotent), then on the CPU and on real photos (Fashion-MNIST):
#   1. pretrain tiny Jigsaw, PIRL (300 steps) and RotNet (1,000 steps) from scratch with tools/train_net.py,
#   2. evaluate each trunk and a randomly initialised trunk of the same architecture with the same
#      evaluation: frozen res4 features of 10,000 training / 2,000 test photos at the size the method
#      pretrained at, the fast linear path (a grid of linear classifiers) and NPID's weighted kNN,
#   3. transfer to detection: train a Faster R-CNN (FPN) on the frozen RotNet trunk and on a frozen random
#      trunk, same iterations and seed, on a small COCO-format set (Fashion-MNIST objects pasted on real
#      photographs), then COCO evaluation,
#   4. print the table (tools/report.py).
# Each phase runs two single-threaded lanes side by side (one per core); a lane's detectron2 output goes
# to $OUT/logs/, and every 30 s the terminal gets each lane's current step and ETA. Outputs go to
# $D2SSL_DEMO_DIR (default: output/demo). A finished pretraining or detection run (its model_final.pth) is not
# redone: delete its folder to train it again. Evaluation always reruns; its features are reused only when
# weights, data and view match by content (tools/extract_features.py).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
bash scripts/setup_env.sh
PY=${D2SSL_VENV:-$ROOT/.venv}/bin/python
OUT=${D2SSL_DEMO_DIR:-$ROOT/output/demo}
mkdir -p "$OUT/logs" "$OUT/eval"
# One intra-op thread per process: the same numbers on every machine size, and no oversubscription
# (two lanes on two cores; 8 threads on 2 busy cores ran 40x slower).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
# --start-over: a step left unfinished (interrupted) starts again from scratch, its files moved to
# <step folder>/previous_runs/ (a finished step is skipped, see step below).
TRAIN=("$PY" tools/train_net.py --num-gpus 0 --start-over)

step() {  # step NAME DONE_FILE COMMAND...: runs COMMAND unless DONE_FILE exists
  local name=$1 done_file=$2; shift 2
  if [[ -e $done_file ]]; then echo "== $name: done already ($done_file)"; return; fi
  echo "== $name"
  "$@"
}
lanes() {  # lanes FUNCTION_A FUNCTION_B: runs both side by side, each logging to $OUT/logs/<function>.log
  local pids=() f failed=0
  local logs=()
  for f in "$@"; do
    "$f" > "$OUT/logs/$f.log" 2>&1 &
    pids+=($!)
    logs+=("$OUT/logs/$f.log")
  done
  ( while sleep 30; do "$PY" -m d2ssl.utils.progress "${logs[@]}"; done ) &
  local ticker=$!
  for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then
      f=${*:$((i + 1)):1}
      tail -n 30 "$OUT/logs/$f.log" >&2
      echo "failed: $f (log: $OUT/logs/$f.log)" >&2
      failed=1
    fi
  done
  kill "$ticker" 2>/dev/null; wait "$ticker" 2>/dev/null || true
  for f in "$@"; do grep -h "^== " "$OUT/logs/$f.log" | sed "s/^== /   $f: /"; done
  return $failed
}

pretrain_jigsaw() {
  step "pretraining Jigsaw (2x2 tiles, 24 permutations, 64 px)" "$OUT/jigsaw/model_final.pth" \
    "${TRAIN[@]}" --config-file configs/tiny/jigsaw.py train.output_dir="$OUT/jigsaw" train.max_iter=300
}
pretrain_pirl_rotnet() {
  # A subset, so that in 300 steps of 32 images every memory-bank entry is refreshed ~9 times.
  step "pretraining PIRL (image + 3x3 jigsaw tiles, InfoNCE against a memory bank) on 1,024 photos" \
    "$OUT/pirl/model_final.pth" \
    "${TRAIN[@]}" --config-file configs/tiny/pirl.py train.output_dir="$OUT/pirl" train.max_iter=300 \
      dataloader.train.dataset.limit=1024 model.loss.negative_sampling_params.num_negatives=512
  # 32 px crops: the setting in which a 300-step RotNet beats a random trunk beyond the seed-to-seed
  # spread (benchmarks/results/pretraining_vs_random_cpu.json); 1,000 steps, so that every pretraining
  # seed gives a trunk that also helps detection (benchmarks/results/detection_seed_spread_cpu.json).
  step "pretraining RotNet (all 4 rotations of 16 photos per step, 32 px)" "$OUT/rotnet/model_final.pth" \
    "${TRAIN[@]}" --config-file configs/tiny/rotnet.py train.output_dir="$OUT/rotnet" train.max_iter=1000 \
      dataloader.train.mapper.crop_size=32
}

# The evaluation of benchmarks/pretraining_vs_random.py: the first 10,000 training and 2,000 test photos
# at the size the method pretrained at, average-pooled res4 (VISSL judges Jigsaw/RotNet trunks layer by
# layer), the fast linear path's 16 cells (the one with the best top-1 on 10% of every training class,
# held out from training, is selected; its test top-1 is reported) and NPID's weighted kNN (k 20).
evaluate() {  # evaluate NAME IMAGE_SIZE CHECKPOINT ("" = random trunk from train.seed=0)
  local name=$1 size=$2 checkpoint=$3 dir="$OUT/eval/$1"
  echo "== evaluating $name (${size} px)"
  eval_steps "$dir" "$size" "$checkpoint"
}
eval_steps() {
  local dir=$1 size=$2 checkpoint=$3 random=()
  [[ -z $checkpoint ]] && random=(--random-trunk)
  "$PY" tools/extract_features.py --num-gpus 0 "${random[@]}" --config-file configs/eval/tiny/extract_features.py \
    train.init_checkpoint="$checkpoint" train.seed=0 train.output_dir="$dir" extraction.output_dir="$dir" \
    'extraction.layers=[res4]' dataloader.train.mapper.resize_size="$size" \
    dataloader.train.mapper.crop_size="$size" dataloader.test.mapper.resize_size="$size" \
    dataloader.test.mapper.crop_size="$size"
  "$PY" tools/knn_eval.py --features-dir "$dir" --layer res4
  "$PY" tools/linear_grid.py --features-dir "$dir" --layer res4 --standardize both --epochs 30 \
    --batch-size 256 --lr 0.001 0.01 0.1 1.0 --weight-decay 0 1e-4
}
evaluate_64px() {
  evaluate random_64px 64 ""
  evaluate jigsaw 64 "$OUT/jigsaw/model_final.pth"
}
evaluate_32px() {
  evaluate random_32px 32 ""
  evaluate pirl 32 "$OUT/pirl/model_final.pth"
  evaluate rotnet 32 "$OUT/rotnet/model_final.pth"
}

# The setting of benchmarks/results/detection_seed_spread_cpu.json: 512 training and 256 held-out images,
# 600 iterations, the trunk frozen (freeze_at=5: stem and res2-res5, BatchNorm statistics included, as the
# linear benchmark freezes it; FPN and heads train). Fine-tuning the whole trunk for 300 iterations on 128
# images, the box AP moved by 4-8 points with the seed alone, more than any trunk differed from random
# (detection_seed_spread_finetune300_cpu.json); in this setting the pretrained trunks' worst seeds beat
# the random trunk's best.
DETECTION=("$PY" tools/train_detection.py --num-gpus 0 --start-over --config-file configs/detection/tiny/faster_rcnn_FPN_pasted_coco.py
           dataloader.train.dataset.names.num_images=512 dataloader.test.dataset.names.num_images=256 train.seed=0
           model.backbone.bottom_up.freeze_at=5 train.max_iter=600
           'lr_multiplier.scheduler.milestones=[480,560]' lr_multiplier.scheduler.num_updates=600)
detect_rotnet() {
  step "detection transfer: Faster R-CNN (FPN) from the RotNet trunk" "$OUT/detection_rotnet/model_final.pth" \
    "${DETECTION[@]}" train.init_checkpoint="$OUT/rotnet/model_final.pth" train.output_dir="$OUT/detection_rotnet" \
      dataloader.train.dataset.names.root="$OUT/data/pasted_coco_a" dataloader.test.dataset.names.root="$OUT/data/pasted_coco_a"
}
detect_random() {
  step "detection transfer: the same from a random trunk" "$OUT/detection_random/model_final.pth" \
    "${DETECTION[@]}" train.init_checkpoint="" train.output_dir="$OUT/detection_random" \
      dataloader.train.dataset.names.root="$OUT/data/pasted_coco_b" dataloader.test.dataset.names.root="$OUT/data/pasted_coco_b"
}

echo "== 1/3 pretraining Jigsaw | PIRL, then RotNet"
lanes pretrain_jigsaw pretrain_pirl_rotnet
echo "== 2/3 evaluation, each pretrained trunk against a random one: 64 px | 32 px"
lanes evaluate_64px evaluate_32px
for method_size in jigsaw:64 pirl:32 rotnet:32; do
  ln -sfn "random_${method_size#*:}px" "$OUT/eval/${method_size%:*}_random"
done
echo "== 3/3 detection transfer: RotNet trunk | random trunk"
lanes detect_rotnet detect_random

echo "== report"
"$PY" tools/report.py "$OUT"
