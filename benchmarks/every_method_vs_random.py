#!/usr/bin/env python
"""Does every method learn? Each of the six methods, pretrained at a CPU budget over several seeds,
against random trunks of the same architecture, at every layer, through ``tools/benchmark.py``. Prints
and writes JSON (and a Markdown table with ``--markdown``).

    OMP_NUM_THREADS=1 python benchmarks/every_method_vs_random.py --seeds 0 1 2 --eval-seeds 0 1 2 \
        --jobs 2 --workdir output/every_method --output benchmarks/results/every_method_vs_random_cpu.json \
        --markdown benchmarks/results/every_method_vs_random_cpu.md

1. Pretraining (``tools/train_net.py``, a fresh process each, ``--jobs`` side by side): for every method
   of ``METHODS`` and pretraining seed s (``train.seed=s``, ``dataloader.train.seed=s``), the tiny config
   with the step budget and overrides written there. ClusterFit is the paper's chain: the RotNet trunk of
   the same seed, its res5 features clustered by faiss k-means (``tools/cluster_features.py``), a fresh
   trunk trained on the pseudo-labels.
2. Evaluation (``tools/benchmark.py --suite configs/suites/tiny_layers.py --eval-seeds ...``): each
   pretrained trunk and each random trunk ``random:s`` (initialised from seed s) through the same suite:
   features at every layer (conv1, res2..res5) of the first 5,000 training and 1,000 test photos at
   32 px, NPID's weighted kNN (k 20) and the fast linear grid, its cell selected on 10% of every
   training class held out and reported by its test top-1, once per evaluation seed (head initialisation,
   batch order and the held-out rows).
3. Summary: per method, layer and metric, the worst pretrained score (all pretraining x evaluation
   seeds) minus the best random one; > 0 means the method beats random beyond the seed spread there.

A pretraining folder is reused only when its ``settings.json`` holds the same command (budget, seed,
overrides), the same resolved config and d2ssl's version, else refused naming what differs; the evaluation
is reused by content by ``tools/benchmark.py`` itself.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys
import threading

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")))
from pretraining_vs_random import run_step  # noqa: E402  (the one way the benchmarks run a timed step)

import d2ssl  # noqa: E402
from d2ssl.utils.margins import format_margins, margin_summary, read_trunk_scores  # noqa: E402
from d2ssl.utils.progress import describe_progress  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
SUITE = "configs/suites/tiny_layers.py"
NO_MONITOR = "train.knn_monitor.period=0"
# Budgets: minutes of one CPU core per run. The evaluation sees the photos at 32 px; every method pretrains
# at that scale (NPID, PIRL and JigClu's patches as their tiny configs; RotNet, Jigsaw and ClusterFit told
# so), each measured first at seed 0 against the random trunks' spread (benchmarks/results/
# every_method_vs_random_cpu.md says what the shorter settings gave).
METHODS = {
    # The tiny config's 64 px views with 28 px tiles see the photo at twice the evaluation's scale.
    "jigsaw": dict(config="configs/tiny/jigsaw.py", steps=3000,
                   overrides=["dataloader.train.mapper.resize_size=32",
                              "dataloader.train.mapper.crop_size=32", "dataloader.train.mapper.tile_size=14",
                              NO_MONITOR]),
    "rotnet": dict(config="configs/tiny/rotnet.py", steps=1000,
                   overrides=["dataloader.train.mapper.crop_size=32", NO_MONITOR]),
    # NPID and PIRL learn against a memory bank of one entry per image, which holds real embeddings only
    # from an image's second visit: on all 60,000 photos 1,000 steps of 32 are half an epoch (the bank
    # stays random and the trunk ends below a random one); on the 5,000 photos the evaluation trains its
    # probes on (without their labels), 19 and 13 epochs.
    "npid": dict(config="configs/tiny/npid.py", steps=3000,
                 overrides=["dataloader.train.dataset.limit=5000", NO_MONITOR]),
    "pirl": dict(config="configs/tiny/pirl.py", steps=2000,
                 overrides=["dataloader.train.dataset.limit=5000", NO_MONITOR]),
    "jigclu": dict(config="configs/tiny/jigclu.py", steps=1000, overrides=[NO_MONITOR]),
    # The paper's chain: the RotNet trunk of the same seed, 50 k-means clusters of its res5 features.
    "clusterfit": dict(config="configs/tiny/clusterfit.py", steps=1000,
                       overrides=["dataloader.train.mapper.crop_size=32"], source="rotnet", clusters=50),
}
CLUSTER_CONFIG = "configs/tiny/clusterfit_cluster.py"


def _cost(method: str) -> float:
    """Steps x CPU seconds per step of one core (measured here): the order the pretrainings start in."""
    per_step = {"jigsaw": 0.04, "rotnet": 0.05, "npid": 0.06, "pirl": 0.18, "jigclu": 0.07,
                "clusterfit": 0.08}
    return METHODS[method]["steps"] * per_step.get(method, 0.1)


RUNNING: set[str] = set()  # the logs being written, for the progress lines


def print_progress(period: float, stop: threading.Event) -> None:
    """Every ``period`` seconds, one line per running step: its log's latest iteration and ETA."""
    while not stop.wait(period):
        for path in sorted(RUNNING):
            try:
                with open(path, errors="replace") as f:
                    line = describe_progress(f.read())
            except OSError:
                continue
            name = os.path.relpath(path, os.path.dirname(os.path.dirname(path)))
            print(f"   {name}: {line or 'starting'}", flush=True)


