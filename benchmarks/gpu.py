"""GPU throughput: the bare ViT-L/16 forward against a whole campaign, on one CUDA GPU.

Model: a ViT-L/16 in the published ScaleMAE checkpoints' architecture (embed_dim 1024,
depth 24, 16 heads, patch 16, image 224) with random weights, written once as a local
``save_pretrained`` directory (these machines cannot download the real weights; the
compute is the same). Run as the GPU path is meant to: ``dtype="auto"`` (bfloat16 autocast
on CUDA; the package's default stays float32, see ``ModelSpec``), ``batch_size=None``
(fitted to the free memory), fused attention, and the embedder's prefetch thread
(preprocessing of batch k+1 during the forward of batch k, on by default on CUDA).

Figures (one ``name: value`` line each):

* ``auto batch size``: what ``batch_size=None`` picked, with the per-image activation
  estimate, and per bare batch size the measured peak activation memory per image.
* ``bare images/s``: ``ScaleMAEEmbedder.embed_tensor`` on preprocessed batches already on
  the GPU, the best of a few batch sizes (each also printed; the auto size among them).
* ``embed images/s (overlap on|off)``: ``ScaleMAEEmbedder.embed`` on raw uint16 chips
  (preprocessing included), several batches per call, with and without the prefetch thread.
* ``campaign embeddings/s``: ``run_campaign`` through the whole pipeline (local cluster of
  worker processes: one GPU worker holding the actor, ``--fetch-workers`` fetch workers)
  with the in-memory provider of ``overhead.py`` (no network), from the cube's
  ``last_run`` (model loading excluded); one line per ``--campaigns`` layout
  (chunk:batch, batch ``auto`` for the default), the headline is the best.
* ``ratio``: campaign / bare (both best).
* ``peak GPU memory GiB``: ``torch.cuda.max_memory_allocated`` of this process (bare and
  embed runs, from the largest bare batch on) and of the campaign's GPU worker (the larger;
  both printed).
* ``compile``: with ``--compile``, the bare rate at the auto batch with ``compile=True``
  and the compilation time.

Without CUDA it prints why and exits 0. ``--cpu-smoke`` runs every code path on the CPU,
to know the script works where no GPU is: it writes the ViT-L directory and runs one
image through it, then does the bare and campaign measurements with ``test-tiny`` and
small sizes.

Run: ``PYTHONPATH=$PWD .venv/bin/python benchmarks/gpu.py [--samples 20000]
[--campaigns 64:auto 256:auto 512:128] [--compile] [--cpu-smoke]``.
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


def _bare_rate(emb: ScaleMAEEmbedder, b: int, seconds: float, rng) -> tuple[float, float]:
    """(images/s, peak activation bytes per image) of the bare forward at batch ``b``."""
    dev, size = emb.device, emb.spec.image_size
    raw = rng.integers(200, 4000, (b, 3, size, size), dtype=np.uint16)
    x = preprocess(raw, size, device=dev)
    res = torch.full((b,), SCALE)
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    before = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else 0
    for _ in range(2):  # warm-up: kernels chosen (compiled), memory pools filled
        emb.embed_tensor(x, res)
    _sync(dev)
    per_image = (torch.cuda.max_memory_allocated(dev) - before) / b if dev.type == "cuda" else 0.0
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < seconds:
        emb.embed_tensor(x, res)
        n += 1
        if n % 4 == 0:
            _sync(dev)
    _sync(dev)
    return n * b / (time.perf_counter() - t0), per_image


def bare_rates(emb: ScaleMAEEmbedder, batches: list[int], seconds: float) -> dict[int, float]:
    """Images/s of the bare forward (preprocessed input on the device) per batch size."""
    rng = np.random.default_rng(0)
    rates = {}
    for b in batches:
        rates[b], per_image = _bare_rate(emb, b, seconds, rng)
        mem = f", peak activations {per_image / 2**20:.1f} MiB per image" if emb.device.type == "cuda" else ""
        print(f"bare images/s (batch {b}{', auto' if b == emb.batch_size else ''}): {rates[b]:.1f}{mem}")
    return rates


def embed_rates(emb: ScaleMAEEmbedder, n_batches: int, side: int) -> dict[bool, float]:
    """Images/s of ``embed`` on raw chips of ``side`` px, ``n_batches`` batches per call, overlap on and off."""
    rng = np.random.default_rng(1)
    chips = list(rng.integers(200, 4000, (emb.batch_size * n_batches, 3, side, side), dtype=np.uint16))
    rates: dict[bool, list[float]] = {True: [], False: []}
    saved = emb.overlap
    for rep in range(4):  # the first round warms up; then alternate
        for on in (False, True):
            emb.overlap = on
            t0 = time.perf_counter()
            emb.embed(chips, SCALE, check=False)
            _sync(emb.device)
            if rep:
                rates[on].append(len(chips) / (time.perf_counter() - t0))
    emb.overlap = saved
    out = {on: float(np.median(r)) for on, r in rates.items()}
    for on in (True, False):
        print(f"embed images/s (raw {side} px chips, batch {emb.batch_size} x {n_batches}, "
              f"overlap {'on' if on else 'off'}): {out[on]:.1f}")
    print(f"embed overlap speed-up (raw {side} px): {out[True] / out[False]:.3f}")
    return out


def compile_rate(spec: ModelSpec, batch: int, seconds: float) -> None:
    """Bare images/s with ``compile=True`` at ``batch``, and the compilation time."""
    t0 = time.perf_counter()
    emb = ScaleMAEEmbedder(spec.replace(compile=True, batch_size=batch))
    rng = np.random.default_rng(0)
    x = preprocess(rng.integers(200, 4000, (batch, 3, IMAGE, IMAGE), dtype=np.uint16), IMAGE, device=emb.device)
    emb.embed_tensor(x, torch.full((batch,), SCALE))
    _sync(emb.device)
    print(f"compile time s (batch {batch}): {time.perf_counter() - t0:.1f}")
    rate, _ = _bare_rate(emb, batch, seconds, rng)
    print(f"bare images/s with compile (batch {batch}): {rate:.1f}")


def _gpu_peak_gib() -> float:
    """In a worker (``client.run``): this process's peak CUDA memory allocated, GiB (0 without CUDA)."""
    import torch as _torch

    return _torch.cuda.max_memory_allocated() / 2**30 if _torch.cuda.is_available() else 0.0


