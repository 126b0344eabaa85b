"""Throughput of d2ssl's data mappers and NCE step against the plain reference recipes (issue 15).

    python benchmarks/throughput.py            # ~10-15 min on 2 shared cores; writes results/throughput_cpu.*
    python benchmarks/throughput.py --quick    # smoke run (small NCE sizes, 1 round)

Every case runs in a fresh process (``--case NAME``), one intra-op thread, and the cases of a round
run one after another, round after round (interleaved), so a baseline and its fast path see the same
machine load; the table reports min and median over rounds and the median of the per-round ratios.

Mappers: images/s on one core, decode included, of 500x375 JPEG photos (scikit-image's own photos,
written to a temporary folder and read from disk in the loop). Each ``*_plain`` case is the reference
recipe written op by op with PIL/torchvision, as VISSL / JigsawClustering run it (one PIL transform
call per view and operation, torch's global RNG); ``*_fast`` is the d2ssl mapper. ``decode`` (open +
full decode) is the floor of both; ``*_draft`` cases decode JPEGs at reduced size
(``decode_min_side``), and ``draft_pixels`` reports what that does to a view's pixels. ``*_device``
is the mapper with ``augment_on_device=True``: the loader decodes, crops and draws only, the colour
augmentation running on the model's GPU (benchmarks/gpu_throughput.py times that side): the per-core
rate that matters when a GPU augments; ``*_devicedraft`` is both options.

NCE: seconds per training step (scores, loss, backward, bank update) of the straightforward gather
(``memory[rows]`` then ``bmm``, as VISSL's ``NCELossWithMemory``) and of ``d2ssl.losses.NCELossWithMemory``.

Loader workers per GPU: ``gpu_images_per_s / mapper_images_per_s`` with ASSUMED GPU rates (not
measured here): an R50 trains at ~1200 images/s of 224 px on one A100/H100 (batch 256, AMP); a
method's rate is that divided by the pixels it feeds per source image (RotNet 4 views; PIRL 1 view +
9 tiles of 64 px; Jigsaw 9 tiles; JigClu one 224 montage per image; NPID one view).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

GPU_R50_IMAGES_PER_S = 1200.0  # assumption, see the module docstring
VIEW_COST = {  # 224-px image equivalents the GPU processes per source image
    "pirl": 1 + 9 * (64 / 224) ** 2,
    "pirl_gblur": 1 + 9 * (64 / 224) ** 2,
    "jigsaw": 9 * (64 / 224) ** 2,
    "rotnet": 4.0,
    "npid": 1.0,
    "jigclu": 1.0,
}
METHODS = ("pirl", "pirl_gblur", "jigsaw", "rotnet", "npid", "jigclu")
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")
# (bank rows N, negatives K, batch B, loss type, heads): the four cases, then the sweeps.
NCE_CASES = {
    "nce_N100k_K16000_B256": (100_000, 16000, 256, "nce", 1),
    "ce_N100k_K16000_B256": (100_000, 16000, 256, "cross_entropy", 1),
    "nce_N1.28M_K16000_B256": (1_280_000, 16000, 256, "nce", 1),
    "pirl_N1.28M_K32000_B32": (1_280_000, 32000, 32, "nce", 2),
    "nce_N10k_K4096_B256": (10_000, 4096, 256, "nce", 1),
    "nce_N1.28M_K4096_B256": (1_280_000, 4096, 256, "nce", 1),
    "nce_N1.28M_K16000_B32": (1_280_000, 16000, 32, "nce", 1),
}
NCE_QUICK = {
    "nce_N10k_K4096_B32": (10_000, 4096, 32, "nce", 1),
    "pirl_N10k_K4096_B32": (10_000, 4096, 32, "nce", 2),
}


# --------------------------------------------------------------------------------------------------
# photos


def write_photos(folder: str) -> list[str]:
    import skimage.data
    from PIL import Image

    paths = []
    for name in PHOTOS:
        array = getattr(skimage.data, name)()
        image = Image.fromarray(array).convert("RGB").resize((500, 375), Image.BICUBIC)
        path = os.path.join(folder, f"{name}.jpg")
        image.save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------------
# plain reference recipes: one PIL / torchvision call per view and op, torch's global RNG


def plain_pipeline(method: str):
    import random

    import torch
    from PIL import Image, ImageFilter
    from torchvision import transforms as T

    from d2ssl.data.color import color_augmentation, photo_gblur_augmentation, reference_color_augmentation
    from d2ssl.data.resize import IMAGENET_MEAN, IMAGENET_STD

    to_tensor = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def decode(path):
        return Image.open(path).convert("RGB")

    def tiles_of(crop, grid=3, tile=64):  # VISSL ImgPatchesFromTensor / ImgPilToPatchesAndImage
        cell = min(crop.size) // grid
        out = []
        for r in range(grid):
            for c in range(grid):
                y, x = r * cell + random.randint(0, cell - tile), c * cell + random.randint(0, cell - tile)
                out.append(crop.crop((x, y, x + tile, y + tile)))
        return out

    if method in ("pirl", "pirl_gblur"):
        aug = color_augmentation((0.4, 0.4, 0.4, 0.2), 1.0, 0.2, photometric_prob=0.66)
        if method == "pirl_gblur":
            aug = photo_gblur_augmentation()
        view_tf = T.Compose([reference_color_augmentation(aug), to_tensor])
        image_crop, patch_crop = T.RandomResizedCrop(224), T.RandomResizedCrop(255, scale=(0.6, 1.0))

        def run(path):
            img = decode(path)
            tiles = tiles_of(patch_crop(img))
            order = torch.randperm(9).tolist()
            return view_tf(image_crop(img)), torch.stack([view_tf(tiles[i]) for i in order])

        return run
    if method == "jigsaw":
        tf = T.Compose([T.Resize(256), T.RandomHorizontalFlip(), T.RandomCrop(255), T.RandomGrayscale(0.66),
                        to_tensor])

        def run(path):
            crop = tf(decode(path))
            tiles = []
            for r in range(3):
                for c in range(3):
                    y, x = r * 85 + random.randint(0, 21), c * 85 + random.randint(0, 21)
                    tiles.append(crop[:, y : y + 64, x : x + 64])
            return torch.stack([tiles[i] for i in torch.randperm(9).tolist()])

        return run
    if method == "rotnet":
        tf = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), to_tensor])
        return lambda path: torch.stack([torch.rot90(tf(decode(path)), k, (1, 2)) for k in range(4)])
    if method == "npid":
        tf = T.Compose([T.ColorJitter(0.4, 0.4, 0.4, 0.4), T.RandomResizedCrop(224), T.RandomHorizontalFlip(),
                        to_tensor])
        return lambda path: tf(decode(path))
    if method == "jigclu":
        # JigsawClustering's JigCluTransform (JigClu/loader.py): PIL GaussianBlur(radius=sigma).
        class PILBlur:
            def __call__(self, x):
                return x.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))

        tf = T.Compose([
            T.RandomResizedCrop(112, scale=(0.2, 1.0)),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.RandomApply([PILBlur()], p=0.5),
            T.RandomHorizontalFlip(),
            to_tensor,
        ])

        def run(path):
            img = decode(path)
            w, h = img.size
            cw, ch = 0.3 * w, 0.3 * h
            boxes = [(0, 0, w // 2 + cw, h // 2 + ch), (w // 2 - cw, 0, w, h // 2 + ch),
                     (0, h // 2 - ch, w // 2 + cw, h), (w // 2 - cw, h // 2 - ch, w, h)]
            return torch.stack([tf(img.crop(b)) for b in boxes])

        return run
    raise ValueError(method)


def fast_pipeline(method: str, decode_min_side: int | None = None, augment_on_device: bool = False):
    import torch
    from torchvision import transforms as T

    from d2ssl.data.color import color_augmentation, photo_gblur_augmentation
    from d2ssl.data.mappers import (
        ImageMapper,
        JigsawClusteringMapper,
        JigsawMapper,
        PIRLMapper,
        RotationMapper,
    )
    from d2ssl.data.permutations import generate_permutations

    if method == "pirl":
        aug = color_augmentation((0.4, 0.4, 0.4, 0.2), 1.0, 0.2, photometric_prob=0.66)
        mapper = PIRLMapper(augmentation=aug, decode_min_side=decode_min_side,
                            augment_on_device=augment_on_device)
    elif method == "pirl_gblur":
        mapper = PIRLMapper(augmentation=photo_gblur_augmentation(), decode_min_side=decode_min_side,
                            augment_on_device=augment_on_device)
    elif method == "jigsaw":
        mapper = JigsawMapper(generate_permutations(9, 100), decode_min_side=decode_min_side)
    elif method == "rotnet":
        mapper = RotationMapper(decode_min_side=decode_min_side)
    elif method == "npid":
        mapper = ImageMapper([T.ColorJitter(0.4, 0.4, 0.4, 0.4), T.RandomResizedCrop(224),
                              T.RandomHorizontalFlip()], augment_on_device=augment_on_device)
    elif method == "jigclu":
        mapper = JigsawClusteringMapper(decode_min_side=decode_min_side, augment_on_device=augment_on_device)
    else:
        raise ValueError(method)
    generator = torch.Generator().manual_seed(0)
    return lambda path: mapper({"file_name": path, "image_id": 0}, generator)


DRAFT_SIDE = {"jigclu": 140, "rotnet": 160, "jigsaw": 160, "pirl": 160, "pirl_gblur": 160}
DEVICE_METHODS = ("pirl", "pirl_gblur", "npid", "jigclu")  # mappers with augment_on_device


def images_per_second(run, paths: list[str], seconds: float) -> float:
    for p in paths:  # warm-up: first calls import / build lookup tables
        run(p)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for p in paths:
            run(p)
        count += len(paths)
    return count / (time.perf_counter() - start)


def run_mapper_case(name: str, folder: str, seconds: float) -> dict:
    from PIL import Image

    paths = sorted(os.path.join(folder, f) for f in os.listdir(folder))
    if name == "decode":
        return {"images_per_s": images_per_second(lambda p: Image.open(p).convert("RGB"), paths, seconds)}
    method, kind = name.rsplit("_", 1)
    if kind == "plain":
        run = plain_pipeline(method)
    elif kind == "fast":
        run = fast_pipeline(method)
    elif kind == "device":
        run = fast_pipeline(method, augment_on_device=True)
    elif kind == "devicedraft":
        run = fast_pipeline(method, decode_min_side=DRAFT_SIDE[method], augment_on_device=True)
    else:
        run = fast_pipeline(method, decode_min_side=DRAFT_SIDE[method])
    return {"images_per_s": images_per_second(run, paths, seconds)}


# --------------------------------------------------------------------------------------------------
# NCE


def straightforward_nce_step(memory, embeddings, indices, negatives, temperature, momentum, loss_type, z):
    """VISSL's NCELossWithMemory step: gather with advanced indexing, bmm, loss, backward, update."""
    import torch
    from torch.nn import functional as F

    total = 0.0
    for embedding, neg in zip(embeddings, negatives):
        v = F.normalize(embedding, dim=1)
        rows = torch.cat([indices.view(-1, 1), neg], dim=1)
        logits = torch.bmm(memory[rows], v.unsqueeze(2)).squeeze(2) / temperature
        if loss_type == "nce":
            log_p = logits - math.log(z)
            noise = neg.shape[1] / memory.shape[0]
            log_den = torch.logaddexp(log_p, log_p.new_tensor(math.log(noise + 1.1920929e-07)))
            term = -(log_p[:, 0] - log_den[:, 0] + (math.log(noise) - log_den[:, 1:]).sum(dim=1)).mean()
        else:
            term = F.cross_entropy(logits, torch.zeros_like(indices))
        total = total + term
        with torch.no_grad():
            memory[indices] = F.normalize(memory[indices] * momentum + v * (1 - momentum), dim=1)
    total.backward()


