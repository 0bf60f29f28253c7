"""Full verify of a cube with ``time``: seconds and peak memory (issue 23, verify with time).

A finished cube is built without the model: ``--samples`` synthetic points (default 20,000),
3 scales, ``--windows`` yearly windows (default 3), D = 64 (``test-tiny``), units of 512
samples, every unit of every window written ``ok`` by ``Cube.write_unit``. Then
``check_cube`` (what ``rsembed-dask inspect --verify`` runs) reads every chunk of every window.

Printed (``name: value``): ``verify seconds (20k samples x 3 scales x 3 windows)``,
``verify peak MiB (20k samples x 3 scales x 3 windows)`` (tracemalloc peak of a second verify:
Python and NumPy allocations), ``verify seconds per window`` and ``build seconds``.

``--windows 1`` builds the same cube without ``time`` (a single-window campaign), for comparison.

Run: ``PYTHONPATH=$PWD .venv/bin/python benchmarks/verify_time.py [--samples 20000] [--windows 3]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc

import numpy as np

from rsembed_dask.specs import CampaignSpec, ModelSpec, TemporalSpec
from rsembed_dask.store.cube import OK, Cube
from rsembed_dask.store.verify import check_cube

SCALES = (10.0, 20.0, 40.0)
D = 64
CHUNK = 512


def build(path: str, n: int, n_windows: int) -> Cube:
    windows = TemporalSpec.years(2019, 2019 + n_windows - 1)
    spec = CampaignSpec(temporal=windows[0], model=ModelSpec("test-tiny"), scales=SCALES, chunk_size=CHUNK)
    rng = np.random.default_rng(0)
    lon, lat = rng.uniform(2, 8, n), rng.uniform(43, 50, n)
    cube = Cube.create_or_open(path, spec=spec, ids=[f"s{i}" for i in range(n)], lon=lon, lat=lat,
                               geohash=["u0"] * n, wkb=["0101000000000000000000f03f000000000000f03f"] * n,
                               embed_dim=D, windows=tuple(windows))
    for t in range(n_windows):
        c = cube.at_window(t)
        for si in range(len(SCALES)):
            for start in range(0, n, CHUNK):
                stop = min(start + CHUNK, n)
                k = stop - start
                c.write_unit(start, stop, si, embedding=rng.standard_normal((k, D), dtype="float32"),
                             status=np.full(k, OK, "int8"), input_res_m=np.full(k, 10.0), valid_fraction=np.ones(k),
                             error=[""] * k)
    return cube


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=20_000)
    p.add_argument("--windows", type=int, default=3)
    args = p.parse_args()
    label = f"{args.samples // 1000}k samples x {len(SCALES)} scales x {args.windows} windows"
    with tempfile.TemporaryDirectory(prefix="verify-time-") as tmp:
        t0 = time.perf_counter()
        build(f"{tmp}/c.zarr", args.samples, args.windows)
        print(f"build seconds: {time.perf_counter() - t0:.1f}")
        t0 = time.perf_counter()
        health = check_cube(f"{tmp}/c.zarr")
        seconds = time.perf_counter() - t0
        assert not health.problems, health.problems
        tracemalloc.start()  # a second verify, for its memory (tracemalloc slows it down)
        check_cube(f"{tmp}/c.zarr")
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        print(f"verify seconds ({label}): {seconds:.2f}")
        print(f"verify peak MiB ({label}): {peak:.0f}")
        print(f"verify seconds per window: {seconds / args.windows:.2f}")


if __name__ == "__main__":
    main()
