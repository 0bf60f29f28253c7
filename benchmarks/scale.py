"""A cube of a million samples: resume time and memory, objects per sample, export speed (issue 21).

A finished cube is built without the model: the samples (``--samples`` points, default
1,000,000, spread over Europe) go through ``build_sample_table`` as a campaign's would,
``Cube.create_or_open`` lays the cube out with the campaign's spec (``test-tiny``, D = 64,
one 10 m scale, the default unit of 512 samples) and every unit is written ``ok`` with
synthetic embeddings by ``Cube.write_unit``. Then, in a fresh process each:

* a plain resume: ``run_campaign`` on the same samples (read from a GeoParquet file first,
  not timed) with nothing left to do, as a rerun of a finished campaign is; its wall time,
  and the peak RSS of that process (VmHWM: imports and the samples included), also less the
  RSS once the samples were read (what the resume adds). Run twice: the first finds no
  digest of its input in the cube (built here, not by a campaign) and makes the full check
  (sample table, per-block digests: ``full check ...``), recording it as every campaign run
  does; the second is the rerun of a finished campaign (``resume ...``);
* ``export_geoparquet`` of a ``--export-samples`` cube (default 100,000) of ViT-L-wide
  vectors (D = 1,024), scaled to 100k embeddings.

Printed (``name: value``):

``files per 1,000 sample-scales``: every file of the 1M cube (data chunks, coordinates and
metadata) per 1,000 (sample, scale) cells; ``resume seconds (1M samples)``, ``resume peak MiB
(1M samples)``; ``export seconds per 100k embeddings``; and, for the guide's arithmetic,
``cube MiB (1M samples)``, ``build seconds (1M samples)``.

Run: ``PYTHONPATH=$PWD .venv/bin/python benchmarks/scale.py [--samples 1000000] [--export-samples 100000]
[--keep DIR]``. Takes a few minutes on 2 cores; needs ~0.5 GB of disk.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

SCALES = (10.0,)
MODEL = "test-tiny"
WINDOW = ("2022-06-01", "2022-09-01")

RESUME_CHILD = r"""
import json, sys, time
import geopandas as gpd
from rsembed_dask.campaign import run_campaign
from rsembed_dask.specs import TemporalSpec

