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
    from rsembed_dask.explore.notebook import similar
    from rsembed_dask.store.open import nearest_sample

    assert nearest_sample(ds, 3.1, 31.1) == "s9"
    found = similar(url, "s5", k=3, scale=20.0)  # a URL where a cube goes
    assert len(found) == 3 and found.attrs["query_sample"] == "s5"


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


def _tree_bytes(root):
    import hashlib
    import os

    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            with open(os.path.join(d, f), "rb") as fh:
                out[os.path.relpath(os.path.join(d, f), root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.mark.timeout(300)
@pytest.mark.parametrize("change", ["update", "append", "repair"])
def test_a_failing_preflight_leaves_the_cube_byte_for_byte(tmp_path, client, change):
    """Issue 22.6: --update, --append and --repair run the preflight before touching the cube."""
    import os

    import shapely

    from rsembed_dask.campaign.run import run_campaign
    from rsembed_dask.emulator import GEEEmulator
    from rsembed_dask.errors import ConfigurationError
    from rsembed_dask.providers.gee import GEEProvider

    from ..conftest import FAST_RETRY
    from .test_pipeline import TINY, WINDOW, _points

    gdf = _points(12, seed=4)
    out = tmp_path / "c.zarr"
    kw = dict(scales=[10], temporal=WINDOW, model=TINY, client=client, chunk_size=4, progress=False)
    run_campaign(gdf, out, backend="emulator", **kw)
    if change == "update":
        gdf.loc[gdf.index[:2], "geometry"] = gdf.geometry.iloc[:2].apply(
            lambda p: shapely.affinity.translate(p, 0.01, 0.0))
    elif change == "append":
        import pandas as pd

        gdf = pd.concat([gdf, _points(3, seed=9)], ignore_index=True)  # ids 12, 13, 14 are new
    else:
        os.remove(out / "embedding" / "c" / "1" / "0" / "0")
    before = _tree_bytes(out)
    with GEEEmulator() as emu:
        emu.auth = "403"  # the Earth Engine preflight is refused
        provider = GEEProvider(api_url=emu.url, credentials="anonymous", project="p", retry=FAST_RETRY)
        with pytest.raises(ConfigurationError, match="HTTP 403"):
            run_campaign(gdf, out, backend=provider, **{change: True}, **kw)
        assert emu.stats.as_dict()["compute_pixels"] == 0
    assert _tree_bytes(out) == before
    ds = run_campaign(gdf, out, backend="emulator", **{change: True}, **kw)  # the same, checks passing
    assert (ds.status.values == OK).all() and ds.sizes["sample"] == len(gdf)


SECRET = "s3cr3t-never-written-0123456789"


@pytest.mark.timeout(300)
def test_credentials_are_never_written(s3_bucket, s3_server, client, tmp_path, monkeypatch, caplog):
    """Keys given as storage options reach the workers but no attribute, STAC, GeoParquet or log."""
    import logging
    import os

    import obstore

    from rsembed_dask.campaign.run import run_campaign
    from rsembed_dask.store.geoparquet import export_geoparquet
    from rsembed_dask.store.stac import write_stac

    from .test_pipeline import TINY, WINDOW, _points

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-but-moto-takes-any")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    options = {"access_key_id": "KEYID-never-written", "secret_access_key": SECRET}
    url = f"{s3_bucket}/secret.zarr"
    caplog.set_level(logging.DEBUG, logger="rsembed_dask")
    ds = run_campaign(_points(8, seed=2), url, scales=[10], temporal=WINDOW, model=TINY, backend="emulator",
                      client=client, chunk_size=4, progress=False, storage_options=options)
    assert (ds.status.values == OK).all()
    loc = StoreLocation.parse(url, options)
    export_geoparquet(loc, loc.parent().child("e.parquet"))
    write_stac(loc, tmp_path / "stac")
    written = b""
    for batch in obstore.list(loc.parent().object_store()):
        for meta in batch:
            written += bytes(obstore.get(loc.parent().object_store(), meta["path"]).bytes())
    for d, _, files in os.walk(tmp_path / "stac"):
        for f in files:
            written += open(os.path.join(d, f), "rb").read()
    assert len(written) > 1000
    for secret in (SECRET, "KEYID-never-written"):
        assert secret.encode() not in written
        assert secret not in caplog.text and secret not in repr(loc) and secret not in str(ds.attrs)


@pytest.mark.timeout(300)
def test_resume_of_a_finished_cube_in_a_bucket_costs_about_one_request_per_unit(s3_bucket, s3_server):
    """Status read once (concurrently), no listing of chunks, no id or geometry read."""
    import zarr

    from rsembed_dask.campaign.run import plan_campaign, run_campaign

    from .test_pipeline import TINY, WINDOW, _points

    gdf = _points(600, seed=1)
    url = f"{s3_bucket}/many.zarr"
    kw = dict(scales=[10, 20, 40], temporal=WINDOW, model=TINY, chunk_size=4)
    spec, table, cube, units = plan_campaign(gdf, url, **kw)
    zarr.open_array(StoreLocation.parse(url).child("status").zarr_store(), mode="r+")[...] = OK  # "finished"
    before = len(s3_server.requests)
    ds = run_campaign(gdf, url, backend="emulator", progress=False, **kw)  # no cluster: nothing to do
    seen = s3_server.requests[before:]
    per_unit = len(seen) / len(units)
    print(f"resume requests per unit: {per_unit:.3f} ({len(seen)} requests, {len(units)} units)")
    assert (ds.status.values == OK).all()
    assert not any(m == "HEAD" and "/c/" in p for m, p in seen)  # no HEAD per chunk
    assert sum(1 for m, p in seen if "/status/c/" in p) == len(units)  # each status chunk read once
    assert not any("/geometry/c/" in p for _, p in seen)  # no geometry read (digests compared)
    lists = [p for _, p in seen if "list-type" in p]
    assert not any(name in p for p in lists for name in ("embedding", "status", "error", "input_res_m"))
    assert per_unit <= 1.2


@pytest.mark.timeout(300)
def test_tiling_store_in_a_bucket(s3_bucket, client, tmp_path):
    """A tiling campaign into a bucket: sample cubes, zone grids, resume, verify, quicklook."""
    import shapely

    from rsembed_dask.campaign.run import run_campaign
    from rsembed_dask.explore.geotiff import grid_quicklook
    from rsembed_dask.sampling.tiling import tile_aoi
    from rsembed_dask.store.verify import verify_tiling_store

    from .test_pipeline import TINY, WINDOW

    tiling = tile_aoi(shapely.box(3.0, 31.0, 3.08, 31.05), scales=[20])
    url = f"{s3_bucket}/tiles.zarr"
    kw = dict(temporal=WINDOW, model=TINY, backend="emulator", client=client, progress=False)
    local = run_campaign(tiling, tmp_path / "tiles.zarr", **kw)
    tree = run_campaign(tiling, url, **kw)
    np.testing.assert_array_equal(tree["samples/20m"].to_dataset().embedding.values,
                                  local["samples/20m"].to_dataset().embedding.values)
    again = run_campaign(tiling, url, **kw)  # resumes: nothing to do
    assert (again["samples/20m"].to_dataset().status.values == OK).all()
    assert verify_tiling_store(url) == []
    written = grid_quicklook(url, 20, tmp_path / "ql", png=False)
    assert written and all(p.endswith(".tif") for p in written)


def test_cli_storage_options_and_bad_locations_are_one_line_errors(capsys):
    from rsembed_dask.cli import main

    assert main(["inspect", "s3://bucket/c.zarr", "--storage-option", "no-equals-sign"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--storage-option" in err[0] and "KEY=VALUE" in err[0]
    assert main(["inspect", "ftp://host/c.zarr"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'ftp'" in err[0] and "s3://" in err[0]