def run_nce_case(name: str, steps: int, cases: dict) -> dict:
    import torch

    from d2ssl.losses.nce import NCELossWithMemory

    base, impl = name.rsplit(":", 1)
    n, k, b, loss_type, heads = cases[base]
    loss = NCELossWithMemory(
        n, loss_type=loss_type, loss_weights=[1.0] * heads, norm_constant=float(n),
        update_mem_with_emb_index=heads - 1, negative_sampling_params={"num_negatives": k},
        memory_params={"update_mem_on_forward": heads == 1},
    )
    g = torch.Generator().manual_seed(0)
    times = []
    for _ in range(steps + 1):
        indices = torch.randperm(n, generator=g)[:b]
        embeddings = [torch.randn(b, 128, generator=g, requires_grad=True) for _ in range(heads)]
        start = time.perf_counter()
        if impl == "fast":
            loss(embeddings, indices).backward()
        else:
            negatives = [loss.sample_negatives(indices) for _ in range(heads)]
            straightforward_nce_step(loss.memory, embeddings, indices, negatives, loss.temperature,
                                     loss.momentum, loss_type, float(n))
        times.append(time.perf_counter() - start)
    return {"seconds_per_step": min(times[1:])}


def draft_pixel_effect(folder: str) -> dict:
    """Mean absolute difference (levels of 255) between a view cut from the full decode and the same
    view (same relative box) cut from a draft decode, for the two ``decode_min_side`` settings."""
    import torch

    from d2ssl.data.image_io import read_rgb_image
    from d2ssl.data.resize import pil_to_uint8, pil_to_uint8_hwc, random_resized_crop_box, resized_crop

    paths = sorted(os.path.join(folder, f) for f in os.listdir(folder))
    out = {}
    for side, size, scale in ((140, 112, (0.2, 1.0)), (160, 224, (0.08, 1.0))):
        diffs = []
        for i, p in enumerate(paths):
            full = read_rgb_image({"file_name": p})
            draft = read_rgb_image({"file_name": p}, decode_min_side=side)
            fx, fy = draft.width / full.width, draft.height / full.height
            for s in range(8):
                top, left, h, w = random_resized_crop_box(
                    full.width, full.height, scale, torch.Generator().manual_seed(100 * i + s)
                )
                a = resized_crop(pil_to_uint8_hwc(full), (top, left, h, w), size).float()
                box = (left * fx, top * fy, (left + w) * fx, (top + h) * fy)
                b = pil_to_uint8(draft.resize((size, size), 2, box=box)).float()  # 2 = bilinear
                diffs.append(float((a - b).abs().mean()))
        out[f"decode_min_side={side}, view {size}px"] = {
            "mean_abs_diff_levels": statistics.mean(diffs), "decoded_size": list(draft.size)
        }
    return out


