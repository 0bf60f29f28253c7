"""Faults benchmark: a campaign under injected Earth Engine faults and killed workers vs a clean run.

Real processes: a `dask scheduler`, two `dask worker --resources GPU=1` (CPU here) and one
fetch-only worker; the emulator runs in this process. 96 samples in clusters of four
neighbours (their requests are coalesced), 8 of them in a place without imagery (the
emulator's ``no_coverage``: no_data in every run, not a failure).

1. Configuration errors stop a campaign before any work: a band typo (``B04``) and
   refused credentials (HTTP 401) raise ``ConfigurationError`` from the preflight, with no
   ``computePixels`` request sent and no cluster used.
2. The faulty run gets 20 % HTTP 429, 5 % HTTP 503, 2 % malformed answers, 3 % HTTP 400
   (failed cells), 5 % latency spikes, ``Computation timed out.`` on every request over
   100 000 px (coalesced requests are split), and loses one embed (actor) worker and the
   fetch worker mid-campaign.
3. A ``retry_failed=True`` rerun under the same faults: ``ok cells lost on retry`` counts
   cells ok before and not ok after (an ok cell must never be downgraded).
4. A last ``retry_failed=True`` rerun without faults finishes the cube: ``units lost`` and
   ``cells differing`` (from the clean run) must be 0.
5. A late worker: a new cube on the one GPU worker left (Earth Engine answering in 4 s,
   one request at a time); a third ``GPU=1`` worker joins once a unit is done (``late worker
   units``: what it embedded).
6. A faulty worker: the healthy GPU workers go; the only one left is a ``GPU=1`` worker whose
   forward raises a CUDA-like ``RuntimeError`` (a ``sitecustomize.py`` on its ``PYTHONPATH``
   patches torch, from outside the package); once the runner quarantines it, a healthy
   worker joins and runs every unit (``quarantined``).

``units lost`` and ``cells differing`` count over runs 4, 5 and 6 (each against the clean run).

Prints one ``name: value`` line per figure.
"""

from __future__ import annotations

import logging
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

N_CLUSTERS = 24
N_SAMPLES = 4 * N_CLUSTERS
CHUNK = 8
WINDOW = ("2022-01-01", "2022-02-01")
#: Where no scene exists (the last two clusters).
NO_COVERAGE = [(9.9, 34.9, 10.2, 35.2)]
#: Earth Engine "gives up" on requests over this many pixels (one 224 x 224 chip is 50 176).
WORK_LIMIT_PX = 100_000


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


#: Patches torch in the faulty worker only: every module call (the forward) raises.
FAULTY_SITECUSTOMIZE = """
import torch

def _broken_call(self, *args, **kwargs):
    raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")

torch.nn.Module.__call__ = _broken_call
"""


def _worker(addr: str, name: str, env: dict | None = None):
    dask = os.path.join(os.path.dirname(sys.executable), "dask")
    return subprocess.Popen([dask, "worker", addr, "--host", "127.0.0.1", "--no-nanny", "--no-dashboard",
                             "--nthreads", "2", "--resources", "GPU=1", "--name", name],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=None if env is None else {**os.environ, **env})


def _compare(ds, clean) -> tuple[int, int]:
    """(units lost, cells differing) of a finished cube against the clean run."""
    from rsembed_dask.store.cube import FAILED, PENDING

    status = ds.status.values
    differing = int((~np.isclose(ds.embedding.values, clean.embedding.values, rtol=0, atol=0,
                                 equal_nan=True)).any(axis=-1).sum())
    differing += int((status != clean.status.values).sum())
    lost = int(sum(np.isin(status[s:s + CHUNK], (PENDING, FAILED)).any() for s in range(0, N_SAMPLES, CHUNK)))
    return lost, differing


