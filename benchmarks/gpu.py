"""GPU throughput: the bare ViT-L/16 forward against a whole campaign, on one CUDA GPU.

Model: a ViT-L/16 in the published ScaleMAE checkpoints' architecture (embed_dim 1024,
depth 24, 16 heads, patch 16, image 224) with random weights, written once as a local
``save_pretrained`` directory (these machines cannot download the real weights; the
compute is the same). bfloat16 autocast.

Figures (one ``name: value`` line each):

* ``bare images/s``: ``ScaleMAEEmbedder.embed_tensor`` on preprocessed batches already on
  the GPU, the best of a few batch sizes (each also printed).
* ``campaign embeddings/s``: ``run_campaign`` through the whole pipeline (local cluster of
  worker processes: one GPU worker holding the actor, ``--fetch-workers`` fetch workers)
  with the in-memory provider of ``overhead.py`` (no network), from the cube's
  ``last_run`` (model loading excluded); one line per ``--campaigns`` layout (chunk:batch),
  the headline is the best.
* ``ratio``: campaign / bare (both best).
* ``peak GPU memory GiB``: ``torch.cuda.max_memory_allocated`` of the bare run and of the
  campaign's GPU worker (the larger; both printed).

Without CUDA it prints why and exits 0. ``--cpu-smoke`` runs every code path on the CPU,
to know the script works where no GPU is: it writes the ViT-L directory and runs one
image through it, then does the bare and campaign measurements with ``test-tiny`` and
small sizes.

Run: ``PYTHONPATH=$PWD .venv/bin/python benchmarks/gpu.py [--samples 20000]
[--campaigns 64:32 256:128] [--cpu-smoke]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch
from distributed import Client

import overhead  # the sibling benchmark (run this file as a script): its provider and points

from rsembed_dask.campaign import run_campaign
from rsembed_dask.cluster import embed_workers, local_cluster
from rsembed_dask.embed import ScaleMAEEmbedder
from rsembed_dask.embed.preprocess import preprocess
from rsembed_dask.embed.weights import import_rshf_scalemae
from rsembed_dask.specs import ModelSpec, TemporalSpec

SCALE = 10.0
IMAGE = 224
#: rshf's ScaleMAE config for the published ViT-L/16 checkpoints (architecture keys absent: ViT-L).
VIT_LARGE_CONFIG = {"feat_dim": 1024, "fc_dim": 1024, "global_pool": False, "cls_token_flag": True}


def vit_large_dir(path: str) -> str:
    """Write a random-weight ViT-L/16 ScaleMAE as a ``save_pretrained`` directory at ``path``."""
    ScaleMAE = import_rshf_scalemae()
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        wrapper = ScaleMAE(config=dict(VIT_LARGE_CONFIG)).eval()
    wrapper.save_pretrained(path)
    n = sum(p.numel() for p in wrapper.parameters())
    print(f"model: random-weight ViT-L/16 ({n / 1e6:.0f} M parameters) written in {time.perf_counter() - t0:.1f} s")
    return path


def check_vit_large(directory: str) -> None:
    """Load the ViT-L directory as the campaign will and run one image through it on the CPU."""
    t0 = time.perf_counter()
    emb = ScaleMAEEmbedder(ModelSpec(directory, image_size=IMAGE, device="cpu", dtype="bfloat16", batch_size=1))
    load_s = time.perf_counter() - t0
    x = preprocess(np.full((1, 3, IMAGE, IMAGE), 1500, np.uint16), IMAGE)
    t0 = time.perf_counter()
    tokens = emb.embed_tensor(x, torch.full((1,), SCALE))
    expected = (1, 1 + (IMAGE // 16) ** 2, 1024)
    if tuple(tokens.shape) != expected or emb.info.depth != 24:
        raise SystemExit(f"the ViT-L directory gives tokens {tuple(tokens.shape)} and depth {emb.info.depth}; "
                         f"expected {expected} and 24")
    print(f"vit-large check: tokens {tuple(tokens.shape)}, depth {emb.info.depth}, load {load_s:.1f} s, "
          f"one CPU forward {time.perf_counter() - t0:.1f} s")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_rates(spec: ModelSpec, batches: list[int], seconds: float) -> dict[int, float]:
    """Images/s of the bare forward (preprocessed input on the device) per batch size."""
    emb = ScaleMAEEmbedder(spec)
    dev = emb.device
    rng = np.random.default_rng(0)
    rates = {}
    for b in batches:
        raw = rng.integers(200, 4000, (b, 3, spec.image_size, spec.image_size), dtype=np.uint16)
        x = preprocess(raw, spec.image_size, device=dev)
        res = torch.full((b,), SCALE)
        for _ in range(2):  # warm-up: kernels chosen, memory pools filled
            emb.embed_tensor(x, res)
        _sync(dev)
        n, t0 = 0, time.perf_counter()
        while n < 3 or time.perf_counter() - t0 < seconds:
            emb.embed_tensor(x, res)
            n += 1
            if n % 4 == 0:
                _sync(dev)
        _sync(dev)
        rates[b] = n * b / (time.perf_counter() - t0)
        print(f"bare images/s (batch {b}): {rates[b]:.1f}")
    return rates


def _gpu_peak_gib() -> float:
    """In a worker (``client.run``): this process's peak CUDA memory allocated, GiB (0 without CUDA)."""
    import torch as _torch

    return _torch.cuda.max_memory_allocated() / 2**30 if _torch.cuda.is_available() else 0.0