def campaign_rate(client, spec: ModelSpec, n: int, out: str, chunk: int, batch: int | None) -> dict:
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


def _layout(text: str) -> tuple[int, int | None]:
    chunk, batch = text.split(":")
    return int(chunk), None if batch == "auto" else int(batch)


def main(argv=None) -> int:
    """Run the benchmark and print the figures; 0 (with a message) where there is no CUDA."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-smoke", action="store_true",
                   help="run every code path on the CPU with test-tiny and small sizes")
    p.add_argument("--samples", type=int, default=None, help="samples per campaign (default 20000; smoke 256)")
    p.add_argument("--batches", type=int, nargs="+", default=None,
                   help="batch sizes of the bare run, besides the auto one (default 32 64 128; smoke 8)")
    p.add_argument("--campaigns", nargs="+", default=None, metavar="CHUNK:BATCH",
                   help="campaign layouts, samples per unit : images per forward or 'auto' "
                        "(default 64:auto (the package's defaults) 256:auto 512:128; smoke 64:auto 128:16)")
    p.add_argument("--fetch-workers", type=int, default=1, help="fetch worker processes (default 1)")
    p.add_argument("--seconds", type=float, default=None, help="timed seconds per bare batch size")
    p.add_argument("--embed-batches", type=int, default=4, help="batches per embed call of the overlap figure")
    p.add_argument("--compile", action="store_true", help="also time the bare forward with compile=True")
    args = p.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)

    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        print("CUDA is not available: nothing measured (run on a GPU node, or --cpu-smoke to check the "
              "code paths on the CPU)")
        return 0
    samples = args.samples or (256 if smoke else 20_000)
    layouts = [_layout(s) for s in (args.campaigns or (
        ["64:auto", "128:16"] if smoke else ["64:auto", "256:auto", "512:128"]))]
    seconds = args.seconds or (0.3 if smoke else 3.0)
    overhead.importable()  # before any worker starts: workers import the provider by name

    with tempfile.TemporaryDirectory() as tmp:
        if smoke:
            check_vit_large(vit_large_dir(os.path.join(tmp, "vit-large")))  # the GPU run's model, on the CPU
            spec = ModelSpec("test-tiny", image_size=IMAGE, device="cpu", dtype="auto")
            print("device: cpu (--cpu-smoke, test-tiny)")
        else:
            spec = ModelSpec(vit_large_dir(os.path.join(tmp, "vit-large")), image_size=IMAGE, device="cuda",
                             dtype="auto")
            print(f"device: {torch.cuda.get_device_name(0)}")
        emb = ScaleMAEEmbedder(spec)
        print(f"precision: {emb.precision}; fused attention layers: {emb.fused_attention_layers}; "
              f"overlap: {emb.overlap}")
        print(f"auto batch size: {emb.batch_size} (estimate {emb.activation_bytes_per_image() / 2**20:.1f} MiB "
              f"of activations per image)")
        batches = sorted(set(args.batches or ([8] if smoke else [32, 64, 128])) | {emb.batch_size})
        rates = bare_rates(emb, batches, seconds)
        best_b = max(rates, key=rates.get)
        print(f"bare images/s: {rates[best_b]:.1f} (batch {best_b})")
        embed_rates(emb, args.embed_batches, IMAGE)
        embed_rates(emb, args.embed_batches, 2 * IMAGE)
        bare_peak = 0.0
        if not smoke:
            bare_peak = torch.cuda.max_memory_allocated() / 2**30
        auto_batch = emb.batch_size
        del emb
        if not smoke:
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
                print(f"campaign embeddings/s (chunk {chunk}, batch {batch or 'auto'}): {rate:.1f} "
                      f"(run phase {lr['elapsed_s']:.1f} s, model load {lr['startup_s']:.1f} s)")
            worker_peak = client.run(_gpu_peak_gib, workers=[addr])[addr]
        cluster.close()
        print(f"campaign embeddings/s: {best:.1f}")
        print(f"ratio: {best / rates[best_b]:.3f}")
        if smoke:
            print("peak GPU memory GiB: n/a (CPU)")
        else:
            print(f"peak GPU memory GiB (bare batch {max(batches)} and embed runs): {bare_peak:.2f}")
            print(f"peak GPU memory GiB (campaign worker): {worker_peak:.2f}")
            print(f"peak GPU memory GiB: {max(bare_peak, worker_peak):.2f}")
        if args.compile:  # last: the figures above are out even if compiling runs long
            compile_rate(spec, auto_batch, seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
