#!/usr/bin/env python
"""How fast can a Jigsaw mapper be? The plain recipe against decoding alone and decode + the one resize.

Every Jigsaw tile is resampled from the decoded photo (the image resized to 256 on its shorter side,
then a 255 crop cut into nine 64 px tiles). This times, in one process and one thread, interleaved
over rounds on the photos of ``benchmarks/throughput.py``: the plain reference recipe, d2ssl's
JigsawMapper (full and draft decode), decoding alone (``read_rgb_image``), and decoding + the resize
d2ssl does (``resize_uint8``: torch's antialiased bilinear on uint8), and decoding + that resize done
by PIL. ``plain / decode`` bounds the speed-up any mapper decoding the full JPEG can reach;
``plain / decode_and_resize`` the bound of one that also resizes as d2ssl does.

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
    from d2ssl.data.resize import pil_to_uint8_hwc, resize_uint8

    torch.set_num_threads(1)

    def decode(path: str) -> None:
        read_rgb_image({"file_name": path})

    def decode_and_resize(path: str) -> None:
        image = read_rgb_image({"file_name": path})
        resize_uint8(pil_to_uint8_hwc(image), (256, 256 * image.width // image.height))

    def decode_and_pil_resize(path: str) -> None:  # the same resize as PIL does it
        image = read_rgb_image({"file_name": path})
        image.resize((256 * image.width // image.height, 256), Image.BILINEAR)

    with tempfile.TemporaryDirectory() as folder:
        paths = throughput.write_photos(folder)
        cases = {
            "plain": throughput.plain_pipeline("jigsaw"),
            "d2ssl": throughput.fast_pipeline("jigsaw"),
            "d2ssl_draft": throughput.fast_pipeline("jigsaw", throughput.DRAFT_SIDE["jigsaw"]),
            "decode": decode,
            "decode_and_resize": decode_and_resize,
            "decode_and_pil_resize": decode_and_pil_resize,
        }

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
        **{f"plain_over_{name}": statistics.median(r["plain"] / r[name] for r in rounds)
           for name in cases if name != "plain"},
    }
    print(json.dumps({k: v for k, v in report.items() if k not in ("rounds", "machine")}, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
