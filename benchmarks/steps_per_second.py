#!/usr/bin/env python
"""Training steps per second of each tiny config on this machine (CPU), printed as JSON.

    python benchmarks/steps_per_second.py [--iters 30] [--warmup 5] [jigsaw rotnet npid pirl jigclu]

Each step is a full training iteration of detectron2's SimpleTrainer as tools/train_net.py runs it
(data loading with the config's workers, forward, backward, SGD), timed after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from detectron2.config import instantiate
from detectron2.engine import SimpleTrainer

from d2ssl.engine.train_loop import fill_num_train_samples, instantiate_with, setup_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "tiny"


def steps_per_second(name: str, iters: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cfg = setup_config(str(CONFIGS / f"{name}.py"), [f"train.output_dir={out}"])
        dataset = instantiate(cfg.dataloader.train.dataset)
        fill_num_train_samples(cfg.model, len(dataset))
        model = instantiate(cfg.model).to(cfg.train.device)
        cfg.optimizer.params.model = model
        optimizer = instantiate(cfg.optimizer)
        loader = instantiate_with(cfg.dataloader.train, dataset=dataset)
        trainer = SimpleTrainer(model, loader, optimizer)
        from detectron2.utils.events import EventStorage

        with EventStorage(0) as storage:
            trainer.storage = storage
            for _ in range(warmup):
                trainer.run_step()
            start = time.perf_counter()
            for _ in range(iters):
                trainer.run_step()
            elapsed = time.perf_counter() - start
        batch = cfg.dataloader.train.total_batch_size
        return {"config": f"configs/tiny/{name}.py", "steps_per_s": round(iters / elapsed, 2),
                "images_per_s": round(iters * batch / elapsed, 1), "total_batch_size": batch}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("methods", nargs="*", default=["jigsaw", "rotnet", "npid", "pirl", "jigclu"])
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    methods = [m for m in args.methods if (CONFIGS / f"{m}.py").exists()]
    results = [steps_per_second(m, args.iters, args.warmup) for m in methods]
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "torch": torch.__version__, "threads": torch.get_num_threads()}
    print(json.dumps({"machine": machine, "results": results}, indent=2))


if __name__ == "__main__":
    main()
