"""The cluster-wide Earth Engine bound holds for requests longer than the scheduler's lease timeout.

A ``distributed.Semaphore`` unpickled in a task never started its lease refresh, so
the scheduler took a lease back after ``lease-timeout`` while its request still ran
and let the next request in. Real `dask scheduler` / `dask worker` processes, a 2 s
lease timeout and 5 s requests: with one lease the emulator must never see two at once.
"""

import dask
import geopandas as gpd
import pytest

from rsembed_dask.store.cube import OK, Cube
from rsembed_dask.campaign.run import run_campaign
from rsembed_dask.specs import ModelSpec, TemporalSpec
from rsembed_dask.emulator import GEEEmulator

from ..conftest import dask_processes

WINDOW = TemporalSpec.range("2022-01-01", "2022-02-01")
TINY = ModelSpec("test-tiny", device="cpu")
# The scheduler, the workers (which register the semaphore) and this process all read these.
LEASE = {"distributed.scheduler.locks.lease-timeout": "2s",
         "distributed.scheduler.locks.lease-validation-interval": "100ms"}
LEASE_ENV = {"DASK_" + k.upper().replace(".", "__").replace("-", "_"): v for k, v in LEASE.items()}


def _refresh_running(limiter) -> bool:
    """In a task: bind the limiter as fetch_unit does; is its lease refresh running on this worker?"""
    import time

    limiter.register()
    sem = limiter.semaphore()
    for _ in range(50):  # started by a callback on the worker's loop
        if sem.refresh_callback.is_running():
            return True
        time.sleep(0.02)
    return False


def test_the_limiter_pickles_to_its_name_and_refreshes_on_the_worker(client):
    import pickle

    from rsembed_dask.cluster.local import ClusterSemaphore
    from rsembed_dask.errors import SpecError

    limiter = ClusterSemaphore("rsembed-test-refresh", 2)
    again = pickle.loads(pickle.dumps(limiter))
    assert (again.name, again.max_leases, again._bound) == ("rsembed-test-refresh", 2, None)
    assert client.submit(_refresh_running, limiter, pure=False).result(timeout=30)
    with pytest.raises(SpecError, match="max_leases"):
        ClusterSemaphore("x", 0)


@pytest.mark.timeout(240)
def test_one_lease_holds_for_requests_longer_than_the_lease_timeout(tmp_path):
    # Three footprints far apart: three requests of 5 s each, from two units on two fetch
    # workers (two threads each) and the GPU worker: all want to run at once.
    gdf = gpd.GeoDataFrame({"site": ["a", "b", "c"]}, crs="EPSG:4326",
                           geometry=gpd.points_from_xy([3.0, 3.6, 4.2], [31.0, 31.6, 32.2]))
    with dask.config.set(LEASE), GEEEmulator(seed=0, latency_s=5) as emu, \
            dask_processes(n_gpu=1, n_fetch=2, env=LEASE_ENV, fetch_threads=2) as (addr, _):
        opts = {"api_url": emu.url, "credentials": "anonymous", "project": "lease"}
        ds = run_campaign(gdf, tmp_path / "q.zarr", scales=[10], temporal=WINDOW, model=TINY, backend="gee",
                          gee_options=opts, client=addr, chunk_size=2, id_column="site", progress=False,
                          ee_concurrency=1, fetch_threads=2)
        stats = emu.stats.as_dict()
    assert (ds.status.values == OK).all()
    assert stats["compute_pixels"] == 3
    assert stats["concurrent_peak"] == 1, stats
    assert Cube.open(tmp_path / "q.zarr").attrs["request_account"]["sent"] == 3
