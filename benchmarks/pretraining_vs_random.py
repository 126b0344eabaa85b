#!/usr/bin/env python
"""Does a short pretraining beat a randomly initialised trunk on the demo's evaluation? Prints JSON.

    python benchmarks/pretraining_vs_random.py --seeds 0 1 2 \
        [--config configs/tiny/rotnet.py --steps 300 --train-override key=value ...] \
        [--image-size 32] [--layer res4] [--train-images 10000] [--test-images 2000] [--workdir /tmp/pvr] \
        [--output benchmarks/results/pretraining_vs_random_cpu.json]
    # seeds in parallel, then one summary
    python benchmarks/pretraining_vs_random.py --seeds 0 --output s0.json & ... ; \
    python benchmarks/pretraining_vs_random.py --merge s0.json s1.json s2.json --output all.json

For every seed s, each step in a fresh process through the project's own tools (the commands the demo
runs): ``tools/train_net.py`` pretrains ``--config`` for ``--steps`` steps (``train.seed=s``,
``dataloader.train.seed=s``); then the pretrained trunk and a randomly initialised trunk of the same
architecture (``train.seed=s`` of the extraction config) go through the same evaluation:
``tools/extract_features.py`` (configs/eval/tiny/extract_features.py: the first ``--train-images``
training and ``--test-images`` test photos, resized and centre-cropped to ``--image-size``, the size
the method pretrains at), ``tools/knn_eval.py`` (NPID's weighted kNN, k 20 and 200, T 0.07) and
``tools/linear_grid.py`` (the fast linear path: lr 0.001-1 x wd 0, 1e-4, with and without
standardisation, 30 epochs, batch 256; the cell with the best top-1 on 10% of every training class,
held out from training, is selected and reported by its test top-1). ``margin`` per metric is the worst
pretrained score minus the best random one over all seeds (> 0: pretraining wins beyond the
seed-to-seed spread). Wall and user+system CPU seconds of every step are recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
EXTRACTION_CONFIG = "configs/eval/tiny/extract_features.py"
METRICS = ("linear_top1", "knn_top1@20", "knn_top1@200")
# The chosen setting: a tiny RotNet on 32 px views, evaluated at 32 px on res4 (VISSL judges RotNet and
# Jigsaw trunks layer by layer; RotNet's pretext specialises the last block). Measured on this machine:
# tiny NPID (300 steps on 1,024 photos), JigClu (300 steps) and Jigsaw (300 steps, 64 px) do not beat a
# random trunk on this evaluation; the 32 px RotNet does, on res4 for the linear path and both kNNs, on
# res5 for the linear path and kNN@200 only (benchmarks/results/pretraining_vs_random*_cpu.json). The
# budgets at which every method does, at every layer: benchmarks/every_method_vs_random.py.
PRETRAINING = dict(config="configs/tiny/rotnet.py", steps=300,
                   overrides=("dataloader.train.mapper.crop_size=32", "train.knn_monitor.period=0"))
EVALUATION = dict(image_size=32, layer="res4", train_images=10000, test_images=2000)
# The fast linear path's grid (tools/linear_grid.py --standardize both): 16 cells, 30 epochs of batch 256;
# the unstandardised cells need the small lrs (a random tiny trunk's pooled res5 has a norm of ~26).
GRID = dict(lrs=(0.001, 0.01, 0.1, 1.0), weight_decays=(0.0, 1e-4), standardize=(False, True), epochs=30,
            batch_size=256)


def run_step(command: list[str], log_path: str) -> dict:
    """Runs ``command`` from the repository root (output to ``log_path``); returns its wall and CPU seconds
    (its own, not those of other steps running beside it from other threads)."""
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # a shared machine: no oversubscription by default
        env.setdefault(name, "1")
    start = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code:
        raise SystemExit(f"{' '.join(command)} failed (exit {code}); see {log_path}")
    cpu = usage.ru_utime + usage.ru_stime
    return {"wall_s": round(time.perf_counter() - start, 1), "cpu_s": round(cpu, 1)}


def extraction_overrides(checkpoint: str | None, seed: int, out: str, layer: str, image_size: int,
                         train_images: int, test_images: int) -> list[str]:
    """``key=value`` overrides of EXTRACTION_CONFIG for one trunk (``checkpoint`` None: random init
    from ``seed``): the first ``train_images``/``test_images`` photos at ``image_size``, ``layer``."""
    overrides = [f"train.seed={seed}", f"extraction.output_dir={out}", f"train.output_dir={out}",
                 f"extraction.layers=[{layer}]", f"dataloader.train.dataset.limit={train_images}",
                 f"dataloader.test.dataset.limit={test_images}"]
    for split in ("train", "test"):
        overrides += [f"dataloader.{split}.mapper.resize_size={image_size}",
                      f"dataloader.{split}.mapper.crop_size={image_size}"]
    if checkpoint:
        overrides.append(f"train.init_checkpoint={checkpoint}")
    return overrides


def evaluate_trunk(checkpoint: str | None, seed: int, out: str, args: argparse.Namespace) -> dict:
    """Extraction, kNN and the linear grid of one trunk (``checkpoint`` None: random init from ``seed``)."""
    python = sys.executable
    overrides = extraction_overrides(checkpoint, seed, out, args.layer, args.image_size, args.train_images,
                                     args.test_images)
    times = {
        "extract": run_step([python, "tools/extract_features.py", "--num-gpus", "0", "--config-file",
                             EXTRACTION_CONFIG, *overrides], os.path.join(out, "extract.log")),
        "knn": run_step([python, "tools/knn_eval.py", "--features-dir", out, "--layer", args.layer],
                        os.path.join(out, "knn.log")),
        "linear_grid": run_step([python, "tools/linear_grid.py", "--features-dir", out, "--layer", args.layer,
                                 "--standardize", "both", "--epochs", str(args.epochs),
                                 "--batch-size", str(GRID["batch_size"]),
                                 "--lr", *map(str, args.lr), "--weight-decay", *map(str, args.weight_decay)],
                                os.path.join(out, "linear_grid.log")),
    }
    with open(os.path.join(out, f"knn_{args.layer}.json")) as f:
        knn = json.load(f)
    with open(os.path.join(out, "linear_grid.json")) as f:
        grid = json.load(f)
    # The test top-1 of the cell selected on the held-out validation rows (never selected on test).
    return {"linear_top1": round(grid["selected"]["test_top1"], 2), "linear_selected_cell": grid["selected"],
            "linear_selected_on": grid["selected_on"],
            "knn_top1@20": round(knn["top1@20"], 2), "knn_top1@200": round(knn["top1@200"], 2),
            "seconds": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=PRETRAINING["config"], help="the tiny pretraining config")
    parser.add_argument("--steps", type=int, default=PRETRAINING["steps"])
    parser.add_argument("--train-override", nargs="*", default=list(PRETRAINING["overrides"]),
                        help="key=value for tools/train_net.py")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--image-size", type=int, default=EVALUATION["image_size"],
                        help="evaluation size: the pretraining's")
    parser.add_argument("--layer", default=EVALUATION["layer"])
    parser.add_argument("--train-images", type=int, default=EVALUATION["train_images"])
    parser.add_argument("--test-images", type=int, default=EVALUATION["test_images"])
    parser.add_argument("--epochs", type=int, default=GRID["epochs"], help="linear grid epochs")
    parser.add_argument("--lr", type=float, nargs="+", default=list(GRID["lrs"]), help="linear grid")
    parser.add_argument("--weight-decay", type=float, nargs="+", default=list(GRID["weight_decays"]),
                        help="linear grid")
    parser.add_argument("--workdir", default="output/pretraining_vs_random")
    parser.add_argument("--output")
    parser.add_argument("--merge", nargs="+", default=[],
                        help="summarise the runs of these outputs instead (seeds run in parallel)")
    args = parser.parse_args()
    runs = []
    settings = {k: v for k, v in vars(args).items() if k not in ("output", "workdir", "merge")}
    merged_settings = []
    for path in args.merge:
        with open(path) as f:
            part = json.load(f)
        runs += part["runs"]
        merged_settings.append((path, part["settings"]))
    if merged_settings:
        # The settings are those of the runs merged, which must agree on everything but their seeds: a
        # summary of runs with other steps or evaluations would be no setting's numbers.
        first_path, settings = merged_settings[0][0], dict(merged_settings[0][1])
        for path, other in merged_settings[1:]:
            differs = sorted(k for k in set(settings) | set(other)
                             if k != "seeds" and settings.get(k) != other.get(k))
            if differs:
                raise SystemExit(f"error: {path} was run with other settings than {first_path}: {differs}")
        settings["seeds"] = sorted({seed for _, other in merged_settings for seed in other["seeds"]})
    for seed in [] if args.merge else args.seeds:
        pretrain_dir = os.path.abspath(os.path.join(args.workdir, f"pretrain_s{seed}"))
        os.makedirs(pretrain_dir, exist_ok=True)
        checkpoint = os.path.join(pretrain_dir, "model_final.pth")
        # A finished pretraining in the workdir is reused (e.g. to evaluate another layer).
        pretrain_time = None if os.path.exists(checkpoint) else run_step(
            [sys.executable, "tools/train_net.py", "--num-gpus", "0", "--config-file", args.config,
             f"train.output_dir={pretrain_dir}", f"train.max_iter={args.steps}", f"train.seed={seed}",
             f"dataloader.train.seed={seed}", *args.train_override],
            os.path.join(pretrain_dir, "train.log"))
        for kind, trunk in (("pretrained", checkpoint), ("random", None)):
            out = os.path.abspath(os.path.join(args.workdir,
                                               f"eval_{kind}_s{seed}_{args.layer}_{args.image_size}px"))
            os.makedirs(out, exist_ok=True)
            run = {"trunk": kind, "seed": seed, **evaluate_trunk(trunk, seed, out, args)}
            if kind == "pretrained" and pretrain_time:
                run["seconds"]["pretrain"] = pretrain_time
            runs.append(run)
            print(json.dumps(run), flush=True)
    summary = {}
    for metric in METRICS:
        scores = {kind: [r[metric] for r in runs if r["trunk"] == kind] for kind in ("pretrained", "random")}
        summary[metric] = {
            **{f"{kind}_{stat.__name__}": round(stat(v), 2)
               for kind, v in scores.items() for stat in (min, max)},
            **{f"{kind}_mean": round(sum(v) / len(v), 2) for kind, v in scores.items()},
            "margin": round(min(scores["pretrained"]) - max(scores["random"]), 2),
        }
    report = {"settings": settings, "summary": summary, "runs": runs}
    print(json.dumps(report["summary"], indent=2))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