# --------------------------------------------------------------------------------------------------
# driver


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "threads_per_case": 1}


def one_case(args) -> None:
    import torch

    torch.set_num_threads(1)
    if args.case.startswith(("nce_", "ce_", "pirl_N")):
        cases = {**NCE_CASES, **NCE_QUICK}
        result = run_nce_case(args.case, args.nce_steps, cases)
    else:
        result = run_mapper_case(args.case, args.photos, args.seconds)
    print(json.dumps(result))


def summarise(results: dict) -> dict:
    summary = {}
    for name, values in results.items():
        key = "images_per_s" if "images_per_s" in values[0] else "seconds_per_step"
        xs = [v[key] for v in values]
        summary[name] = {key: {"min": min(xs), "median": statistics.median(xs), "all": xs}}
    return summary


def ratios(results: dict, methods, nce_cases) -> dict:
    out = {}
    rounds = len(next(iter(results.values())))
    for m in methods:
        for variant in ("fast", "draft", "device", "devicedraft"):
            name = f"{m}_{variant}"
            if name in results and f"{m}_plain" in results:
                per_round = [results[name][r]["images_per_s"] / results[f"{m}_plain"][r]["images_per_s"]
                             for r in range(rounds)]
                out[f"{name} / {m}_plain (images/s)"] = {
                    "median": statistics.median(per_round), "all": per_round
                }
    for c in nce_cases:
        if f"{c}:fast" in results and f"{c}:reference" in results:
            fast, ref = results[f"{c}:fast"], results[f"{c}:reference"]
            per_round = [fast[r]["seconds_per_step"] / ref[r]["seconds_per_step"] for r in range(rounds)]
            out[f"{c} fast / reference (time)"] = {"median": statistics.median(per_round), "all": per_round}
    return out


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Throughput on CPU (benchmarks/throughput.py)",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, shared with other engineers while this ran (load average "
        f"{report['load_average_start']} at start, {report['load_average_end']} at end); torch {m['torch']}, "
        f"one thread per case, each case in a fresh process, {report['rounds']} interleaved rounds.",
        "Absolute rates move with the load; ratios compare cases of the same round.",
        "",
        "## Ratios (median over rounds of the per-round ratio; targets: mappers >= 3, NCE <= 0.5)",
        "",
        "| comparison | median | per round |",
        "|---|---|---|",
    ]
    for name, r in report["ratios"].items():
        lines.append(f"| {name} | {r['median']:.2f} | {', '.join(f'{x:.2f}' for x in r['all'])} |")
    lines += ["", "## Mappers: images/s on one core (decode included)", "",
              "| case | min | median | loader workers per GPU (median) |", "|---|---|---|---|"]
    for name, s in report["summary"].items():
        if "images_per_s" in s:
            v = s["images_per_s"]
            workers = report["workers_per_gpu"].get(name, "")
            workers = f"{workers:.1f}" if workers != "" else ""
            lines.append(f"| {name} | {v['min']:.1f} | {v['median']:.1f} | {workers} |")
    lines += ["", "## NCE step: seconds (forward, backward, bank update)", "", "| case | min | median |",
              "|---|---|---|"]
    for name, s in report["summary"].items():
        if "seconds_per_step" in s:
            v = s["seconds_per_step"]
            lines.append(f"| {name} | {v['min']:.3f} | {v['median']:.3f} |")
    lines += ["", "## JPEG draft decode: effect on a view's pixels", "",
              "| setting | mean abs difference (levels of 255) | decoded size of a 500x375 photo |",
              "|---|---|---|"]
    for name, v in report["draft_pixels"].items():
        lines.append(f"| {name} | {v['mean_abs_diff_levels']:.2f} | {v['decoded_size']} |")
    lines += ["", f"Loader workers per GPU: assumed GPU rate {GPU_R50_IMAGES_PER_S:.0f} images/s of 224 px "
              "for an R50 (A100/H100, batch 256, AMP; an assumption, not measured), divided by each method's "
              "pixels per "
              "source image, over the measured images/s per core.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round, short timings, small NCE")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="timing window of a mapper case")
    parser.add_argument("--nce-steps", type=int, default=1, help="timed NCE steps after one warm-up")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "throughput_cpu"))
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--photos", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        one_case(args)
        return
    if args.quick:
        args.rounds, args.seconds = 1, 0.3
    nce_cases = NCE_QUICK if args.quick else NCE_CASES
    mapper_cases = ["decode"] + [f"{m}_{v}" for m in METHODS for v in ("plain", "fast")]
    mapper_cases += [f"{m}_draft" for m in DRAFT_SIDE]
    mapper_cases += [f"{m}_device" for m in DEVICE_METHODS]
    mapper_cases += [f"{m}_devicedraft" for m in DEVICE_METHODS if m in DRAFT_SIDE]
    cases = mapper_cases + [f"{c}:{impl}" for c in nce_cases for impl in ("reference", "fast")]
    results: dict[str, list] = {c: [] for c in cases}
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        write_photos(folder)
        draft = draft_pixel_effect(folder)
        for r in range(args.rounds):
            for case in cases:
                cmd = [sys.executable, __file__, "--case", case, "--photos", folder,
                       "--seconds", str(args.seconds), "--nce-steps", str(args.nce_steps)]
                env = {**os.environ, "OMP_NUM_THREADS": "1"}
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if proc.returncode != 0:
                    raise RuntimeError(f"case {case} failed:\n{proc.stderr[-3000:]}")
                results[case].append(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(f"round {r + 1}/{args.rounds} {case}: {results[case][-1]}", flush=True)
            # Written after every round, so an interrupted run keeps the rounds it finished.
            text = write_report(args, results, load_start, draft, nce_cases, r + 1)
    print(text)


def write_report(args, results: dict, load_start, draft: dict, nce_cases: dict, rounds: int) -> str:
    summary = summarise(results)
    workers = {}
    for m in METHODS:
        for v in ("plain", "fast", "draft", "device", "devicedraft"):
            name = f"{m}_{v}"
            if name in summary:
                gpu_rate = GPU_R50_IMAGES_PER_S / VIEW_COST[m]
                workers[name] = gpu_rate / summary[name]["images_per_s"]["median"]
    report = {
        "machine": machine(),
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "rounds": rounds,
        "quick": args.quick,
        "seconds_per_mapper_case": args.seconds,
        "summary": summary,
        "ratios": ratios(results, METHODS, nce_cases),
        "workers_per_gpu": workers,
        "assumed_gpu_r50_images_per_s": GPU_R50_IMAGES_PER_S,
        "draft_pixels": draft,
        "raw": results,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(report, f, indent=1)
    text = markdown(report)
    with open(args.out + ".md", "w") as f:
        f.write(text)
    return text

if __name__ == "__main__":
    main()
