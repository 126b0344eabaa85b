#!/usr/bin/env python
"""Training throughput of each R50 config on one GPU at its published per-GPU batch, with and without
mixed precision, printed as JSON: iterations/s, images/s, peak GPU memory, and the fraction of the
step time spent waiting for data.

    python benchmarks/gpu_throughput.py                       # every R50 config, AMP off and on
    python benchmarks/gpu_throughput.py --configs pirl_R50 --iters 50 --dataset imagenet_train
    python benchmarks/gpu_throughput.py --smoke               # tiny configs on CPU (bfloat16), seconds
    python benchmarks/gpu_throughput.py --configs pirl_R50 --augment-on-device both --device-augmentation

Each step is a full iteration of the trainer ``tools/train_net.py`` builds (``build_trainer``: data
loading with the config's workers, forward, backward, SGD), timed after a warm-up. The per-GPU batch
is ``total_batch_size / train.reference_world_size`` (the published setups: 8 GPUs, 32 for PIRL).
The data set defaults to the config's (ImageNet); ``--dataset`` names another registered one (e.g.
``fashion_mnist_train``: the mappers then resize small photos, so the data-wait fraction is not
ImageNet's JPEG decoding).

``--augment-on-device on|both`` trains with the mappers' ``augment_on_device=True`` (PIRL, NPID, JigClu
configs: the loader decodes and crops, the model's GPU augments). ``--device-augmentation`` adds, per
config with that option, the loader's images/s in one process with the option off and on, and the
model-side time per per-GPU batch of ``augment_on_device`` (uint8 views to the GPU, colour kernels,
normalisation) for each deferred view key.
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

from d2ssl.data.device_augmentation import DEFERRED_AUGMENTATION, augment_on_device
from d2ssl.engine.train_loop import build_trainer, fill_num_train_samples, instantiate_with, setup_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
R50 = ["jigsaw_R50", "rotnet_R50", "npid_R50", "pirl_R50", "jigclu_R50"]
TINY = ["tiny/jigsaw", "tiny/rotnet", "tiny/npid", "tiny/pirl", "tiny/jigclu"]


def throughput(config: str, amp: bool, iters: int, warmup: int, device: str, dataset: str | None,
               num_workers: int | None, channels_last: bool, on_device: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cfg = setup_config(str(CONFIGS / f"{config}.py"), [f"train.output_dir={out}"])
        if on_device:
            cfg.dataloader.train.mapper.augment_on_device = True
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
            "augment_on_device": on_device,
            "per_gpu_batch": per_gpu, "iters_per_s": round(iters / elapsed, 3),
            "images_per_s": round(iters * per_gpu / elapsed, 1),
            "data_wait_fraction": round(data_time / elapsed, 3),
        }
        if cuda:
            result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        return result


def has_device_option(config: str) -> bool:
    cfg = setup_config(str(CONFIGS / f"{config}.py"), [])
    return "augment_on_device" in cfg.dataloader.train.mapper


def device_augmentation(config: str, device: str, dataset: str | None, images: int, batches: int) -> dict:
    """Loader images/s (one process) with ``augment_on_device`` off and on, and the model side's time
    per per-GPU batch (``augment_on_device`` for each deferred view key; median over ``batches``)."""
    cfg = setup_config(str(CONFIGS / f"{config}.py"), [])
    if dataset:
        cfg.dataloader.train.dataset.names = dataset
    data = instantiate(cfg.dataloader.train.dataset)
    per_gpu = cfg.dataloader.train.total_batch_size // max(cfg.train.get("reference_world_size") or 1, 1)
    result = {"config": f"configs/{config}.py", "per_gpu_batch": per_gpu, "loader_images": images}
    mapped = {}
    for on in (False, True):
        cfg.dataloader.train.mapper.augment_on_device = on
        mapper = instantiate(cfg.dataloader.train.mapper)
        generator = torch.Generator().manual_seed(0)
        dicts = [dict(data[i % len(data)], image_id=i % len(data)) for i in range(max(images, per_gpu))]
        mapper(dicts[0], generator)  # warm-up (imports, lookup tables)
        start = time.perf_counter()
        mapped[on] = [mapper(d, generator) for d in dicts[:images]]
        rate = images / (time.perf_counter() - start)
        result[f"loader_images_per_s_{'on' if on else 'off'}"] = round(rate, 1)
        if on and len(mapped[on]) < per_gpu:
            mapped[on] += [mapper(d, generator) for d in dicts[images:per_gpu]]
    batch = mapped[True][:per_gpu]
    cuda = device.startswith("cuda")
    for key in batch[0][DEFERRED_AUGMENTATION]:
        augment_on_device(batch, key, device)  # warm-up
        times = []
        for _ in range(batches):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            augment_on_device(batch, key, device)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        result[f"augment_ms_per_batch_{key}"] = round(1000 * sorted(times)[len(times) // 2], 3)
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
    parser.add_argument("--augment-on-device", choices=["off", "on", "both"], default="off",
                        help="train with the mappers' augment_on_device (configs that have it)")
    parser.add_argument("--device-augmentation", action="store_true",
                        help="also time the device path: loader images/s off/on, model-side ms per batch")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny configs on CPU, 2 steps: a check, not a figure")
    args = parser.parse_args(argv)
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU machine, or --smoke on CPU")
    configs = args.configs or (TINY if args.smoke else R50)
    iters, warmup = (2, 1) if args.smoke else (args.iters, args.warmup)
    amps = {"off": [False], "on": [True], "both": [False, True]}[args.amp]
    on_device = {"off": [False], "on": [True], "both": [False, True]}[args.augment_on_device]
    results = [
        throughput(c, amp, iters, warmup, device, args.dataset, args.num_workers, args.channels_last, on)
        for c in configs for amp in amps for on in on_device if not on or has_device_option(c)
    ]
    machine = {"device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
               "cpu_cores": os.cpu_count(), "torch": torch.__version__,
               "cuda": torch.version.cuda if device == "cuda" else None}
    report = {"machine": machine, "results": results}
    if args.device_augmentation:
        images, batches = (8, 2) if args.smoke else (200, 20)
        report["device_augmentation"] = [device_augmentation(c, device, args.dataset, images, batches)
                                         for c in configs if has_device_option(c)]
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
