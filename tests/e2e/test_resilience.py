"""Real processes killed mid-campaign: a fetch-only worker, the submitting client, the only GPU worker."""

import signal
import subprocess
import sys
import time

import geopandas as gpd
import numpy as np
import pytest

from rsembed_dask.store.cube import OK, Cube, open_cube
from rsembed_dask.errors import CubeError, RsEmbedError
from rsembed_dask.campaign.run import run_campaign
from rsembed_dask.specs import ModelSpec, TemporalSpec
from rsembed_dask.emulator import GEEEmulator

from ..conftest import dask_processes, dask_worker

WINDOW = TemporalSpec.range("2022-01-01", "2022-02-01")
TINY = ModelSpec("test-tiny", device="cpu")


def _gdf(n):
    rng = np.random.default_rng(11)
    return gpd.GeoDataFrame({"site": [f"s{i:03d}" for i in range(n)]},
                            geometry=gpd.points_from_xy(3 + rng.uniform(0, .3, n), 31 + rng.uniform(0, .3, n)),
                            crs="EPSG:4326")


@pytest.mark.timeout(300)
def test_fetch_worker_killed(tmp_path):
    with GEEEmulator(seed=0, latency_s=0.05) as emu, dask_processes(n_gpu=1, n_fetch=1) as (addr, procs):
        opts = {"api_url": emu.url, "credentials": "anonymous", "project": "p"}
        kw = dict(scales=[10], temporal=WINDOW, model=TINY, backend="gee", gee_options=opts, client=addr,
                  chunk_size=4, progress=False, id_column="site")
        clean = run_campaign(_gdf(40), tmp_path / "clean.zarr", **kw)
        killed = []

        def kill_fetch_worker(summary):
            if not killed:
                procs["fetch"][0].send_signal(signal.SIGKILL)
                killed.append(summary.unit)

        ds = run_campaign(_gdf(40), tmp_path / "k.zarr", on_unit=kill_fetch_worker, **kw)
    assert killed and procs["fetch"][0].poll() is not None
    assert (ds.status.values == OK).all()
    np.testing.assert_array_equal(ds.embedding.values, clean.embedding.values)
    assert Cube.open(tmp_path / "k.zarr").attrs["last_run"]["units_done"] == 10


def _cli(samples, out, addr, emu_url):
    return [sys.executable, "-m", "rsembed_dask.cli", "run", str(samples), "--out", str(out), "--scales", "10,20",
            "--start", WINDOW.start, "--end", WINDOW.end, "--scheduler", addr, "--model", "test-tiny",
            "--backend", "gee", "--ee-url", emu_url, "--ee-project", "p", "--credentials", "anonymous",
            "--chunk-size", "4", "--id-column", "site", "--no-progress"]


