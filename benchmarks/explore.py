"""The explorer on a big cube: similarity search time and the server's memory.

A synthetic int8 sample cube of 1M embeddings of D = 1024 (ScaleMAE ViT-L's width,
the default model) is written once with the store's own ``Cube`` (random vectors
around 64 cluster centres, points over a 10 x 10 degree area, units of 16384
samples). ``rsembed-dask explore CUBE --no-browser --port 0`` then serves it in its
own process; the benchmark waits for the address it prints (the vectors are loaded
before it listens), loads what the page loads (``/api/info``, ``/api/places``), and
times ``/api/similar?k=10`` at random places over HTTP (client wall time, median of
the runs after a warm-up). The server's peak resident memory is its ``VmHWM``.

Figures (one ``name: value`` line each):

1. ``similar ms (1M embeddings)``: goal <= 300 on the 2-core development machine. Printed
   beside it: the server's own ``took_ms`` and its CPU time per query (user + system, from
   ``/proc``), which say what the wall time is made of on a machine shared with other work
   (the load average is printed too).
2. ``explore server peak MiB (1M embeddings)``: goal <= 1.5 x the vectors' own bytes
   (printed as ``vectors MiB`` beside it).

Run: ``.venv/bin/python benchmarks/explore.py [--n 1000000] [--dim 1024] [--keep DIR]``
(writing the cube takes about a minute, the rest well under one).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

UNIT = 16384


def write_cube(path: str, n: int, dim: int, seed: int = 0) -> None:
    """An int8 cube of ``n`` ok embeddings of ``dim``, one scale, written unit by unit."""
    import shapely

    from rsembed_dask.geo.keys import geohash_encode
    from rsembed_dask.specs import CampaignSpec, ModelSpec, OutputSpec, TemporalSpec
    from rsembed_dask.store.cube import OK, Cube

    rng = np.random.default_rng(seed)
    lon, lat = rng.uniform(0.0, 10.0, n), rng.uniform(40.0, 50.0, n)
    spec = CampaignSpec(temporal=TemporalSpec.range("2022-01-01", "2022-04-01"), model=ModelSpec("test-tiny"),
                        output=OutputSpec.pooled(dtype="int8"), scales=(10.0,), chunk_size=UNIT)
    cube = Cube.create_or_open(path, spec=spec, ids=np.arange(n, dtype=np.int64), lon=lon, lat=lat,
                               geohash=geohash_encode(lon, lat), wkb=shapely.to_wkb(shapely.points(lon, lat)),
                               embed_dim=dim)
    centres = rng.normal(size=(64, dim)).astype(np.float32)
    for start in range(0, n, UNIT):
        m = min(UNIT, n - start)
        emb = centres[rng.integers(0, 64, m)] + 0.5 * rng.normal(size=(m, dim)).astype(np.float32)
        cube.write_unit(start, start + m, 0, embedding=emb, status=np.full(m, OK, np.int8),
                        input_res_m=np.full(m, 10.0, np.float32), valid_fraction=np.ones(m, np.float32),
                        error=[""] * m)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as r:
        return r.read()


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="utf-8") as fh:
        kb = int(re.search(r"VmHWM:\s+(\d+) kB", fh.read()).group(1))  # type: ignore[union-attr]
    return kb / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--keep", default=None, help="write (or reuse) the cube here instead of a temporary directory")
    args = ap.parse_args()
    work = args.keep or tempfile.mkdtemp(prefix="explore-bench-")
    cube = os.path.join(work, f"int8_{args.n}_{args.dim}.zarr")
    label = f"{args.n / 1e6:g}M embeddings" if args.n >= 1e6 else f"{args.n} embeddings"
    try:
        if not os.path.exists(cube):
            t0 = time.perf_counter()
            write_cube(cube, args.n, args.dim)
            print(f"cube written s: {time.perf_counter() - t0:.0f}", flush=True)
        exe = os.path.join(os.path.dirname(sys.executable), "rsembed-dask")
        t0 = time.perf_counter()
        proc = subprocess.Popen([exe, "explore", cube, "--no-browser", "--port", "0"], stdout=subprocess.PIPE,
                                text=True, env=os.environ)
        try:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            found = re.search(r"(http://\S+/)", line)
            if not found:
                raise SystemExit(f"the explorer did not start: {line!r} (exit {proc.poll()})")
            url = found.group(1)
            print(f"explore server ready s ({label}): {time.perf_counter() - t0:.1f}")
            info = json.loads(_get(url + "api/info"))
            places = json.loads(_get(url + "api/places?scale=10"))
            assert places["total"] == args.n, places["total"]
            rng = np.random.default_rng(1)
            times, took = [], []
            for i in range(args.queries + 2):
                if i == 2:
                    cpu0 = _cpu_s(proc.pid)
                lon, lat = rng.uniform(0, 10), rng.uniform(40, 50)
                t = time.perf_counter()
                fc = json.loads(_get(f"{url}api/similar?lon={lon:.5f}&lat={lat:.5f}&k=10&scale=10"))
                times.append((time.perf_counter() - t) * 1000)
                took.append(fc["took_ms"])
                assert len(fc["features"]) == 11 and fc["features"][0]["properties"]["query"]
            ms = float(np.median(times[2:]))
            cpu_ms = (_cpu_s(proc.pid) - cpu0) * 1000 / args.queries
            peak = _peak_mib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)
        vectors = args.n * args.dim / 2**20  # int8: one byte per value
        print(f"similar ms ({label}): {ms:.0f}")
        print(f"similar ms p90 ({label}): {float(np.percentile(times[2:], 90)):.0f}")
        print(f"similar server ms ({label}, took_ms, median): {float(np.median(took[2:])):.0f}")
        print(f"similar server CPU ms per query ({label}): {cpu_ms:.0f}")
        print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"vectors MiB ({label}, int8, D={args.dim}): {vectors:.0f}")
        print(f"explore server peak MiB ({label}): {peak:.0f}")
        print(f"explore server peak / vectors ({label}): {peak / vectors:.2f}")
        print(f"places sent to the page ({label}): {places['shown']} of {info['places']}")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
