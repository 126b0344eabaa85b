#!/usr/bin/env python
"""Detection transfer of the demo: pretrained trunks against a randomly initialised one, over seeds.

Fine-tunes ``configs/detection/tiny/faster_rcnn_FPN_pasted_coco.py`` from each trunk with the same
iterations, data and seeds (each run a fresh single-threaded ``tools/train_detection.py`` process),
and prints the box AP of every run, the per-trunk mean and spread (max - min over seeds) and, for
every pretrained trunk, the worst-case gap to the random one (its weakest seed minus the random
trunk's strongest). The demo's claim "pretraining helps detection" holds only if that gap is positive.

    python benchmarks/detection_seed_spread.py --pretrained rotnet=output/demo/rotnet/model_final.pth \
        --seeds 0 1 2 --jobs 2 --out benchmarks/results/detection_seed_spread_cpu.json [key=value ...]

``--pretrained`` takes ``NAME=CHECKPOINT`` (several: e.g. trunks pretrained with different seeds);
``--jobs`` runs that many fine-tunes side by side (one thread each: the box AP does not depend on it).
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
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/detection/tiny/faster_rcnn_FPN_pasted_coco.py"


def final_box_ap(run_dir: str) -> tuple[float, float]:
    with open(os.path.join(run_dir, "metrics.json")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    evals = [r for r in rows if "bbox/AP" in r]
    if not evals:
        raise RuntimeError(f"{run_dir}/metrics.json holds no COCO evaluation")
    return evals[-1]["bbox/AP"], evals[-1]["bbox/AP50"]


def command(init: str, seed: int, out_dir: str, data_dir: str, overrides: list[str]) -> list[str]:
    return [
        sys.executable, "tools/train_detection.py", "--num-gpus", "0", "--config-file", CONFIG,
        f"train.init_checkpoint={init}", f"train.output_dir={out_dir}", f"train.seed={seed}",
        f"dataloader.train.dataset.names.root={data_dir}", f"dataloader.test.dataset.names.root={data_dir}",
        *overrides,
    ]


def run(cmd: list[str], out_dir: str, seed: int) -> dict:
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    with open(os.path.join(out_dir, "log.txt"), "w") as log:
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT, env=env)
    ap, ap50 = final_box_ap(out_dir)
    return {"seed": seed, "box_AP": ap, "AP50": ap50, "seconds": round(time.perf_counter() - start, 1)}


def parse_trunks(values: list[str]) -> dict[str, str]:
    trunks = {}
    for value in values:
        name, sep, path = value.partition("=")
        name, path = (name, path) if sep else ("pretrained", value)
        if name == "random" or name in trunks:
            raise SystemExit(f"--pretrained {value!r}: the name {name!r} is taken")
        if not os.path.isfile(path):
            raise SystemExit(f"--pretrained {value!r}: no file {path}")
        trunks[name] = path
    return trunks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", required=True, nargs="+",
                        help="NAME=CHECKPOINT of a pretrained trunk (any layout d2ssl reads); several")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="fine-tunes run side by side")
    parser.add_argument("--work-dir", default="output/detection_seed_spread")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the detection config")
    args = parser.parse_args()
    trunks = {**parse_trunks(args.pretrained), "random": ""}

    data_dir = os.path.join(args.work_dir, "data")
    jobs = []
    for seed in args.seeds:  # seed-major order, so a change of machine load hits every trunk alike
        for name, init in trunks.items():
            out_dir = os.path.join(args.work_dir, f"{name}_seed{seed}")
            os.makedirs(out_dir, exist_ok=True)
            jobs.append((name, seed, out_dir, command(init, seed, out_dir, data_dir, args.overrides)))
    # The first run writes the data set; the others would race to write it, so it runs alone.
    first = jobs[0]
    results = {first[2]: run(first[3], first[2], first[1])}
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        futures = {out_dir: pool.submit(run, cmd, out_dir, seed) for _, seed, out_dir, cmd in jobs[1:]}
        for out_dir, future in futures.items():
            results[out_dir] = future.result()
    runs: dict[str, list[dict]] = {name: [] for name in trunks}
    for name, seed, out_dir, _ in jobs:
        result = results[out_dir]
        runs[name].append(result)
        print(f"{name:12s} seed {seed}: box AP {result['box_AP']:.2f}  AP50 {result['AP50']:.2f}  "
              f"({result['seconds']} s)", flush=True)
    summary = {}
    for name, rows in runs.items():
        aps = [r["box_AP"] for r in rows]
        summary[name] = {"mean_AP": statistics.mean(aps), "min_AP": min(aps), "max_AP": max(aps),
                         "spread_AP": max(aps) - min(aps)}
    # Weakest seed of each pretrained trunk minus the strongest seed of the random one.
    best_random = summary["random"]["max_AP"]
    gaps = {name: summary[name]["min_AP"] - best_random for name in trunks if name != "random"}
    report = {
        "config": CONFIG, "overrides": args.overrides, "pretrained": {k: v for k, v in trunks.items() if v},
        "seeds": args.seeds, "jobs": args.jobs,
        "machine": f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores".strip(),
        "runs": runs, "summary": summary, "worst_case_gap_AP": gaps,
    }
    print(json.dumps(summary, indent=1))
    for name, gap in gaps.items():
        print(f"worst-case gap {name} (min pretrained - max random): {gap:.2f} AP")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