def _samples():
    """96 samples: 24 clusters of 2 x 2 neighbours 1.5 km apart; 2 clusters where no scene exists."""
    rng = np.random.default_rng(0)
    centres = [(3 + rng.uniform(0, .4), 31 + rng.uniform(0, .4)) for _ in range(N_CLUSTERS - 2)]
    centres += [(10.0, 35.0), (10.05, 35.05)]  # inside NO_COVERAGE
    lon = [x + 0.016 * (k % 2) for x, _ in centres for k in range(4)]
    lat = [y + 0.0135 * (k // 2) for _, y in centres for k in range(4)]
    return gpd.GeoDataFrame(geometry=gpd.points_from_xy(lon, lat), crs="EPSG:4326")


def _config_error_s(gdf, kw, addr, tmp, **emulator) -> tuple[str, float, int]:
    """Run a campaign that must stop on a ConfigurationError before any work."""
    from rsembed_dask.errors import ConfigurationError
    from rsembed_dask.campaign.run import run_campaign
    from rsembed_dask.emulator import GEEEmulator

    sensor = emulator.pop("sensor", None)
    with GEEEmulator(seed=0, no_coverage=NO_COVERAGE, **emulator) as emu:
        opts = {"api_url": emu.url, "credentials": "anonymous", "project": "bench"}
        t0 = time.perf_counter()
        try:
            run_campaign(gdf, Path(tmp) / f"config-{len(os.listdir(tmp))}.zarr", client=addr, gee_options=opts,
                         sensor=sensor, **kw)
        except ConfigurationError as e:
            return type(e).__name__, time.perf_counter() - t0, emu.stats.as_dict()["compute_pixels"]
    return "no error", time.perf_counter() - t0, -1


def main() -> None:
    from distributed import Client

    from rsembed_dask.store.cube import FAILED, NO_DATA, OK, PENDING, Cube
    from rsembed_dask.campaign.run import run_campaign
    from rsembed_dask.specs import ModelSpec, SensorSpec, TemporalSpec
    from rsembed_dask.emulator import Faults, GEEEmulator

    gdf = _samples()
    kw = dict(scales=[10], temporal=TemporalSpec.range(*WINDOW), model=ModelSpec("test-tiny"), backend="gee",
              chunk_size=CHUNK, progress=False)
    addr, procs = _start_cluster()
    try:
        with Client(addr, timeout=60) as c:
            c.wait_for_workers(3, timeout=120)
        with tempfile.TemporaryDirectory() as tmp:
            with GEEEmulator(seed=0, latency_s=0.05, no_coverage=NO_COVERAGE) as emu:
                opts = {"api_url": emu.url, "credentials": "anonymous", "project": "bench"}
                # Warm-up: the workers import torch once; neither timed run should pay for it.
                run_campaign(gdf.iloc[:CHUNK], Path(tmp) / "warm.zarr", client=addr, gee_options=opts, **kw)
                t0 = time.perf_counter()
                clean = run_campaign(gdf, Path(tmp) / "clean.zarr", client=addr, gee_options=opts, **kw)
                clean_s = time.perf_counter() - t0

            typo = _config_error_s(gdf, kw, addr, tmp, sensor=SensorSpec(bands=("B04", "B3", "B2")))
            refused = _config_error_s(gdf, kw, addr, tmp, auth="401")

            faults = Faults(latency_s=0.05, p_429=0.2, p_5xx=0.05, p_malformed=0.02, p_400=0.03,
                            p_spike=0.05, spike_s=0.5)
            killed: list[str] = []
            killed_at: list = []

            def kill(summary):
                done = len(killed_at)
                killed_at.append(summary)
                if done == 2:
                    procs["gpu-0"].send_signal(signal.SIGKILL)
                    killed.append("embed worker")
                if done == 4:
                    procs["fetch"].send_signal(signal.SIGKILL)
                    killed.append("fetch worker")

            out = Path(tmp) / "faulty.zarr"
            with GEEEmulator(seed=0, faults=faults, no_coverage=NO_COVERAGE, work_limit_px=WORK_LIMIT_PX) as emu:
                opts = {"api_url": emu.url, "credentials": "anonymous", "project": "bench"}
                t0 = time.perf_counter()
                faulty = run_campaign(gdf, out, client=addr, gee_options=opts, on_unit=kill, **kw)
                faulty_s = time.perf_counter() - t0
                injected = emu.stats.as_dict()
            last = Cube.open(out).attrs["last_run"]
            account = Cube.open(out).attrs["request_account"]
            before = faulty.status.values.copy()

            with GEEEmulator(seed=0, faults=faults, no_coverage=NO_COVERAGE, work_limit_px=WORK_LIMIT_PX) as emu:
                opts = {"api_url": emu.url, "credentials": "anonymous", "project": "bench"}
                retried = run_campaign(gdf, out, client=addr, gee_options=opts, retry_failed=True, **kw)
            after = retried.status.values
            with GEEEmulator(seed=0, no_coverage=NO_COVERAGE) as emu:
                opts = {"api_url": emu.url, "credentials": "anonymous", "project": "bench"}
                final = run_campaign(gdf, out, client=addr, gee_options=opts, retry_failed=True, **kw)

            status = final.status.values
            lost, differing = _compare(final, clean)

            # 5. A late worker joins the one GPU worker left, once two units are done.
            late: list = []

            def join(summary):
                if not late:
                    late.append(_worker(addr, "gpu-late"))
                    procs["gpu-late"] = late[0]

            # Paced by Earth Engine (4 s a request, one at a time), so the run outlasts the worker's start.
            with GEEEmulator(seed=0, latency_s=4.0, no_coverage=NO_COVERAGE) as emu:
                opts = {"api_url": emu.url, "credentials": "anonymous", "project": "bench"}
                late_ds = run_campaign(gdf, Path(tmp) / "late.zarr", client=addr, gee_options=opts,
                                       on_unit=join, ee_concurrency=1, **kw)
            late_last = Cube.open(Path(tmp) / "late.zarr").attrs["last_run"]
            late_units = sum(w["units"] for w in late_last["workers"] if w["name"] == "gpu-late")
            late_lost, late_differing = _compare(late_ds, clean)

            # 6. The healthy GPU workers go; a faulty one (its forward raises a CUDA-like error) is
            # the only one; a healthy worker joins once the runner has quarantined it.
            for name in ("gpu-1", "gpu-late"):
                if name in procs:
                    procs[name].send_signal(signal.SIGKILL)
            site = Path(tmp) / "faulty-site"
            site.mkdir()
            (site / "sitecustomize.py").write_text(FAULTY_SITECUSTOMIZE)
            procs["gpu-bad"] = _worker(addr, "gpu-bad", {"PYTHONPATH": os.pathsep.join(
                [str(site), os.environ.get("PYTHONPATH", "")])})
            with Client(addr, timeout=60) as c:
                c.wait_for_workers(1, timeout=120)
                while len(c.scheduler_info()["workers"]) != 1:
                    time.sleep(0.5)

            class OnQuarantine(logging.Handler):
                def emit(self, record):
                    if "quarantined" in record.getMessage() and "gpu-good" not in procs:
                        procs["gpu-good"] = _worker(addr, "gpu-good")

            hook = OnQuarantine()
            logging.getLogger("rsembed_dask.campaign.runner").addHandler(hook)
            try:
                with GEEEmulator(seed=0, latency_s=0.05, no_coverage=NO_COVERAGE) as emu:
                    opts = {"api_url": emu.url, "credentials": "anonymous", "project": "bench"}
                    bad_ds = run_campaign(gdf, Path(tmp) / "bad.zarr", client=addr, gee_options=opts, **kw)
            finally:
                logging.getLogger("rsembed_dask.campaign.runner").removeHandler(hook)
            bad_last = Cube.open(Path(tmp) / "bad.zarr").attrs["last_run"]
            bad_lost, bad_differing = _compare(bad_ds, clean)
            print(f"band typo: {typo[0]} after {typo[1]:.1f} s, computePixels sent {typo[2]}")
            print(f"refused credentials (401): {refused[0]} after {refused[1]:.1f} s, computePixels sent {refused[2]}")
            print(f"units run: {last['units_done']}")
            print(f"faults 429: {injected['injected_429']}")
            print(f"faults 5xx: {injected['injected_5xx']}")
            print(f"faults malformed: {injected['injected_malformed']}")
            print(f"faults 400: {injected['injected_400']}")
            print(f"computation timed out: {injected['too_much_work']} (requests split: {account.get('split', 0)})")
            print(f"workers killed: {len(killed)} ({', '.join(killed)})")
            # Every fetch attempt reports its requests as a Dask event, also attempts that raised;
            # those running on the killed fetch worker when it died cannot: a lower bound.
            print(f"requests sent (account / emulator): {account['sent']} / {injected['compute_pixels']}")
            print(f"retries (accounted): {account['retried']}")
            print(f"units re-run after worker loss: {last['units_rerun']}")
            print(f"no_data cells (no imagery; clean run): {int((status == NO_DATA).sum())} "
                  f"({int((clean.status.values == NO_DATA).sum())})")
            print(f"failed cells after the faulty run: {int((before == FAILED).sum())}")
            print(f"ok cells lost on retry: {int(((before == OK) & (after != OK)).sum())}")
            print(f"late worker units: {late_units} of {late_last['units_done']} "
                  f"(model loaded in {[w['load_s'] for w in late_last['workers'] if w['name'] == 'gpu-late']} s)")
            print(f"late worker run: units lost {late_lost}, cells differing {late_differing}")
            print(f"quarantined: {', '.join(bad_last['quarantined']) or 'none'} "
                  f"({'; '.join(bad_last['quarantined'].values())[:120]})")
            print(f"faulty worker run: units lost {bad_lost}, cells differing {bad_differing}, "
                  f"units re-run {bad_last['units_rerun']}")
            print(f"units lost: {lost + late_lost + bad_lost}")
            print(f"cells differing: {differing + late_differing + bad_differing}")
            print(f"clean run s: {clean_s:.1f}")
            print(f"faulty run s: {faulty_s:.1f}")
            print(f"slowdown: {faulty_s / clean_s:.2f}")
    finally:
        for p in procs.values():
            p.kill()
            p.wait(20)


if __name__ == "__main__":
    main()
