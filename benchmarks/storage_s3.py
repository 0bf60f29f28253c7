"""What a resume of a finished cube costs in a bucket: HTTP requests per unit, and seconds.

A loopback S3 server (moto's, from the ``dev`` extra; the one the tests use, counting every
request it receives), a cube of ``--samples`` random points at three scales planned into it
(``plan_campaign``) and marked finished (every status cell ``ok``: the resume reads only
what a finished cube's resume reads), then ``run_campaign`` on it again. Figures:

- ``resume requests per unit``: requests the server received during the resume, over the
  units (sample chunks x scales); goal <= 1.2. Also split by kind (status chunks, metadata,
  listings, coordinates).
- ``resume seconds``: wall time of that resume (loopback: no network latency).

Run: ``.venv/bin/python benchmarks/storage_s3.py [--samples 20000] [--chunk 64]`` (a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _points(n: int, seed: int = 0):
    import geopandas as gpd

    rng = np.random.default_rng(seed)
    return gpd.GeoDataFrame({"v": np.arange(n)}, index=[f"p{i}" for i in range(n)],
                            geometry=gpd.points_from_xy(rng.uniform(3.0, 4.0, n), rng.uniform(31.0, 32.0, n)),
                            crs="EPSG:4326")


def _kind(path: str) -> str:
    if "list-type" in path:
        return "listing"
    if "/status/c/" in path:
        return "status chunk"
    if path.split("?")[0].endswith("zarr.json"):
        return "metadata"
    return "coordinate chunk" if "/c/" in path else "other"


def main() -> None:
    import zarr

    from rsembed_dask.campaign.run import plan_campaign, run_campaign
    from rsembed_dask.specs import ModelSpec, TemporalSpec
    from rsembed_dask.store.layout import OK
    from rsembed_dask.store.location import StoreLocation
    from tests.conftest import S3Server

    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=20_000)
    ap.add_argument("--chunk", type=int, default=64)
    args = ap.parse_args()
    server = S3Server()
    os.environ.update(server.env)
    try:
        url = server.create_bucket("bench") + "/cube.zarr"
        kw = dict(scales=[10, 20, 40], temporal=TemporalSpec.range("2022-01-01", "2022-02-01"),
                  model=ModelSpec("test-tiny", device="cpu"), chunk_size=args.chunk)
        gdf = _points(args.samples)
        _, _, cube, units = plan_campaign(gdf, url, **kw)
        zarr.open_array(StoreLocation.parse(url).child("status").zarr_store(), mode="r+")[...] = OK
        n0 = len(server.requests)
        t0 = time.perf_counter()
        run_campaign(gdf, url, backend="emulator", progress=False, **kw)
        seconds = time.perf_counter() - t0
        seen = server.requests[n0:]
    finally:
        server.stop()
    kinds = collections.Counter(_kind(p) for _, p in seen)
    print(f"samples: {args.samples}, scales 3, chunk {args.chunk}, units: {len(units)}")
    print(f"resume requests: {len(seen)} ({', '.join(f'{k} {v}' for k, v in kinds.most_common())})")
    print(f"resume requests per unit: {len(seen) / len(units):.3f}")
    print(f"resume seconds: {seconds:.2f}")


if __name__ == "__main__":
    main()