def run(command: list[str], log_path: str) -> dict:
    """``run_step`` (wall and CPU seconds of the command), its log shown in the progress lines meanwhile."""
    RUNNING.add(log_path)
    try:
        return run_step(command, log_path)
    finally:
        RUNNING.discard(log_path)


def _settings(command: list[str]) -> dict:
    """What a step's output depends on: its command, its config as resolved with the command's overrides
    (a config or a file it imports edited since counts) and d2ssl's version."""
    from d2ssl.engine.run_folder import config_digest
    from d2ssl.engine.train_loop import setup_config

    config = command[command.index("--config-file") + 1]
    overrides = [a for a in command[command.index("--config-file") + 2:] if "=" in a]
    return {"command": command[1:], "config_digest": config_digest(setup_config(config, overrides)),
            "d2ssl": d2ssl.__version__}


def _settled(folder: str, settings: dict, done_file: str) -> bool:
    """True when ``folder`` finished this very step; a folder holding another step is refused, naming what
    differs."""
    path = os.path.join(folder, "settings.json")
    if os.path.isfile(path):
        with open(path) as f:
            held = json.load(f)
        differs = sorted(k for k in set(held) | set(settings) if held.get(k) != settings.get(k))
        if differs:
            raise SystemExit(f"error: {folder} holds a run of other {', '.join(differs)} ({path}): delete "
                             f"the folder or give another --workdir")
        return os.path.isfile(os.path.join(folder, done_file))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
        json.dump(settings, f, indent=2)
    return False


def pretrain(method: str, seed: int, workdir: str) -> dict:
    """Pretrains ``method`` with ``seed`` (ClusterFit: after its source method of the same seed);
    returns ``{"checkpoint", "seconds"}``."""
    spec = METHODS[method]
    python = sys.executable
    folder = os.path.join(workdir, f"{method}_s{seed}")
    seeds = [f"train.seed={seed}", f"dataloader.train.seed={seed}"]
    seconds = {}
    overrides = list(spec["overrides"])
    if "source" in spec:
        source = os.path.join(workdir, f"{spec['source']}_s{seed}", "model_final.pth")
        cluster = os.path.join(folder, "cluster")
        labels = os.path.join(cluster, f"fashion_mnist_train_N{spec['clusters']}_faiss_lbls.npy")
        command = [python, "tools/cluster_features.py", "--num-gpus", "0", "--config-file", CLUSTER_CONFIG,
                   f"train.weights_init.PARAMS_FILE={source}", f"clustering.NUM_CLUSTERS={spec['clusters']}",
                   f"extraction.output_dir={cluster}/features", f"train.output_dir={cluster}",
                   # the source trunk's own scale
                   *(f"dataloader.{s}.mapper.{k}=32" for s in ("train", "test") for k in ("resize_size",
                                                                                          "crop_size"))]
        if not _settled(cluster, _settings(command), "clustering_summary.json"):
            seconds["cluster"] = run(command, os.path.join(cluster, "cluster.log"))
        overrides += [f"dataloader.train.dataset.labels_file={labels}",
                      f"model.head.dims=[128,{spec['clusters']}]"]
    command = [python, "tools/train_net.py", "--num-gpus", "0", "--config-file", spec["config"],
               f"train.output_dir={folder}", f"train.max_iter={spec['steps']}", *seeds, *overrides]
    if not _settled(folder, _settings(command), "model_final.pth"):
        seconds["pretrain"] = run(command + ["--start-over"] if os.path.isfile(
            os.path.join(folder, "run.json")) else command, os.path.join(folder, "train.log"))
    done = "; ".join(f"{k} {v['wall_s']:.0f} s" for k, v in seconds.items()) or "done already"
    print(f"pretrained {method} seed {seed}: {done}", flush=True)
    return {"checkpoint": os.path.join(folder, "model_final.pth"), "seconds": seconds}


