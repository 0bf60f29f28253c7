"""Campaign throughput vs the bare model, and client memory vs campaign size.

Figures (one ``name: value`` line each):

1. ``bare embeddings/s``: ``ScaleMAEEmbedder(test-small, cpu, batch 32).embed`` on raw
   uint16 (3, 224, 224) chips fetched once from the emulator (fetching not timed).
2. ``campaign embeddings/s``: ``run_campaign`` over random points, backed by a
   :class:`GEEProvider` talking to a :class:`GEEEmulator` (150 ms per request) served
   from this process, on the default local cluster (one CPU embed worker with 2 threads
   plus one fetch worker). Taken from the cube's ``last_run`` attribute (samples over
   the run phase: actor start-up and units, not cluster start-up); the figure
   including cluster start-up is the samples over the whole ``run_campaign`` call.
   ``ratio`` = campaign / bare (target >= 0.8).
3. ``client peak MiB at N``: peak RSS of the client process only for a test-tiny
   campaign (latency 0, scale 10, chunk 64; the emulator in a process of its own, as
   Earth Engine is remote in production) in a fresh subprocess per N
   (``VmHWM``: ``ru_maxrss`` survives exec, so it would report this parent's peak);
   ``client memory growth`` = large / small (target <= 1.2).

Run: ``.venv/bin/python benchmarks/campaign.py [--samples 320] [--memory-large 4096]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

BATCH = 32
SCALE = 10.0
START, END = "2022-01-01", "2022-02-01"
LATENCY_S = 0.15


def _points(n: int, seed: int = 0):
    import geopandas as gpd

    rng = np.random.default_rng(seed)
    lon = rng.uniform(3.0, 3.5, n)
    lat = rng.uniform(31.0, 31.5, n)
    # String ids: an integer index currently fails in cube_schema._ids_array (the
    # sample table holds the ints in an object array, which is only accepted as str).
    return gpd.GeoDataFrame({"v": np.arange(n)}, index=[f"p{i}" for i in range(n)],
                            geometry=gpd.points_from_xy(lon, lat), crs="EPSG:4326")


def _last_run(ds) -> dict:
    lr = ds.attrs["last_run"]
    return json.loads(lr) if isinstance(lr, str) else dict(lr)


def _fetch_chips(provider, n: int, tmp: str) -> list[np.ndarray]:
    """Fetch ``n`` chips exactly as the campaign would (same footprints, sensor, window)."""
    from rsembed_dask.campaign.run import plan_campaign
    from rsembed_dask.specs import ModelSpec, TemporalSpec
    from rsembed_dask.campaign.tasks import fetch_unit

    spec, table, _cube, units = plan_campaign(
        _points(n, seed=1), os.path.join(tmp, "chips.zarr"), scales=[SCALE],
        temporal=TemporalSpec.range(START, END), model=ModelSpec("test-small"),
        chunk_size=n, batch_size=BATCH)
    chips: list[np.ndarray] = []
    for u in units:
        px = fetch_unit(provider, table.slice(u.start, u.stop), u, spec, 8)
        chips += [im for im in px.images if im is not None]
    return chips


def bare_rate(chips: list[np.ndarray], n_batches: int, threads: int | None = None) -> tuple[float, int]:
    """Embeddings per second of the bare embedder, one warm-up batch first.

    ``threads`` sets torch's intra-op threads for this measurement (restored after).
    """
    import torch

    from rsembed_dask.embed.model import ScaleMAEEmbedder
    from rsembed_dask.specs import ModelSpec

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        emb = ScaleMAEEmbedder(ModelSpec("test-small", device="cpu", batch_size=BATCH))
        batches = [chips[(i * BATCH) % len(chips):][:BATCH] for i in range(n_batches)]
        batches = [b if len(b) == BATCH else chips[:BATCH] for b in batches]
        emb.embed(batches[0], SCALE)
        t0 = time.perf_counter()
        for b in batches:
            emb.embed(b, SCALE)
        return n_batches * BATCH / (time.perf_counter() - t0), torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def campaign(provider, n: int, out: str, *, worker_omp_threads: int | None = None,
             **extra) -> dict:
    """Run the test-small campaign; returns its ``last_run`` plus wall and CPU seconds.

    ``worker_omp_threads`` overrides Dask's ``distributed.nanny.pre-spawn-environ``
    ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` (both 1 by default, so torch in the
    embed worker runs 1 intra-op thread where the bare run has one per core).
    """
    import dask

    from rsembed_dask.campaign.run import run_campaign
    from rsembed_dask.specs import ModelSpec, TemporalSpec

    opts = {"dashboard_address": None}
    opts.update(extra.pop("cluster_options", {}))
    cfg = {}
    if worker_omp_threads is not None:
        # Both: torch takes MKL_NUM_THREADS over OMP_NUM_THREADS, and Dask sets both to 1.
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            cfg[f"distributed.nanny.pre-spawn-environ.{var}"] = worker_omp_threads
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0, t0 = time.process_time(), time.perf_counter()
    with dask.config.set(cfg):
        ds = run_campaign(_points(n), out, scales=[SCALE], temporal=TemporalSpec.range(START, END),
                          model=ModelSpec("test-small"), backend=provider, chunk_size=BATCH,
                          batch_size=BATCH, progress=False, cluster_options=opts, **extra)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out_d = _last_run(ds)
    out_d.update(wall_s=wall, client_cpu_s=cpu,
                 workers_cpu_s=(kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime))
    return out_d


def _report_campaign(tag: str, lr: dict, bare: float) -> None:
    sfx = f" ({tag})" if tag else ""
    rate = lr["embeddings_per_s"]
    print(f"campaign samples embedded{sfx}: {lr['samples_embedded']}")
    print(f"campaign run phase s{sfx}: {lr['elapsed_s']:.2f}")
    print(f"campaign wall s (incl. startup){sfx}: {lr['wall_s']:.2f}")
    print(f"campaign client CPU s (incl. emulator){sfx}: {lr['client_cpu_s']:.2f}")
    print(f"campaign workers CPU s{sfx}: {lr['workers_cpu_s']:.2f}")
    print(f"campaign embeddings/s (incl. startup){sfx}: {lr['samples_embedded'] / lr['wall_s']:.2f}")
    print(f"campaign embeddings/s{sfx}: {rate:.2f}")
    print(f"ratio{sfx}: {rate / bare:.3f}")


def client_memory_child(n: int) -> None:
    """Run a test-tiny campaign of ``n`` samples and print this process's peak RSS (MiB).

    The emulator runs in its own process here (``rsembed-dask emulator``), as Earth Engine
    is remote in production: its per-request buffers and thread arenas are not the
    client's memory.
    """
    import socket
    import urllib.request

    from rsembed_dask.campaign.run import run_campaign
    from rsembed_dask.providers import GEEProvider
    from rsembed_dask.specs import ModelSpec, TemporalSpec

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    emu = subprocess.Popen([sys.executable, "-m", "rsembed_dask.cli", "emulator", "--port", str(port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{url}/$discovery/rest?version=v1alpha", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        gdf = _points(n)
        with tempfile.TemporaryDirectory() as tmp:
            provider = GEEProvider(api_url=url, credentials="anonymous", project="bench")
            t0 = time.perf_counter()
            ds = run_campaign(gdf, os.path.join(tmp, "mem.zarr"), scales=[SCALE],
                              temporal=TemporalSpec.range(START, END), model=ModelSpec("test-tiny"),
                              backend=provider, chunk_size=64, progress=False,
                              cluster_options={"dashboard_address": None})
            lr = _last_run(ds)
            wall = time.perf_counter() - t0
    finally:
        emu.terminate()
        emu.wait(10)
    maxrss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"n": n, "peak_mib": _vm_hwm_mib() or maxrss_mib, "maxrss_mib": maxrss_mib,
                      "wall_s": wall,
                      "samples_embedded": lr["samples_embedded"],
                      "embeddings_per_s": lr["embeddings_per_s"]}))


def _vm_hwm_mib() -> float | None:
    """This process's own peak RSS (``VmHWM``), or None off Linux.

    Preferred to ``ru_maxrss``, which Linux carries over ``fork`` + ``execve``: a child
    of a large parent reports the parent's peak (here, the parent has run torch and
    three campaigns). ``VmHWM`` belongs to the address space, which ``execve`` renews.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _client_memory(n: int) -> dict:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--client-memory", str(n)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=640, help="campaign points (test-small)")
    p.add_argument("--bare-batches", type=int, default=4, help="timed bare batches")
    p.add_argument("--memory-small", type=int, default=256)
    p.add_argument("--memory-large", type=int, default=4096)
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--diagnostics", action="store_true",
                   help="also: bare with 1 torch thread; campaign with a fetch worker of 8 "
                        "threads; campaign with OMP_NUM_THREADS=2 in the workers")
    p.add_argument("--client-memory", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.client_memory is not None:
        client_memory_child(args.client_memory)
        return

    from rsembed_dask.providers import GEEProvider
    from rsembed_dask.emulator import GEEEmulator

    t_all = time.perf_counter()
    # This machine may be shared: a busy neighbour shows up here and skews every figure.
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    with GEEEmulator(latency_s=LATENCY_S) as emu, tempfile.TemporaryDirectory() as tmp:
        provider = GEEProvider(api_url=emu.url, credentials="anonymous", project="bench")

        chips = _fetch_chips(provider, 2 * BATCH, tmp)
        print(f"chips fetched: {len(chips)} of shape {chips[0].shape} {chips[0].dtype}")
        bare, threads = bare_rate(chips, args.bare_batches)
        print(f"bare torch threads: {threads}")
        print(f"bare embeddings/s: {bare:.2f}")
        if args.diagnostics:
            bare1, _ = bare_rate(chips, max(2, args.bare_batches // 2), threads=1)
            print(f"bare embeddings/s (1 torch thread): {bare1:.2f}")

        emu.stats.reset()
        lr = campaign(provider, args.samples, os.path.join(tmp, "campaign.zarr"))
        stats = emu.stats.as_dict()
        print(f"emulator compute requests: {stats['compute_pixels']}, "
              f"concurrent peak: {stats['concurrent_peak']}")
        _report_campaign("", lr, bare)

        if args.diagnostics:
            lr2 = campaign(provider, args.samples, os.path.join(tmp, "campaign-f8.zarr"),
                           fetch_threads=8,
                           cluster_options={"n_fetch_workers": 1, "fetch_threads": 8})
            _report_campaign("fetch worker 8 threads", lr2, bare)
            lr3 = campaign(provider, args.samples, os.path.join(tmp, "campaign-omp2.zarr"),
                           worker_omp_threads=2)
            _report_campaign("worker OMP/MKL threads 2", lr3, bare)
        bare_after, _ = bare_rate(chips, args.bare_batches)
        print(f"bare embeddings/s (re-measured after campaigns): {bare_after:.2f}")
        print(f"ratio (vs bare re-measured): {lr['embeddings_per_s'] / bare_after:.3f}")

    if not args.skip_memory:
        small = _client_memory(args.memory_small)
        large = _client_memory(args.memory_large)
        for r in (small, large):
            print(f"client memory run {r['n']}: wall {r['wall_s']:.1f} s, "
                  f"{r['samples_embedded']} embedded, {r['embeddings_per_s']:.1f} embeddings/s")
        print(f"client ru_maxrss MiB at {small['n']} / {large['n']} (inherited over exec): "
              f"{small['maxrss_mib']:.1f} / {large['maxrss_mib']:.1f}")
        print(f"client peak MiB at {small['n']}: {small['peak_mib']:.1f}")
        print(f"client peak MiB at {large['n']}: {large['peak_mib']:.1f}")
        print(f"client memory growth: {large['peak_mib'] / small['peak_mib']:.3f}")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    print(f"benchmark wall s: {time.perf_counter() - t_all:.1f}")


if __name__ == "__main__":
    main()
