"""Cubes in a bucket: a real S3 server on loopback (moto), reached with the standard AWS_* variables."""

import numpy as np
import pytest

from rsembed_dask.errors import CubeError, SpecError
from rsembed_dask.store.cube import OK, Cube
from rsembed_dask.store.location import StoreLocation
from rsembed_dask.store.open import open_cube, probe_store
from rsembed_dask.specs import CampaignSpec, ModelSpec, OutputSpec, TemporalSpec


def _spec(chunk=4):
    return CampaignSpec(temporal=TemporalSpec.year(2022), model=ModelSpec("test-tiny", device="cpu"),
                        output=OutputSpec.pooled(), scales=(10.0, 20.0), chunk_size=chunk)


def _inputs(n):
    from shapely.geometry import Point

    lon = np.linspace(3.0, 3.1, n)
    lat = np.linspace(31.0, 31.1, n)
    return dict(ids=np.array([f"s{i}" for i in range(n)], dtype=object), lon=lon, lat=lat,
                geohash=np.array(["s0000000"] * n, dtype=object), wkb=[Point(x, y).wkb for x, y in zip(lon, lat)])


def test_location_parses_and_refuses():
    assert StoreLocation.parse("file:///tmp/x.zarr") == StoreLocation("/tmp/x.zarr")
    loc = StoreLocation.parse("s3://bkt/a/b.zarr/", {"secret_access_key": "hush"})
    assert loc.url == "s3://bkt/a/b.zarr" and "hush" not in repr(loc) + str(loc)
    assert loc.child("status", "c").url == "s3://bkt/a/b.zarr/status/c"
    for bad in ("http://x/y.zarr", "s3://", "ftp://h/p"):
        with pytest.raises(SpecError, match="store"):
            StoreLocation.parse(bad)
    with pytest.raises(SpecError, match="storage_options"):
        StoreLocation.parse("/tmp/x.zarr", {"region": "x"})


def test_cube_in_a_bucket_writes_opens_and_resumes(s3_bucket):
    url = f"{s3_bucket}/cubes/c.zarr"
    assert probe_store(url) is None
    spec = _spec()
    cube = Cube.create_or_open(url, spec=spec, embed_dim=8, **_inputs(10))
    assert cube.location.url == url and not cube.location.local
    for start in range(0, 10, 4):
        stop = cube.unit_stop(start)
        n = stop - start
        for si in range(2):
            cube.write_unit(start, stop, si, embedding=np.full((n, 8), start + si, "float32"),
                            status=np.full(n, OK), input_res_m=np.ones(n), valid_fraction=np.ones(n),
                            error=[""] * n)
    again = Cube.create_or_open(url, spec=spec, embed_dim=8, **_inputs(10))
    assert again.status_counts()["ok"] == 20
    ds = open_cube(url)
    assert ds.sizes["sample"] == 10 and (ds.status.values == OK).all()
    assert float(ds.embedding.sel(sample="s5", scale=20.0).values[0]) == 5.0
    with pytest.raises(CubeError, match="no cube"):
        open_cube(f"{s3_bucket}/nothing.zarr")


def test_campaign_into_a_bucket_equals_a_local_one(s3_bucket, client, tmp_path, s3_server):
    from rsembed_dask.campaign.run import run_campaign

    from .test_pipeline import TINY, WINDOW, _points

    gdf = _points(24, seed=7)
    kw = dict(scales=[10, 20], temporal=WINDOW, model=TINY, backend="emulator", client=client, chunk_size=4,
              progress=False)
    local = run_campaign(gdf, tmp_path / "local.zarr", **kw)
    url = f"{s3_bucket}/c.zarr"
    remote = run_campaign(gdf, url, **kw)
    assert (remote.status.values == OK).all()
    np.testing.assert_array_equal(remote.embedding.values, local.embedding.values)
    before = len(s3_server.requests)
    again = run_campaign(gdf, url, **kw)
    n_units = 6 * 2
    print("resume requests per unit:", (len(s3_server.requests) - before) / n_units)
    assert (again.status.values == OK).all()