def _complete_units(out, chunk=4):
    try:
        status = Cube.open(out).status_array()
    except CubeError:  # still being created
        return set()
    n = status.shape[0]
    return {(s // chunk, j) for s in range(0, n, chunk) for j in range(status.shape[1])
            if (status[s:s + chunk, j] != 0).all()}


@pytest.mark.timeout(400)
def test_client_killed_then_same_command_resumes(tmp_path):
    samples = tmp_path / "samples.geojson"
    _gdf(48).to_file(samples)
    with GEEEmulator(seed=0, latency_s=0.05) as emu, dask_processes(n_gpu=1, n_fetch=1) as (addr, _):
        subprocess.run(_cli(samples, tmp_path / "clean.zarr", addr, emu.url), check=True, timeout=300,
                       stdout=subprocess.DEVNULL)
        out = tmp_path / "cube.zarr"
        client = subprocess.Popen(_cli(samples, out, addr, emu.url), stdout=subprocess.DEVNULL)
        deadline = time.time() + 200
        while time.time() < deadline:
            if (out / "zarr.json").exists() and len(_complete_units(out)) >= 4:
                break
            time.sleep(0.2)
        client.send_signal(signal.SIGKILL)
        client.wait(30)
        time.sleep(3)  # tasks already running on the cluster finish or are dropped
        done_before = _complete_units(out)
        assert 4 <= len(done_before) < 24
        rc = subprocess.run(_cli(samples, out, addr, emu.url), timeout=300, stdout=subprocess.DEVNULL).returncode
    assert rc == 0
    last = Cube.open(out).attrs["last_run"]
    assert last["units_run"] <= 24 - len(done_before) and last["units_done"] == last["units_run"]
    ds, clean = open_cube(out), open_cube(tmp_path / "clean.zarr")
    assert (ds.status.values == OK).all()
    np.testing.assert_array_equal(ds.embedding.values, clean.embedding.values)


def _kill_gpu_after_first_unit(procs, restart_after_s=None, addr=None):
    """An ``on_unit`` callback: SIGKILL the only GPU worker once; optionally start a new one later."""
    import threading

    killed = []

    def on_unit(summary):
        if killed:
            return
        procs["gpu"][0].send_signal(signal.SIGKILL)
        killed.append(time.monotonic())
        if restart_after_s is not None:
            threading.Timer(restart_after_s, lambda: procs["gpu"].append(
                dask_worker(addr, "gpu-again", gpu=True))).start()

    return on_unit, killed


@pytest.mark.timeout(300)
def test_campaign_waits_for_its_only_gpu_worker_to_come_back(tmp_path, caplog):
    with GEEEmulator(seed=0, latency_s=0.05) as emu, dask_processes(n_gpu=1, n_fetch=1) as (addr, procs):
        opts = {"api_url": emu.url, "credentials": "anonymous", "project": "p"}
        on_unit, killed = _kill_gpu_after_first_unit(procs, restart_after_s=4, addr=addr)
        with caplog.at_level("WARNING", logger="rsembed_dask.campaign.runner"):
            ds = run_campaign(_gdf(32), tmp_path / "g.zarr", scales=[10], temporal=WINDOW, model=TINY,
                              backend="gee", gee_options=opts, client=addr, chunk_size=4, progress=False,
                              id_column="site", on_unit=on_unit, gpu_wait_s=60)
        assert killed and procs["gpu"][0].poll() is not None and len(procs["gpu"]) == 2
    assert (ds.status.values == OK).all() and np.isfinite(ds.embedding.values).all()
    assert "waiting up to 60 s for a GPU worker" in caplog.text
    last = Cube.open(tmp_path / "g.zarr").attrs["last_run"]
    assert last["actors_lost"] == 1 and last["actors_started"] == 2 and last["units_done"] == 8
    assert 2 < last["gpu_wait_s"] < 60
    assert len(last["workers_used"]) == 2  # the first GPU worker, then its replacement


@pytest.mark.timeout(300)
def test_no_gpu_worker_comes_back_clear_error_units_stay_pending(tmp_path):
    with GEEEmulator(seed=0, latency_s=0.05) as emu, dask_processes(n_gpu=1, n_fetch=1) as (addr, procs):
        opts = {"api_url": emu.url, "credentials": "anonymous", "project": "p"}
        on_unit, killed = _kill_gpu_after_first_unit(procs)
        t0 = time.monotonic()
        with pytest.raises(RsEmbedError, match=r"no worker declares the GPU resource after waiting 3 s"):
            run_campaign(_gdf(32), tmp_path / "t.zarr", scales=[10], temporal=WINDOW, model=TINY,
                         backend="gee", gee_options=opts, client=addr, chunk_size=4, progress=False,
                         id_column="site", on_unit=on_unit, gpu_wait_s=3, max_in_flight=2)
        assert 3 <= time.monotonic() - t0 < 60
    counts = Cube.open(tmp_path / "t.zarr").status_counts()
    assert counts["failed"] == 0 and counts["pending"] > 0 and counts["ok"] >= 4
