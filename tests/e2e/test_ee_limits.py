"""Earth Engine limits hold across the cluster: requests per second and requests in flight (3 fetch workers)."""

import geopandas as gpd
import numpy as np
import pytest

from rsembed_dask.campaign.run import run_campaign
from rsembed_dask.emulator import GEEEmulator
from rsembed_dask.specs import ModelSpec, TemporalSpec
from rsembed_dask.store.cube import OK, Cube

from ..conftest import dask_processes

WINDOW = TemporalSpec.range("2022-01-01", "2022-02-01")
TINY = ModelSpec("test-tiny", device="cpu")


@pytest.mark.timeout(400)
def test_rate_and_concurrency_bounds_hold_across_three_fetch_workers(tmp_path):
    rng = np.random.default_rng(7)
    n = 160  # spread out: one request per sample
    gdf = gpd.GeoDataFrame(geometry=gpd.points_from_xy(3 + rng.uniform(0, 3, n), 31 + rng.uniform(0, 3, n)),
                           crs="EPSG:4326")
    with GEEEmulator(seed=0, latency_s=0.05) as emu, dask_processes(n_gpu=1, n_fetch=3) as (addr, _):
        opts = {"api_url": emu.url, "credentials": "anonymous", "project": "p"}
        ds = run_campaign(gdf, tmp_path / "c.zarr", scales=[10], temporal=WINDOW, model=TINY, backend="gee",
                          gee_options=opts, client=addr, chunk_size=8, progress=False,
                          ee_requests_per_s=20, ee_concurrency=6)
        per_second = emu.traffic.per_second()
        peak_in_flight = emu.traffic.peak_in_flight
        sent = emu.stats.as_dict()["compute_pixels"]
    assert (ds.status.values == OK).all()
    assert sum(per_second.values()) == sent > 100
    # Never over the bound in any second of the emulator's clock (paced at 90 % of it).
    assert max(per_second.values()) <= 20, sorted(per_second.items())
    assert peak_in_flight <= 6
    workers = Cube.open(tmp_path / "c.zarr").attrs["last_run"]["workers"]
    assert len(workers) == 1
