"""Coalesced fetches through the real ee client on the emulator: one request per neighbourhood,
bit-identical pixels, failures marked per request."""


import geopandas as gpd
import numpy as np
import pytest

from rsembed_dask.store.cube import FAILED, NO_DATA, OK
from rsembed_dask.errors import TransientProviderError
from rsembed_dask.providers.coalesce import plan_requests
from rsembed_dask.sampling import build_sample_table, work_units
from rsembed_dask.specs import CampaignSpec, ModelSpec, TemporalSpec
from rsembed_dask.campaign.tasks import fetch_unit

from ..conftest import FAST_RETRY

WINDOW = TemporalSpec.range("2022-01-01", "2022-02-01")

SPEC = CampaignSpec(temporal=WINDOW, model=ModelSpec("test-tiny", device="cpu"), scales=(10.0,), chunk_size=64)


def _unit(extra_far: bool = False):
    """16 points on a 1.5 km lattice (224 px chips at 10 m overlap), optionally plus far ones."""
    lon0, lat0, dlon, dlat = 3.0, 31.2, 0.0157, 0.0135
    lons = [lon0 + dlon * (k % 4) for k in range(16)]
    lats = [lat0 + dlat * (k // 4) for k in range(16)]
    if extra_far:
        lons += [3.5, 6.2]  # 47 km east in the same zone; and in zone 32
        lats += [31.3, 31.2]
    gdf = gpd.GeoDataFrame({"site": [f"s{k}" for k in range(len(lons))]},
                           geometry=gpd.points_from_xy(lons, lats), crs="EPSG:4326")
    table = build_sample_table(gdf, id_column="site")
    (unit,) = work_units(len(table), [10.0], SPEC.chunk_size)
    grids = [table.footprint(i, unit.scale_m, SPEC.model.image_size).grid for i in range(len(table))]
    return table, unit, grids


def test_coalesced_fetch_is_bit_identical_with_fewer_requests(provider, emu):
    table, unit, grids = _unit(extra_far=True)
    n = len(table)
    plan = plan_requests(grids, 3)
    assert len(plan) == 3 and len(plan) < n  # the dense block, the far point, the other zone

    single = fetch_unit(provider, table, unit, SPEC, threads=4, coalesce=False)
    assert emu.stats.as_dict()["compute_pixels"] == n
    assert single.requests["planned"] == n and single.requests["reused"] == 0

    emu.stats.reset()
    merged = fetch_unit(provider, table, unit, SPEC, threads=4)  # coalesce=True is the default
    assert emu.stats.as_dict()["compute_pixels"] == len(plan)
    assert merged.requests["planned"] == merged.requests["sent"] == len(plan)
    assert merged.requests["reused"] == n - len(plan)

    assert (single.status == OK).all() and (merged.status == OK).all()
    np.testing.assert_array_equal(merged.valid_fraction, single.valid_fraction)
    assert merged.rois == single.rois and merged.errors == single.errors
    for i, (a, b) in enumerate(zip(single.images, merged.images)):
        assert a.shape == b.shape == (3, 224, 224) and a.dtype == b.dtype == np.uint8  # shipped as uint8
        diff = int(np.abs(a.astype(np.int32) - b.astype(np.int32)).max())
        assert np.array_equal(a, b), f"sample {i}: max abs difference {diff} DN, " \
                                     f"{int((a != b).sum())} of {a.size} values differ"


def test_no_imagery_marks_every_member_of_the_request(provider, emu):
    table, unit, grids = _unit()
    assert len(plan_requests(grids, 3)) == 1
    spec = SPEC.replace(temporal=TemporalSpec.range("2015-01-01", "2015-02-01"))
    px = fetch_unit(provider, table, unit, spec)
    assert emu.stats.as_dict()["compute_pixels"] == 1
    assert (px.status == NO_DATA).all() and all(img is None for img in px.images)
    assert all("no scene matches" in e for e in px.errors)
    assert px.requests["planned"] == 1 and px.requests["reused"] == len(table) - 1


def test_permanent_error_marks_only_that_requests_members(provider, emu):
    table, unit, grids = _unit(extra_far=True)
    plan = plan_requests(grids, 3)
    block = next(k for k, r in enumerate(plan) if len(r.members) > 1)
    assert block < len(plan) - 1  # some request after the block succeeds
    # threads=1: requests go out in plan order; those up to the dense block fail
    emu.fail_next(block + 1, "400")
    px = fetch_unit(provider, table, unit, SPEC, threads=1)
    failed = {i for r in plan[:block + 1] for i in r.members}
    assert len(plan[block].members) == 16
    for i in range(len(table)):
        if i in failed:
            assert px.status[i] == FAILED and "Injected permanent failure" in px.errors[i]
            assert px.images[i] is None and px.valid_fraction[i] == 0
        else:
            assert px.status[i] == OK and px.images[i] is not None and px.errors[i] == ""
    assert emu.stats.as_dict()["compute_pixels"] == len(plan)
    assert px.requests["failed"] == block + 1 and px.requests["retried"] == 0


def test_transient_failure_of_a_coalesced_request_fails_the_task(provider, emu):
    table, unit, _ = _unit()
    emu.fail_next(FAST_RETRY.max_retries + 1, "5xx")
    with pytest.raises(TransientProviderError, match="gave up"):
        fetch_unit(provider, table, unit, SPEC)
    assert provider.stats.as_dict()["reused"] == 0
