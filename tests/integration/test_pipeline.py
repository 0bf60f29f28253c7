"""Campaigns end to end: in-process cluster, real multi-process cluster, resume, actor loss."""


import geopandas as gpd
import numpy as np
import pytest
import shapely

from rsembed_dask.api import get_embeddings_batch
from rsembed_dask.store.cube import NO_DATA, OK, Cube
from rsembed_dask.errors import NoImageryWarning, SpecMismatchError
from rsembed_dask.embed.model import ScaleMAEEmbedder
from rsembed_dask.campaign.run import run_campaign
from rsembed_dask.specs import BBox, ModelSpec, PointBuffer, TemporalSpec


WINDOW = TemporalSpec.range("2022-01-01", "2022-02-01")
TINY = ModelSpec("test-tiny", device="cpu")


def _points(n, lon0=3.0, lat0=31.0, seed=0):
    rng = np.random.default_rng(seed)
    return gpd.GeoDataFrame({"site": [f"p{seed}-{i}" for i in range(n)]},
                            geometry=gpd.points_from_xy(lon0 + rng.uniform(0, .3, n), lat0 + rng.uniform(0, .3, n)),
                            crs="EPSG:4326")


def test_cube_equals_get_embedding(tmp_path, client, provider):
    # Points on both sides of the 31/32 UTM seam and lon/lat boxes; ids from a column.
    pts = gpd.GeoDataFrame({"site": ["w", "e", "x"]}, crs="EPSG:4326",
                           geometry=[shapely.Point(5.999, 45.0), shapely.Point(6.001, 45.0), shapely.Point(3.2, 31.1)])
    boxes = gpd.GeoDataFrame({"site": ["box-a", "box-b"]}, crs="EPSG:4326",
                             geometry=[shapely.box(3.0, 31.2, 3.03, 31.21), shapely.box(6.1, 45.1, 6.11, 45.13)])
    gdf = gpd.GeoDataFrame(np.concatenate([pts.values, boxes.values]), columns=["site", "geometry"],
                           geometry="geometry", crs="EPSG:4326")
    ds = run_campaign(gdf, tmp_path / "c.zarr", scales=[10, 40], temporal=WINDOW, model=TINY,
                      backend=provider, client=client, chunk_size=2, id_column="site", progress=False)
    assert (ds.status.values == OK).all()
    assert sorted(ds.sample.values.tolist()) == sorted(gdf.site)
    embedder = ScaleMAEEmbedder(TINY)
    for scale in (10, 40):
        spatials = [PointBuffer(g.x, g.y, 224 * scale / 2) for g in pts.geometry] + \
                   [BBox(*g.bounds) for g in boxes.geometry]
        single = get_embeddings_batch(spatials=spatials, temporal=WINDOW, backend=provider, model=embedder,
                                      sensor=None if scale == 10 else __import__("rsembed_dask").SensorSpec(scale_m=scale))
        for sid, emb in zip(gdf.site, single):
            cell = ds.embedding.sel(sample=sid, scale=scale).values
            np.testing.assert_allclose(cell, emb.data, rtol=1e-4, atol=1e-5, err_msg=f"{sid} @ {scale} m")
            assert float(ds.input_res_m.sel(sample=sid, scale=scale)) == pytest.approx(emb.meta["input_res_m"])
    assert ds.lon.sel(sample="w") == pytest.approx(5.999)
    attrs = Cube.open(tmp_path / "c.zarr").attrs
    assert attrs["request_account"]["sent"] == 10 and attrs["last_run"]["units_done"] == 6


def test_polygons_in_a_projected_crs(tmp_path, client, provider):
    polys = gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 3000, 1000).buffer(50),
                                       shapely.box(5000, 5000, 6000, 7000)], crs="EPSG:2154")
    polys = polys.set_geometry(polys.translate(650000, 6860000))  # around Paris in Lambert-93
    ds = run_campaign(polys, tmp_path / "p.zarr", scales=[20], temporal=WINDOW, model=TINY, backend=provider,
                      client=client, progress=False)
    assert (ds.status.values == OK).all() and np.isfinite(ds.embedding.values).all()
    assert ds.sample.values.tolist() == [0, 1] or sorted(ds.sample.values.tolist()) == [0, 1]
    assert 48 < float(ds.lat[0]) < 49.5 and 1.5 < float(ds.lon[0]) < 3.5


def test_no_imagery_is_recorded_not_fatal(tmp_path, client, provider):
    with pytest.warns(NoImageryWarning, match="no sample found imagery"):
        ds = run_campaign(_points(5), tmp_path / "n.zarr", scales=[10],
                          temporal=TemporalSpec.range("2015-01-01", "2015-02-01"),
                          model=TINY, backend=provider, client=client, progress=False)
    assert (ds.status.values == NO_DATA).all()
    assert np.isnan(ds.embedding.values).all()
    assert "no scene matches" in str(ds.error.values[0, 0])


class _Stop(Exception):
    """Raised from a test's on_unit callback to interrupt a campaign."""


def test_resume_runs_only_missing_units_and_refuses_another_spec(tmp_path, client, provider):
    gdf, out = _points(24), tmp_path / "r.zarr"
    seen = []

    def stop_after_three(summary):
        seen.append(summary.unit)
        if len(seen) == 3:
            raise _Stop

    with pytest.raises(_Stop):
        run_campaign(gdf, out, scales=[10, 20], temporal=WINDOW, model=TINY, backend=provider, client=client,
                     chunk_size=4, progress=False, on_unit=stop_after_three, max_in_flight=1)
    status = Cube.open(out).status_array()
    done_before = int((status == OK).sum())
    assert 0 < done_before < status.size
    second = []
    ds = run_campaign(gdf, out, scales=[10, 20], temporal=WINDOW, model=TINY, backend=provider, client=client,
                      chunk_size=4, progress=False, on_unit=lambda s: second.append(s.unit))
    assert (ds.status.values == OK).all()
    assert not set(second) & set(seen)
    assert len(second) + len(seen) == 12
    # A third run has nothing to do: it keeps the request account of the run that worked.
    account = Cube.open(out).attrs["request_account"]
    assert account["sent"] > 0
    run_campaign(gdf, out, scales=[10, 20], temporal=WINDOW, model=TINY, backend=provider, client=client,
                 chunk_size=4, progress=False)
    assert Cube.open(out).attrs["request_account"] == account
    with pytest.raises(SpecMismatchError, match="model.model_id"):
        run_campaign(gdf, out, scales=[10, 20], temporal=WINDOW, model=ModelSpec("test-small"),
                     backend=provider, client=client, chunk_size=4, progress=False)


def test_worker_lists_do_not_trust_the_clients_cached_identity(client, monkeypatch):
    """The client's periodic refresh caches an identity without per-worker details and may
    overwrite a fresh one between fetch and return: live workers then looked gone, and a
    campaign re-ran the units of a healthy actor. Model that race: the refresh wins."""
    from distributed import Client

    from rsembed_dask.cluster.local import embed_workers, fetch_workers

    async def refresh_without_workers(self, n_workers=0):
        # What the periodic refresh caches; it returns it too, as the real method does (since
        # distributed 2026.11 a sync ``scheduler_info()`` returns this value, not the cache).
        self._scheduler_identity = {**self._scheduler_identity, "workers": {}}
        return self._scheduler_identity

    monkeypatch.setattr(Client, "_update_scheduler_info", refresh_without_workers)
    assert client.scheduler_info()["workers"] == {}  # what the cache says
    assert len(embed_workers(client)) == 1 and len(fetch_workers(client)) == 1
