"""Embedding throughput: bare forward vs the full raw-chip path, and float32 vs bfloat16.

Model ``test-small`` (ViT-S/16, deterministic random weights), batch 32, image 224, CPU
with torch's default thread count. Prints one ``name: value`` line per figure.

Run: ``.venv/bin/python benchmarks/embed_throughput.py [--batches N] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from rsembed_dask.embed.model import ScaleMAEEmbedder
from rsembed_dask.embed.preprocess import preprocess
from rsembed_dask.specs import ModelSpec, OutputSpec

BATCH = 32
SIZE = 224


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(fn, device: torch.device, n_batches: int) -> float:
    """Images per second of ``fn`` (one batch per call) after one warm-up call."""
    fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        fn()
    _sync(device)
    return n_batches * BATCH / (time.perf_counter() - t0)


def main(argv=None) -> None:
    """Run the benchmark and print the figures."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=3, help="timed batches per figure")
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="test-small")
    args = p.parse_args(argv)

    rng = np.random.default_rng(0)
    raw = rng.integers(0, 10000, size=(BATCH, 3, SIZE, SIZE), dtype=np.uint16)
    chips = list(raw)
    res = torch.full((BATCH,), 10.0)
    pooled = OutputSpec.pooled()

    fp32 = ScaleMAEEmbedder(ModelSpec(args.model, image_size=SIZE, batch_size=BATCH, device=args.device))
    dev = fp32.device
    print(f"device: {dev}")
    print(f"torch threads: {torch.get_num_threads()}")
    x = preprocess(raw, SIZE, device=dev)

    bare = _rate(lambda: fp32.embed_tensor(x, res), dev, args.batches)
    full = _rate(lambda: fp32.embed(chips, 10.0, output=pooled), dev, args.batches)
    print(f"bare images/s: {bare:.2f}")
    print(f"full images/s: {full:.2f}")
    print(f"ratio: {full / bare:.3f}")

    bf16 = ScaleMAEEmbedder(ModelSpec(args.model, image_size=SIZE, batch_size=BATCH, device=args.device,
                                      dtype="bfloat16"))
    r32 = _rate(lambda: fp32.embed(chips, 10.0, output=pooled), dev, args.batches)
    r16 = _rate(lambda: bf16.embed(chips, 10.0, output=pooled), dev, args.batches)
    print(f"fp32 images/s: {r32:.2f}")
    print(f"bf16 images/s: {r16:.2f}")
    print(f"bf16 speedup: {r16 / r32:.3f}")


if __name__ == "__main__":
    main()
