"""Quota benchmark: does a one-GPU, fetch-bound tiling campaign use the Earth Engine bound?

A tiling campaign (test-tiny at 32 px, blocks of 2 x 2 tiles: one coalesced request per
work unit) on a local cluster of real processes: one embed worker (``GPU=1``, on CPU
here) and one fetch worker with twice as many threads as the bound (units fetching beyond
the bound wait there for a lease). The Earth Engine emulator
runs in this process and answers each request after ``--latency-s`` (default 1 s); the
cluster-wide bound is ``--bound`` (default 16) requests in flight.

Figures (one ``name: value`` line each):

- ``quota utilisation``: mean requests in flight (the emulator's own count, from its first
  request's arrival to its last answer) over the bound; the goal is >= 0.8 (before the
  elastic window, units in flight were 4 per actor: about 0.23);
- ``requests``, ``fetch span s`` (the emulator's first arrival to last answer),
  ``planner fetch-bound estimate s`` (:func:`rsembed_dask.plan.estimate_campaign` for the
  same tiling, latency and bound) and ``estimate / measured``;
- ``peak in flight`` (never above the bound) and ``wall s`` of the run.

Run: ``.venv/bin/python benchmarks/quota.py [--latency-s 1] [--bound 16] [--units 160]``.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency-s", type=float, default=1.0)
    ap.add_argument("--bound", type=int, default=16)
    ap.add_argument("--units", type=int, default=160, help="work units (one request each), about")
    ap.add_argument("--trace", action="store_true", help="print the mean in flight of each second")
    ap.add_argument("--max-in-flight", type=int, default=None,
                    help="cap the window (e.g. 4 to see the old fixed window)")
    args = ap.parse_args()

    from distributed import Client

    from rsembed_dask.campaign.run import run_campaign
    from rsembed_dask.cluster.local import local_cluster
    from rsembed_dask.emulator import GEEEmulator
    from rsembed_dask.plan.estimate import estimate_campaign
    from rsembed_dask.sampling.tiling import tile_aoi
    from rsembed_dask.specs import ModelSpec, TemporalSpec

    size, block, scale = 32, 2, 10.0
    # A strip of 2 x units blocks of 2 x 2 tiles of 320 m.
    tile_deg = size * scale / 111_000
    side = block * tile_deg
    n_blocks = args.units
    aoi = (10.0, 45.0, 10.0 + side * math.ceil(n_blocks / 2) * 0.999, 45.0 + 2 * side * 0.999)
    tiling = tile_aoi(aoi, [scale], image_size=size, block=block)
    model = ModelSpec("test-tiny", image_size=size, device="cpu")
    plan = estimate_campaign(tiling, image_size=size, chunk_size=block * block, model_id="test-tiny",
                             latency=args.latency_s, concurrency=args.bound, block=block)
    est = plan.fetch_time(True)
    with tempfile.TemporaryDirectory() as tmp, GEEEmulator(seed=0, latency_s=args.latency_s) as emu:
        cluster = local_cluster(n_gpus=0, n_fetch_workers=1, fetch_threads=2 * args.bound, processes=True,
                                dashboard_address=None)
        with cluster, Client(cluster) as client:
            t0 = time.perf_counter()
            run_campaign(tiling, Path(tmp) / "q.zarr", temporal=TemporalSpec.range("2022-01-01", "2022-02-01"),
                         model=model, backend="gee", client=client, progress=False,
                         gee_options={"api_url": emu.url, "credentials": "anonymous", "project": "quota"},
                         ee_concurrency=args.bound, max_in_flight=args.max_in_flight)
            wall = time.perf_counter() - t0
        traffic = emu.traffic
        spans = list(traffic.spans)
        first, last = min(a for a, _ in spans), max(b for _, b in spans)
        mean = traffic.mean_in_flight(first, last)
        print(f"units: {sum(1 for _ in range(0, len(tiling.tables[0]), block * block))}")
        print(f"requests: {len(spans)}")
        print(f"quota utilisation: {mean / args.bound:.2f}")
        print(f"mean in flight: {mean:.2f}")
        print(f"peak in flight: {traffic.peak_in_flight}")
        print(f"fetch span s: {last - first:.1f}")
        print(f"planner fetch-bound estimate s: {est.seconds:.1f} ({est.requests} requests, bound {est.bound})")
        print(f"estimate / measured: {est.seconds / (last - first):.2f}")
        print(f"wall s: {wall:.1f}")
        if args.trace:
            print("in flight by second:", " ".join(f"{traffic.mean_in_flight(t, t + 1):.0f}"
                                                   for t in range(int(first), int(last) + 1)))


if __name__ == "__main__":
    main()
