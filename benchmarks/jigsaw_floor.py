#!/usr/bin/env python
"""How fast can a Jigsaw mapper be? The plain recipe against decode + the one resample every view needs.

Every Jigsaw view is the decoded photo resampled once (the 255 px crop of the image resized to 256 on
its shorter side: a ~373 px square of a 500x375 photo). This times, in one process and one thread,
interleaved over rounds on the photos of ``benchmarks/throughput.py``: the plain reference recipe,
d2ssl's JigsawMapper, and that floor (``read_rgb_image`` + one PIL bilinear resample of the crop
region). ``plain / floor`` bounds the speed-up any mapper decoding the full JPEG can reach.

    python benchmarks/jigsaw_floor.py [--rounds 7] [--out benchmarks/results/jigsaw_floor_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import throughput  # noqa: E402  (the photos and the plain / fast pipelines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--images", type=int, default=60, help="images timed per case and round")
    parser.add_argument("--out")
    args = parser.parse_args()

    import torch
    from PIL import Image

    from d2ssl.data.image_io import read_rgb_image

    torch.set_num_threads(1)

    def floor(path: str) -> None:
        image = read_rgb_image({"file_name": path})
        side = min(image.size) * 255 / 256
        image.resize((255, 255), Image.BILINEAR, box=(0, 0, side, side))

    with tempfile.TemporaryDirectory() as folder:
        paths = throughput.write_photos(folder)
        cases = {"plain": throughput.plain_pipeline("jigsaw"), "d2ssl": throughput.fast_pipeline("jigsaw"),
                 "decode_and_resample": floor}

        def ms(fn) -> float:
            start = time.perf_counter()
            for i in range(args.images):
                fn(paths[i % len(paths)])
            return (time.perf_counter() - start) / args.images * 1e3

        for fn in cases.values():  # warm-up
            ms(fn)
        rounds = [{name: ms(fn) for name, fn in cases.items()} for _ in range(args.rounds)]
    report = {
        "what": __doc__.split("\n")[0], "machine": throughput.machine(), "rounds": rounds,
        "median_ms": {name: statistics.median(r[name] for r in rounds) for name in cases},
        "plain_over_floor": statistics.median(r["plain"] / r["decode_and_resample"] for r in rounds),
        "plain_over_d2ssl": statistics.median(r["plain"] / r["d2ssl"] for r in rounds),
    }
    print(json.dumps({k: report[k] for k in ("median_ms", "plain_over_floor", "plain_over_d2ssl")}, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