def campaign_rate(client, spec: ModelSpec, n: int, out: str, chunk: int, batch: int) -> dict:
    """Run one campaign of ``n`` points; its ``last_run`` (``embeddings_per_s`` excludes model loading)."""
    ds = run_campaign(overhead.points(n, seed=n), out, scales=[SCALE],
                      temporal=TemporalSpec.range(overhead.START, overhead.END), model=spec,
                      backend=overhead.provider(), client=client, chunk_size=chunk, batch_size=batch,
                      progress=False)
    lr = ds.attrs["last_run"]
    lr = json.loads(lr) if isinstance(lr, str) else dict(lr)
    if lr["samples_embedded"] != n:
        raise SystemExit(f"campaign of {n} samples embedded {lr['samples_embedded']}: {lr}")
    return lr


def main(argv=None) -> int:
    """Run the benchmark and print the figures; 0 (with a message) where there is no CUDA."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-smoke", action="store_true",
                   help="run every code path on the CPU with test-tiny and small sizes")
    p.add_argument("--samples", type=int, default=None, help="samples per campaign (default 20000; smoke 256)")
    p.add_argument("--batches", type=int, nargs="+", default=None,
                   help="batch sizes of the bare run (default 32 64 128 256; smoke 8 16)")
    p.add_argument("--campaigns", nargs="+", default=None, metavar="CHUNK:BATCH",
                   help="campaign layouts, samples per unit : images per forward "
                        "(default 64:32 (the package's defaults) 256:128; smoke 64:32 128:64)")
    p.add_argument("--fetch-workers", type=int, default=1, help="fetch worker processes (default 1)")
    p.add_argument("--seconds", type=float, default=None, help="timed seconds per bare batch size")
    args = p.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)

    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        print("CUDA is not available: nothing measured (run on a GPU node, or --cpu-smoke to check the "
              "code paths on the CPU)")
        return 0
    samples = args.samples or (256 if smoke else 20_000)
    batches = args.batches or ([8, 16] if smoke else [32, 64, 128, 256])
    layouts = [tuple(int(v) for v in s.split(":")) for s in (args.campaigns or (
        ["64:32", "128:64"] if smoke else ["64:32", "256:128"]))]
    seconds = args.seconds or (0.3 if smoke else 3.0)
    overhead.importable()  # before any worker starts: workers import the provider by name

    with tempfile.TemporaryDirectory() as tmp:
        if smoke:
            check_vit_large(vit_large_dir(os.path.join(tmp, "vit-large")))  # the GPU run's model, on the CPU
            spec = ModelSpec("test-tiny", image_size=IMAGE, device="cpu", dtype="bfloat16")
            print("device: cpu (--cpu-smoke, test-tiny)")
        else:
            spec = ModelSpec(vit_large_dir(os.path.join(tmp, "vit-large")), image_size=IMAGE, device="cuda",
                             dtype="bfloat16")
            print(f"device: {torch.cuda.get_device_name(0)}")
        rates = bare_rates(spec.replace(batch_size=max(batches)), batches, seconds)
        best_b = max(rates, key=rates.get)
        print(f"bare images/s: {rates[best_b]:.1f} (batch {best_b})")
        bare_peak = 0.0
        if not smoke:
            bare_peak = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.empty_cache()  # the campaign's worker is another process on the same GPU

        cluster = local_cluster(n_gpus=0 if smoke else 1, n_fetch_workers=args.fetch_workers,
                                processes=True, dashboard_address=None)
        with Client(cluster) as client:
            addr = embed_workers(client)[0]
            campaign_rate(client, spec, layouts[0][0] * 2, os.path.join(tmp, "warmup.zarr"), *layouts[0])
            best = 0.0
            for chunk, batch in layouts:
                lr = campaign_rate(client, spec, samples, os.path.join(tmp, f"c{chunk}-{batch}.zarr"), chunk, batch)
                rate = lr["embeddings_per_s"]
                best = max(best, rate)
                print(f"campaign embeddings/s (chunk {chunk}, batch {batch}): {rate:.1f} "
                      f"(run phase {lr['elapsed_s']:.1f} s, model load {lr['startup_s']:.1f} s)")
            worker_peak = client.run(_gpu_peak_gib, workers=[addr])[addr]
        cluster.close()
    print(f"campaign embeddings/s: {best:.1f}")
    print(f"ratio: {best / rates[best_b]:.3f}")
    if smoke:
        print("peak GPU memory GiB: n/a (CPU)")
    else:
        print(f"peak GPU memory GiB (bare, batch up to {max(batches)}): {bare_peak:.2f}")
        print(f"peak GPU memory GiB (campaign worker): {worker_peak:.2f}")
        print(f"peak GPU memory GiB: {max(bare_peak, worker_peak):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
