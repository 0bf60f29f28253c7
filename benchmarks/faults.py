"""Faults benchmark: a campaign under injected Earth Engine faults and killed workers vs a clean run.

Real processes: a `dask scheduler`, two `dask worker --resources GPU=1` (CPU here) and one
fetch-only worker; the emulator runs in this process. The faulty run gets 20 % HTTP 429,
5 % HTTP 503, 2 % malformed answers and 5 % latency spikes, and loses one embed (actor)
worker and the fetch worker mid-campaign. Prints one ``name: value`` line per figure.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import geopandas as gpd
import numpy as np

N_SAMPLES = 96
CHUNK = 8
WINDOW = ("2022-01-01", "2022-02-01")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_cluster():
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    dask = os.path.join(os.path.dirname(sys.executable), "dask")
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    common = ["--host", "127.0.0.1", "--no-nanny", "--no-dashboard"]
    procs = {"scheduler": subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                            "--no-dashboard"], **quiet)}
    time.sleep(2)
    for i in range(2):
        procs[f"gpu-{i}"] = subprocess.Popen([dask, "worker", addr, *common, "--nthreads", "2",
                                              "--resources", "GPU=1", "--name", f"gpu-{i}"], **quiet)
    procs["fetch"] = subprocess.Popen([dask, "worker", addr, *common, "--nthreads", "4", "--name", "fetch"], **quiet)
    return addr, procs


def main() -> None:
    from distributed import Client

    from rsembed_dask.cube import OK
    from rsembed_dask.pipeline import run_campaign
    from rsembed_dask.specs import ModelSpec, TemporalSpec
    from rsembed_dask.testing import Faults, GEEEmulator

    rng = np.random.default_rng(0)
    gdf = gpd.GeoDataFrame(geometry=gpd.points_from_xy(3 + rng.uniform(0, .4, N_SAMPLES),
                                                       31 + rng.uniform(0, .4, N_SAMPLES)), crs="EPSG:4326")
    kw = dict(scales=[10], temporal=TemporalSpec.range(*WINDOW), model=ModelSpec("test-tiny"), backend="gee",
              chunk_size=CHUNK, progress=False)
    addr, procs = _start_cluster()
    try:
        with Client(addr, timeout=60) as c:
            c.wait_for_workers(3, timeout=120)
        with tempfile.TemporaryDirectory() as tmp:
            with GEEEmulator(seed=0, latency_s=0.05) as emu:
                opts = {"api_url": emu.url, "credentials": "anonymous", "project": "bench"}
                # Warm-up: the workers import torch once; neither timed run should pay for it.
                run_campaign(gdf.iloc[:CHUNK], Path(tmp) / "warm.zarr", client=addr, gee_options=opts, **kw)
                t0 = time.perf_counter()
                clean = run_campaign(gdf, Path(tmp) / "clean.zarr", client=addr, gee_options=opts, **kw)
                clean_s = time.perf_counter() - t0
            faults = Faults(latency_s=0.05, p_429=0.2, p_5xx=0.05, p_malformed=0.02, p_spike=0.05, spike_s=0.5)
            killed: list[str] = []

            def kill(summary):
                done = len(killed_at)
                killed_at.append(summary)
                if done == 2:
                    procs["gpu-0"].send_signal(signal.SIGKILL)
                    killed.append("embed worker")
                if done == 4:
                    procs["fetch"].send_signal(signal.SIGKILL)
                    killed.append("fetch worker")

            killed_at: list = []
            with GEEEmulator(seed=0, faults=faults) as emu:
                opts = {"api_url": emu.url, "credentials": "anonymous", "project": "bench"}
                t0 = time.perf_counter()
                faulty = run_campaign(gdf, Path(tmp) / "faulty.zarr", client=addr, gee_options=opts,
                                      on_unit=kill, **kw)
                faulty_s = time.perf_counter() - t0
                injected = emu.stats.as_dict()
            from rsembed_dask.cube import Cube

            last = Cube.open(Path(tmp) / "faulty.zarr").attrs["last_run"]
            account = Cube.open(Path(tmp) / "faulty.zarr").attrs["request_account"]
            status = faulty.status.values
            differing = int((~np.isclose(faulty.embedding.values, clean.embedding.values, rtol=0, atol=0,
                                         equal_nan=True)).any(axis=-1).sum())
            print(f"units run: {last['units_done']}")
            print(f"faults 429: {injected['injected_429']}")
            print(f"faults 5xx: {injected['injected_5xx']}")
            print(f"faults malformed: {injected['injected_malformed']}")
            print(f"workers killed: {len(killed)} ({', '.join(killed)})")
            # Counted by the fetch tasks that survived; those lost with the killed worker took
            # their counts with them, so this is a lower bound.
            print(f"retries (accounted): {account['retried']}")
            print(f"units re-run after worker loss: {last['units_rerun']}")
            print(f"units lost: {int(sum((status[s:s + CHUNK] != OK).any() for s in range(0, N_SAMPLES, CHUNK)))}")
            print(f"cells differing from clean run: {differing}")
            print(f"clean run s: {clean_s:.1f}")
            print(f"faulty run s: {faulty_s:.1f}")
            print(f"slowdown: {faulty_s / clean_s:.2f}")
    finally:
        for p in procs.values():
            p.kill()
            p.wait(20)


if __name__ == "__main__":
    main()
