#!/usr/bin/env python
"""Detection transfer of the demo: a pretrained trunk against a randomly initialised one, over seeds.

Fine-tunes ``configs/detection/tiny/faster_rcnn_FPN_pasted_coco.py`` from each trunk with the same
iterations, data and seeds (each run a fresh ``tools/train_detection.py`` process), and prints the box
AP of every run, the per-trunk mean and spread (max - min over seeds) and the gap between the trunks.
The demo's claim "pretraining helps detection" holds only if the gap exceeds both spreads.

    python benchmarks/detection_seed_spread.py --pretrained output/demo/jigsaw/model_final.pth \
        --seeds 0 1 2 --out benchmarks/results/detection_seed_spread_cpu.json [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/detection/tiny/faster_rcnn_FPN_pasted_coco.py"


def final_box_ap(run_dir: str) -> tuple[float, float]:
    with open(os.path.join(run_dir, "metrics.json")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    evals = [r for r in rows if "bbox/AP" in r]
    if not evals:
        raise RuntimeError(f"{run_dir}/metrics.json holds no COCO evaluation")
    return evals[-1]["bbox/AP"], evals[-1]["bbox/AP50"]


def run(init: str, seed: int, out_dir: str, data_dir: str, overrides: list[str]) -> dict:
    cmd = [
        sys.executable, "tools/train_detection.py", "--num-gpus", "0", "--config-file", CONFIG,
        f"train.init_checkpoint={init}", f"train.output_dir={out_dir}", f"train.seed={seed}",
        f"dataloader.train.dataset.names.root={data_dir}", f"dataloader.test.dataset.names.root={data_dir}",
        *overrides,
    ]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ap, ap50 = final_box_ap(out_dir)
    return {"seed": seed, "box_AP": ap, "AP50": ap50, "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", required=True, help="pretraining checkpoint (any layout d2ssl reads)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work-dir", default="output/detection_seed_spread")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the detection config")
    args = parser.parse_args()

    data_dir = os.path.join(args.work_dir, "data")
    runs: dict[str, list[dict]] = {"pretrained": [], "random": []}
    for seed in args.seeds:  # interleaved, so a change of machine load hits both trunks alike
        for trunk, init in (("pretrained", args.pretrained), ("random", "")):
            run_dir = os.path.join(args.work_dir, f"{trunk}_seed{seed}")
            result = run(init, seed, run_dir, data_dir, args.overrides)
            runs[trunk].append(result)
            print(f"{trunk:10s} seed {seed}: box AP {result['box_AP']:.2f}  AP50 {result['AP50']:.2f}  "
                  f"({result['seconds']} s)", flush=True)
    summary = {}
    for trunk, results in runs.items():
        aps = [r["box_AP"] for r in results]
        summary[trunk] = {"mean_AP": statistics.mean(aps), "min_AP": min(aps), "max_AP": max(aps),
                          "spread_AP": max(aps) - min(aps)}
    gap = summary["pretrained"]["min_AP"] - summary["random"]["max_AP"]
    report = {
        "config": CONFIG, "overrides": args.overrides, "pretrained": args.pretrained, "seeds": args.seeds,
        "machine": f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores".strip(),
        "runs": runs, "summary": summary,
        "worst_case_gap_AP": gap,  # weakest pretrained seed minus strongest random seed
    }
    print(json.dumps(summary, indent=1))
    print(f"worst-case gap (min pretrained - max random): {gap:.2f} AP")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
