"""GeoParquet export of a 100k-sample cube: peak memory, file size, rows/s.

A synthetic cube (no model: random vectors written with ``Cube.create_or_open`` and
``write_unit``, ``--rows`` points over Europe, ``--dim`` features, one scale, chunks of 64
samples as a campaign writes them, ~5 % of cells no_data) is exported with
``export_geoparquet`` in a fresh process, which reports:

``rows``, ``row groups`` (rows each), ``file MiB``, ``export s``, ``rows/s``, ``RSS before
MiB`` (after imports), ``peak RSS MiB`` (VmHWM of the export process) and ``peak - before
MiB``: what the export itself held at most. Memory is bounded by one row group
(``--row-group-mb``, default 128 MiB uncompressed) plus one read block (8 MiB of
embeddings) and Zarr's decoding buffers, whatever the number of rows: compare ``--dim 64``
(the whole file is smaller than one row group) with ``--dim 1024`` (four row groups), and
``--rows 300000``. glibc's per-thread arenas (Zarr decodes chunks on a thread pool) keep
some freed memory: ``MALLOC_ARENA_MAX=2`` in the environment trims that.

Run: ``.venv/bin/python benchmarks/export.py [--rows 100000] [--dim 64] [--row-group-mb 128]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, sys, time
import geopandas, pyarrow.parquet, pyproj, shapely  # imported before the baseline: not the export's memory
from rsembed_dask.store.geoparquet import export_geoparquet
from rsembed_dask.geo.grid import lonlat_to_xy
lonlat_to_xy(10.0, 45.0, "EPSG:32632")  # PROJ's database opened

def status(key):
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) // 1024 for l in fh if l.startswith(key))

before = status("VmRSS:")
t0 = time.perf_counter()
report = export_geoparquet(sys.argv[1], sys.argv[2], row_group_bytes=int(float(sys.argv[3]) * 2**20))
print(json.dumps({"report": report.as_dict(), "seconds": time.perf_counter() - t0,
                  "rss_before_mib": before, "peak_rss_mib": status("VmHWM:")}))
"""


def make_cube(path: str, rows: int, dim: int, chunk: int = 64, seed: int = 0) -> float:
    """Write the synthetic cube; returns the seconds it took."""
    import geopandas as gpd
    import numpy as np

    from rsembed_dask.store.cube import NO_DATA, OK, Cube
    from rsembed_dask.sampling import build_sample_table
    from rsembed_dask.specs import CampaignSpec, ModelSpec, TemporalSpec

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    gdf = gpd.GeoDataFrame(index=[f"s{i:07d}" for i in range(rows)],
                           geometry=gpd.points_from_xy(rng.uniform(-9, 30, rows), rng.uniform(36, 70, rows)),
                           crs="EPSG:4326")
    table = build_sample_table(gdf)
    spec = CampaignSpec(temporal=TemporalSpec.year(2024), model=ModelSpec("test-tiny"), scales=(10.0,),
                        chunk_size=chunk)
    cube = Cube.create_or_open(path, spec=spec, ids=table.ids, lon=table.lon, lat=table.lat,
                               geohash=table.geohash, wkb=table.wkb, embed_dim=dim)
    for a in range(0, rows, chunk):
        b = min(a + chunk, rows)
        m = b - a
        st = np.where(rng.random(m) < 0.05, NO_DATA, OK).astype(np.int8)
        emb = rng.normal(size=(m, dim)).astype(np.float32)
        emb[st != OK] = np.nan
        cube.write_unit(a, b, 0, embedding=emb, status=st, input_res_m=np.full(m, 10.0),
                        valid_fraction=np.ones(m, np.float32), error=[""] * m)
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--row-group-mb", type=float, default=128.0)
    p.add_argument("--keep", default=None, help="directory to keep the cube and file in (default: a temporary one)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        where = args.keep or tmp
        cube, out = os.path.join(where, "bench.zarr"), os.path.join(where, "bench.parquet")
        made = make_cube(cube, args.rows, args.dim) if not os.path.exists(cube) else 0.0
        res = subprocess.run([sys.executable, "-c", CHILD, cube, out, str(args.row_group_mb)],
                             capture_output=True, text=True, check=True)
        fig = json.loads(res.stdout.strip().splitlines()[-1])
    r = fig["report"]
    print(f"cube: {args.rows} samples x D={args.dim}, chunks of 64 (written in {made:.1f}s)")
    print(f"rows: {r['rows']}")
    print(f"row groups: {r['row_groups']} (up to {r['rows_per_group']} rows each)")
    print(f"file MiB: {r['file_bytes'] / 2**20:.1f}")
    print(f"export s: {fig['seconds']:.2f}")
    print(f"rows/s: {r['rows'] / fig['seconds']:.0f}")
    print(f"RSS before MiB: {fig['rss_before_mib']}")
    print(f"peak RSS MiB: {fig['peak_rss_mib']}")
    print(f"peak - before MiB: {fig['peak_rss_mib'] - fig['rss_before_mib']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
