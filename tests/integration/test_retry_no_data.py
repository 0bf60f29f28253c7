"""--retry-no-data re-runs the no_data cells (only those without --retry-failed) and never downgrades an ok cell."""

import geopandas as gpd
import numpy as np

from rsembed_dask.campaign.run import run_campaign
from rsembed_dask.emulator import Faults, GEEEmulator
from rsembed_dask.providers import GEEProvider
from rsembed_dask.specs import ModelSpec, TemporalSpec
from rsembed_dask.store.cube import FAILED, NO_DATA, OK, Cube
from rsembed_dask.store.verify import verify_cube

from ..conftest import FAST_RETRY

WINDOW = TemporalSpec.range("2022-01-01", "2022-02-01")
TINY = ModelSpec("test-tiny", device="cpu")
#: Where no scene exists in the first run (ingestion lag, say): the last 8 samples.
HOLE = (9.9, 34.9, 10.2, 35.2)


def _gdf():
    rng = np.random.default_rng(3)
    lon = np.r_[3 + rng.uniform(0, 1, 16), 10 + rng.uniform(0, .1, 8)]
    lat = np.r_[31 + rng.uniform(0, 1, 16), 35 + rng.uniform(0, .1, 8)]
    return gpd.GeoDataFrame(geometry=gpd.points_from_xy(lon, lat), crs="EPSG:4326")


def _run(emu, out, client, **kw):
    provider = GEEProvider(api_url=emu.url, credentials="anonymous", project="nd", retry=FAST_RETRY)
    return run_campaign(_gdf(), out, scales=[10], temporal=WINDOW, model=TINY, backend=provider,
                        client=client, chunk_size=4, progress=False, **kw)


def test_retry_no_data_reruns_only_no_data_cells_and_keeps_ok_ones(tmp_path, client):
    out = tmp_path / "c.zarr"
    with GEEEmulator(seed=0, no_coverage=[HOLE], faults=Faults(p_400=0.2)) as emu:
        first = _run(emu, out, client, coalesce=False)
    status = first.status.values[:, 0]
    no_data, failed = status == NO_DATA, status == FAILED
    assert no_data[16:].sum() >= 2 and not no_data[:16].any() and failed.any()
    assert (status[16:][~no_data[16:]] == FAILED).all() and (status[:16][~failed[:16]] == OK).all()
    ok_before = first.embedding.values[status == OK]
    with GEEEmulator(seed=0) as emu:  # the scenes are there now
        plain = _run(emu, out, client)  # a plain resume leaves no_data alone
        assert emu.stats.as_dict()["compute_pixels"] == 0
        np.testing.assert_array_equal(plain.status.values[:, 0], status)
        again = _run(emu, out, client, retry_no_data=True, coalesce=False)
        # Only the no_data cells were fetched: not the ok ones, not the failed ones.
        assert emu.stats.as_dict()["compute_pixels"] == no_data.sum()
    after = again.status.values[:, 0]
    assert (after[no_data] == OK).all() and np.isfinite(again.embedding.values[no_data]).all()
    np.testing.assert_array_equal(after[~no_data], status[~no_data])  # failed stay failed, ok stay ok
    np.testing.assert_array_equal(again.embedding.values[status == OK], ok_before)
    assert verify_cube(out) == []
    # With --retry-failed too, the failed ones run as well; nothing ok changes.
    with GEEEmulator(seed=0) as emu:
        last = _run(emu, out, client, retry_no_data=True, retry_failed=True)
    assert (last.status.values == OK).all()
    np.testing.assert_array_equal(last.embedding.values[status == OK], ok_before)
    runs = Cube.open(out).attrs["runs"]
    assert [r["ended"] for r in runs] == ["done"] * 3  # the plain resume had nothing to run: no record
