"""Embedder throughput with and without the preprocessing prefetch thread (issue 16).

``ScaleMAEEmbedder.embed`` on raw uint16 chips, several batches per call, so that with
``overlap`` the preprocessing of batch ``k + 1`` (uint8 conversion, PIL resize) runs on a
prefetch thread during the forward of batch ``k``. Both modes are run alternately,
``--repeats`` times each, and the median images/s is printed per mode and chip size:

* ``--chip 224``: no resize (point chips at model size: preprocessing is cheap);
* ``--chip 448``: a 2x downsizing resize per chip (polygons, larger buffers).

One ``name: value`` line per figure. Run: ``PYTHONPATH=$PWD .venv/bin/python
benchmarks/embed_overlap.py [--model test-small] [--chips 224 448] [--device cpu]``.
Against another checkout (e.g. the code before the prefetch thread) point PYTHONPATH at
it: its embedder has no ``overlap`` and is timed as "sequential".
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch

from rsembed_dask.embed.model import ScaleMAEEmbedder
from rsembed_dask.specs import ModelSpec, OutputSpec

SIZE = 224


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(emb: ScaleMAEEmbedder, chips: list[np.ndarray]) -> float:
    """Images/s of one ``embed`` call over ``chips``."""
    t0 = time.perf_counter()
    emb.embed(chips, 10.0, output=OutputSpec.pooled(), check=False)
    _sync(emb.device)
    return len(chips) / (time.perf_counter() - t0)


def main(argv=None) -> int:
    """Run the benchmark and print the figures."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="test-small")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=4, help="batches per embed call")
    p.add_argument("--chips", type=int, nargs="+", default=[224, 448], help="raw chip sides")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dtype", default="float32")
    args = p.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)

    emb = ScaleMAEEmbedder(ModelSpec(args.model, image_size=SIZE, batch_size=args.batch, device=args.device,
                                     dtype=args.dtype))
    modes = {"sequential": False, "overlap": True} if hasattr(emb, "overlap") else {"sequential": False}
    print(f"device: {emb.device}, torch threads: {torch.get_num_threads()}, model {args.model}, "
          f"batch {args.batch} x {args.batches} per call, dtype {args.dtype}")
    rng = np.random.default_rng(0)
    for side in args.chips:
        chips = list(rng.integers(0, 10000, size=(args.batch * args.batches, 3, side, side), dtype=np.uint16))
        got: dict[str, list[float]] = {m: [] for m in modes}
        for m, on in modes.items():  # warm-up, each mode once
            emb.overlap = on
            rate(emb, chips)
        for _ in range(args.repeats):
            for m, on in modes.items():
                emb.overlap = on
                got[m].append(rate(emb, chips))
        for m, rates in got.items():
            print(f"{m} images/s (chip {side}): {statistics.median(rates):.2f} "
                  f"(min {min(rates):.2f}, max {max(rates):.2f})")
        if len(modes) == 2:
            print(f"overlap / sequential (chip {side}): "
                  f"{statistics.median(got['overlap']) / statistics.median(got['sequential']):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