def evaluate(weights: str, name: str, eval_seeds: list[int], workdir: str) -> dict:
    """``tools/benchmark.py`` on ``weights`` with every evaluation seed, into ``<workdir>/eval/<name>``."""
    out = os.path.join(workdir, "eval", name)
    os.makedirs(out, exist_ok=True)
    seconds = run([sys.executable, "tools/benchmark.py", "--weights", weights, "--suite", SUITE,
                   "--output-dir", out, "--eval-seeds", *map(str, eval_seeds)],
                  os.path.join(workdir, "eval", f"{name}.log"))
    print(f"evaluated {name}: {seconds['wall_s']:.0f} s (steps done before are skipped by content)",
          flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="pretraining seeds")
    parser.add_argument("--random-seeds", type=int, nargs="+", help="random trunks (default: --seeds)")
    parser.add_argument("--eval-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side")
    parser.add_argument("--workdir", default="output/every_method")
    parser.add_argument("--pretrain-only", action="store_true")
    parser.add_argument("--progress-seconds", type=float, default=0,
                        help="print each running step's iteration and ETA this often (0: only when done)")
    parser.add_argument("--output")
    parser.add_argument("--markdown")
    args = parser.parse_args()
    workdir = os.path.abspath(args.workdir)
    random_seeds = args.random_seeds or args.seeds
    os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
    methods = list(args.methods)
    for method in list(methods):  # ClusterFit needs its source trunk
        source = METHODS[method].get("source")
        if source and source not in methods:
            methods.insert(0, source)
    # Tasks in priority order, each started as soon as a lane is free and what it needs is done: the
    # sources of other methods (RotNet for ClusterFit), then the longest pretrainings (one lane is not left
    # alone with PIRL at the end), then the evaluations (under a minute each).
    sources = {METHODS[m].get("source") for m in methods}
    order = sorted(methods, key=lambda m: (m not in sources, -_cost(m)))
    tasks: list[tuple[str, str, int]] = [("pretrain", m, s) for m in order for s in args.seeds]
    if not args.pretrain_only:
        tasks += [("evaluate", m, s) for m in args.methods for s in args.seeds]
        tasks += [("evaluate", "random", s) for s in random_seeds]
    pretrained: dict[tuple[str, int], dict] = {}
    seconds: dict[tuple[str, int], dict] = {}
    stop = threading.Event()
    if args.progress_seconds > 0:
        threading.Thread(target=print_progress, args=(args.progress_seconds, stop), daemon=True).start()

    def ready(task: tuple[str, str, int]) -> bool:
        kind, m, s = task
        if kind == "evaluate":
            return m == "random" or (m, s) in pretrained
        source = METHODS[m].get("source")
        return not source or (source, s) in pretrained

    def work(task: tuple[str, str, int]) -> dict:
        kind, m, s = task
        if kind == "pretrain":
            return pretrain(m, s, workdir)
        weights = f"random:{s}" if m == "random" else pretrained[(m, s)]["checkpoint"]
        return evaluate(weights, f"{m}_s{s}", args.eval_seeds, workdir)

    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        running: dict[concurrent.futures.Future, tuple[str, str, int]] = {}
        while tasks or running:
            for task in [t for t in tasks if ready(t)][: args.jobs - len(running)]:
                tasks.remove(task)
                running[pool.submit(work, task)] = task
            done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                kind, m, s = running.pop(future)
                (pretrained if kind == "pretrain" else seconds)[(m, s)] = future.result()  # raises a failure
    if args.pretrain_only:
        stop.set()
        return
    trunks = [(m, s, pretrained[(m, s)]["checkpoint"]) for m in args.methods for s in args.seeds]
    trunks += [("random", s, f"random:{s}") for s in random_seeds]
    stop.set()
    # Only the folders of this command: a workdir may hold other methods or seeds.
    scores = read_trunk_scores(os.path.join(workdir, "eval"))
    trunk_scores = {m: {s: scores[m][s] for s in (random_seeds if m == "random" else args.seeds)}
                    for m in [*args.methods, "random"]}
    runs = [{"method": m, "seed": s, "weights": os.path.relpath(w, ROOT) if os.path.isabs(w) else w,
             "scores": trunk_scores[m][s], "seconds": {**pretrained.get((m, s), {}).get("seconds", {}),
                                                       "evaluate": seconds[(m, s)]}}
            for m, s, w in trunks]
    settings = {"methods": {m: METHODS[m] for m in args.methods}, "seeds": args.seeds,
                "random_seeds": random_seeds, "eval_seeds": args.eval_seeds, "suite": SUITE,
                "threads_per_process": os.environ.get("OMP_NUM_THREADS", "1"), "jobs": args.jobs}
    report = {"settings": settings, "summary": margin_summary(trunk_scores), "runs": runs}
    table = format_margins(report["summary"])
    print(table)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=2)
    if args.markdown:
        budgets = ", ".join(f"{m} {METHODS[m]['steps']} steps" for m in args.methods)
        with open(args.markdown, "w") as f:
            f.write(f"Pretraining seeds {args.seeds}, random trunks {random_seeds}, evaluation seeds "
                    f"{args.eval_seeds} ({SUITE}); budgets: {budgets}.\n\n{table}")


if __name__ == "__main__":
    main()
