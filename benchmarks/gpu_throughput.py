#!/usr/bin/env python
"""Training throughput of each R50 config on one GPU at its published per-GPU batch, with and without
mixed precision, printed as JSON: iterations/s, images/s, peak GPU memory, and the fraction of the
step time spent waiting for data.

    python benchmarks/gpu_throughput.py                       # every R50 config, AMP off and on
    python benchmarks/gpu_throughput.py --configs pirl_R50 --iters 50 --dataset imagenet_train
    python benchmarks/gpu_throughput.py --smoke               # tiny configs on CPU (bfloat16), seconds

Each step is a full iteration of the trainer ``tools/train_net.py`` builds (``build_trainer``: data
loading with the config's workers, forward, backward, SGD), timed after a warm-up. The per-GPU batch
is ``total_batch_size / train.reference_world_size`` (the published setups: 8 GPUs, 32 for PIRL).
The data set defaults to the config's (ImageNet); ``--dataset`` names another registered one (e.g.
``fashion_mnist_train``: the mappers then resize small photos, so the data-wait fraction is not
ImageNet's JPEG decoding).
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
from detectron2.utils.events import EventStorage

from d2ssl.engine.train_loop import build_trainer, fill_num_train_samples, instantiate_with, setup_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
R50 = ["jigsaw_R50", "rotnet_R50", "npid_R50", "pirl_R50", "jigclu_R50"]
TINY = ["tiny/jigsaw", "tiny/rotnet", "tiny/npid", "tiny/pirl", "tiny/jigclu"]


def throughput(config: str, amp: bool, iters: int, warmup: int, device: str, dataset: str | None,
               num_workers: int | None, channels_last: bool) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cfg = setup_config(str(CONFIGS / f"{config}.py"), [f"train.output_dir={out}"])
        per_gpu = cfg.dataloader.train.total_batch_size // max(cfg.train.get("reference_world_size") or 1, 1)
        cfg.dataloader.train.total_batch_size = per_gpu
        cfg.train.update(device=device, channels_last=channels_last)
        cfg.train.amp.enabled = amp
        if dataset:
            cfg.dataloader.train.dataset.names = dataset
        if num_workers is not None:
            cfg.dataloader.train.num_workers = num_workers
        data = instantiate(cfg.dataloader.train.dataset)
        fill_num_train_samples(cfg.model, len(data))
        model = instantiate(cfg.model).to(device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        cfg.optimizer.params.model = model
        trainer = build_trainer(model, instantiate_with(cfg.dataloader.train, dataset=data),
                                instantiate(cfg.optimizer), cfg.train)
        cuda = device.startswith("cuda")
        with EventStorage(0) as storage:
            trainer.storage = storage
            for _ in range(warmup):
                trainer.run_step()
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            for _ in range(iters):
                trainer.run_step()
            if cuda:
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            data_time = sum(v for v, _ in storage.history("data_time").values()[-iters:])
        result = {
            "config": f"configs/{config}.py", "amp": amp, "channels_last": channels_last,
            "per_gpu_batch": per_gpu, "iters_per_s": round(iters / elapsed, 3),
            "images_per_s": round(iters * per_gpu / elapsed, 1),
            "data_wait_fraction": round(data_time / elapsed, 3),
        }
        if cuda:
            result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="*", default=None, help=f"default: {' '.join(R50)}")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--amp", choices=["off", "on", "both"], default="both")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--dataset", default=None, help="a registered data set instead of the config's")
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny configs on CPU, 2 steps: a check, not a figure")
    args = parser.parse_args(argv)
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU machine, or --smoke on CPU")
    configs = args.configs or (TINY if args.smoke else R50)
    iters, warmup = (2, 1) if args.smoke else (args.iters, args.warmup)
    amps = {"off": [False], "on": [True], "both": [False, True]}[args.amp]
    results = [throughput(c, amp, iters, warmup, device, args.dataset, args.num_workers, args.channels_last)
               for c in configs for amp in amps]
    machine = {"device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
               "cpu_cores": os.cpu_count(), "torch": torch.__version__,
               "cuda": torch.version.cuda if device == "cuda" else None}
    report = {"machine": machine, "results": results}
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