samples, out, scales, model, start, end = sys.argv[1:7]
gdf = gpd.read_parquet(samples)
with open("/proc/self/status") as fh:
    before = next(int(line.split()[1]) // 1024 for line in fh if line.startswith("VmRSS"))
t0 = time.perf_counter()
run_campaign(gdf, out, scales=json.loads(scales), temporal=TemporalSpec.range(start, end), model=model,
             backend="emulator", id_column="site", progress=False)
seconds = time.perf_counter() - t0
with open("/proc/self/status") as fh:
    peak = next(int(line.split()[1]) // 1024 for line in fh if line.startswith("VmHWM"))
print(json.dumps({"seconds": seconds, "peak_mib": peak, "samples_mib": before}))
"""

EXPORT_CHILD = r"""
import json, sys, time
from rsembed_dask.store.geoparquet import export_geoparquet
cube, out = sys.argv[1:3]
t0 = time.perf_counter()
report = export_geoparquet(cube, out)
print(json.dumps({"seconds": time.perf_counter() - t0, "rows": report.rows}))
"""


def _points(n: int, seed: int = 0):
    import geopandas as gpd

    rng = np.random.default_rng(seed)
    return gpd.GeoDataFrame({"site": [f"s{i:08d}" for i in range(n)]},
                            geometry=gpd.points_from_xy(rng.uniform(-9.0, 30.0, n), rng.uniform(36.0, 70.0, n)),
                            crs="EPSG:4326")


def build_cube(path: str, gdf, embed_dim: int | None = None) -> float:
    """Write a finished cube of ``gdf``'s samples (every cell ok) without the model; seconds taken."""
    from rsembed_dask.campaign.jobs import DEFAULT_CHUNK_SIZE
    from rsembed_dask.embed.weights import model_info
    from rsembed_dask.sampling import build_sample_table
    from rsembed_dask.specs import CampaignSpec, ModelSpec, TemporalSpec
    from rsembed_dask.store.cube import OK, Cube

    t0 = time.perf_counter()
    spec = CampaignSpec(temporal=TemporalSpec.range(*WINDOW), model=ModelSpec(MODEL), scales=SCALES,
                        chunk_size=DEFAULT_CHUNK_SIZE)
    dim = embed_dim or model_info(spec.model).embed_dim
    table = build_sample_table(gdf, id_column="site")
    cube = Cube.create_or_open(path, spec=spec, ids=table.ids, lon=table.lon, lat=table.lat,
                               geohash=table.geohash, wkb=table.wkb, embed_dim=dim)
    rng = np.random.default_rng(1)
    block = rng.normal(size=(spec.chunk_size, dim)).astype("float32")
    for start in range(0, cube.n_samples, spec.chunk_size):
        stop = cube.unit_stop(start)
        k = stop - start
        for si in range(len(SCALES)):
            cube.write_unit(start, stop, si, embedding=np.roll(block, start, axis=0)[:k],
                            status=np.full(k, OK, "int8"), input_res_m=np.full(k, 10.0, "float32"),
                            valid_fraction=np.ones(k, "float32"), error=[""] * k)
    return time.perf_counter() - t0


def _files_and_bytes(path: str) -> tuple[int, int]:
    files = size = 0
    for root, _, names in os.walk(path):
        for name in names:
            files += 1
            size += os.path.getsize(os.path.join(root, name))
    return files, size


def _child(code: str, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
        sys.exit(f"child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--export-samples", type=int, default=100_000)
    ap.add_argument("--keep", default=None, help="build the cubes in this folder and keep them")
    args = ap.parse_args()
    tmp = args.keep or tempfile.mkdtemp(prefix="rsembed-scale-")
    os.makedirs(tmp, exist_ok=True)
    label = f"{args.samples // 1_000_000}M" if args.samples % 1_000_000 == 0 else f"{args.samples}"

    gdf = _points(args.samples)
    samples = os.path.join(tmp, "samples.parquet")
    gdf.to_parquet(samples)
    cube = os.path.join(tmp, "cube.zarr")
    build_s = build_cube(cube, gdf)
    del gdf
    files, size = _files_and_bytes(cube)
    print(f"build seconds ({label} samples): {build_s:.1f}")
    print(f"cube MiB ({label} samples): {size / 2**20:.0f}")
    print(f"files per 1,000 sample-scales: {files / (args.samples * len(SCALES)) * 1000:.2f}")

    # The first rerun finds no digest of its input in the cube (built above, not by a campaign):
    # the full check (sample table, per-block digests); it records the digest, as every
    # campaign run does. The second is the rerun of a finished campaign a user makes.
    full = _child(RESUME_CHILD, samples, cube, json.dumps(list(SCALES)), MODEL, *WINDOW)
    resume = _child(RESUME_CHILD, samples, cube, json.dumps(list(SCALES)), MODEL, *WINDOW)
    print(f"resume seconds ({label} samples): {resume['seconds']:.1f}")
    print(f"resume peak MiB ({label} samples): {resume['peak_mib']}")
    print(f"resume peak MiB above the samples ({label} samples): {resume['peak_mib'] - resume['samples_mib']}")
    print(f"samples MiB ({label} samples, GeoDataFrame and imports): {resume['samples_mib']}")
    print(f"full check seconds ({label} samples): {full['seconds']:.1f}")
    print(f"full check peak MiB ({label} samples): {full['peak_mib']}")

    small = os.path.join(tmp, "export.zarr")
    build_cube(small, _points(args.export_samples, seed=2), embed_dim=1024)
    exported = _child(EXPORT_CHILD, small, os.path.join(tmp, "export.parquet"))
    print(f"export seconds per 100k embeddings: {exported['seconds'] / exported['rows'] * 100_000:.1f}")


if __name__ == "__main__":
    main()
