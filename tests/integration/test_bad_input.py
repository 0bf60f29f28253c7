"""The "what happens when" catalogue: each bad input gets a clear error (or a recorded skip)."""

import geopandas as gpd
import numpy as np
import pytest
import shapely
from distributed import Client

from rsembed_dask.api import get_embedding
from rsembed_dask.cluster.local import local_cluster
from rsembed_dask.errors import CubeError, ModelError, SpecError, SpecMismatchError
from rsembed_dask.campaign.run import plan_campaign, run_campaign
from rsembed_dask.specs import ModelSpec, PointBuffer, TemporalSpec

WINDOW = TemporalSpec.range("2022-01-01", "2022-02-01")
TINY = ModelSpec("test-tiny", device="cpu")


def _pts(lons, lats, crs="EPSG:4326", **cols):
    return gpd.GeoDataFrame(cols, geometry=gpd.points_from_xy(lons, lats), crs=crs)


def _plan(gdf, tmp_path, **kw):
    args = dict(scales=[10], temporal=WINDOW, model=TINY)
    args.update(kw)
    return plan_campaign(gdf, tmp_path / "c.zarr", **args)


def _finish_a_unit(cube):
    """Record the first unit at the first scale as no_data: a cube with a finished cell keeps its spec."""
    from rsembed_dask.store.cube import NO_DATA

    n = cube.unit_stop(0)
    cube.write_unit(0, n, 0, embedding=np.full((n, cube.embed_dim), np.nan), status=np.full(n, NO_DATA),
                    input_res_m=np.full(n, np.nan), valid_fraction=np.zeros(n), error=["no scene"] * n)


@pytest.mark.parametrize("make, field, words", [
    (lambda: gpd.GeoDataFrame(geometry=[], crs="EPSG:4326"), "gdf", "at least one"),
    (lambda: gpd.GeoDataFrame(geometry=[shapely.Point(3, 31)]), "crs", "CRS"),
    (lambda: gpd.GeoDataFrame(geometry=[shapely.Point(3, 31), shapely.Polygon([(0, 0), (1, 1), (1, 0), (0, 1)])],
                              crs="EPSG:4326"), "geometry", "valid"),
    (lambda: gpd.GeoDataFrame(geometry=[shapely.Point(3, 31), shapely.Polygon()], crs="EPSG:4326"), "geometry", "empty"),
    (lambda: gpd.GeoDataFrame(geometry=[shapely.Point(3, 31), None], crs="EPSG:4326"), "geometry", "missing geometry"),
    (lambda: _pts([3, np.nan], [31, 31]), "geometry", "finite coordinates"),
    (lambda: _pts([3, 3], [31, 89]), "lat", "[-80, 84]"),
    (lambda: _pts([3, 200], [31, 31]), "lon", "[-180, 180]"),
    (lambda: _pts([3, 4], [31, 31], site=["a", "a"]), "id", "duplicate"),
])
def test_bad_samples_are_refused_naming_the_field(tmp_path, make, field, words):
    with pytest.raises(SpecError) as info:
        _plan(make(), tmp_path, id_column="site" if "site" in make().columns else None)
    msg = str(info.value)
    assert field in msg and words.lower() in msg.lower()
    assert not (tmp_path / "c.zarr").exists()  # nothing created for refused input


def test_bad_rows_can_be_skipped_and_are_recorded(tmp_path):
    gdf = _pts([3, 3.1, 200], [31, 31, 31], site=["a", "b", "c"])
    spec, table, cube, units = _plan(gdf, tmp_path, id_column="site", on_invalid="skip")
    assert sorted(table.ids.tolist()) == ["a", "b"]
    skipped = cube.attrs["skipped_rows"]
    assert skipped[0]["id"] == "c" and "lon" in skipped[0]["reason"]


@pytest.mark.parametrize("missing", [np.nan, None])
def test_skipped_rows_with_a_missing_id_are_recorded_json_safe_and_the_cube_resumes(tmp_path, missing):
    gdf = _pts([3, 3.1, 3.2, 300], [31, 31, 31, 31], site=["a", missing, "c", "d"])
    for _ in range(2):  # created, then resumed (it was refused on every rerun before)
        spec, table, cube, units = _plan(gdf, tmp_path, id_column="site", on_invalid="skip")
        assert sorted(table.ids.tolist()) == ["a", "c"]
        skipped = cube.attrs["skipped_rows"]
        assert skipped[0] == {"id": None, "reason": "missing id (input row 1)"}
        assert skipped[1]["id"] == "d" and "longitude" in skipped[1]["reason"]


def test_scales_in_another_order_resume_in_the_cube_order(tmp_path):
    _finish_a_unit(_plan(_pts([3, 3.1], [31, 31]), tmp_path, scales=[10, 20])[2])
    spec, table, cube, units = _plan(_pts([3, 3.1], [31, 31]), tmp_path, scales=[20, 10])
    assert spec.scales == cube.spec.scales == (10.0, 20.0) and cube.spec.spec_hash() == cube.attrs["spec_hash"]
    assert [u.scale_m for u in units] == [10.0, 20.0]
    # A cube made before with unsorted scales resumes too, in its own order.
    (tmp_path / "old").mkdir()  # a cube's folder must exist (the writer lock refuses a missing one)
    spec, table, cube, units = _plan(_pts([3, 3.1], [31, 31]), tmp_path / "old", scales=[40, 10])
    spec, table, cube, units = _plan(_pts([3, 3.1], [31, 31]), tmp_path / "old", scales=[10, 40])
    assert spec.scales == (40.0, 10.0) and [u.scale_m for u in units] == [40.0, 10.0]
    with pytest.raises(SpecMismatchError, match="scales"):  # other scales are still another campaign
        _plan(_pts([3, 3.1], [31, 31]), tmp_path, scales=[10, 40])


def test_polygon_too_large_for_one_request(tmp_path):
    huge = gpd.GeoDataFrame(geometry=[shapely.box(3, 31, 3.01, 31.01), shapely.box(0, 40, 1.5, 41)], crs="EPSG:4326")
    with pytest.raises(SpecError, match="48 MiB"):
        _plan(huge, tmp_path, scales=[10, 40])
    spec, table, cube, units = _plan(huge, tmp_path, scales=[10, 40], on_invalid="skip")
    assert len(table) == 1 and "too large" in cube.attrs["skipped_rows"][0]["reason"]


@pytest.mark.parametrize("scales", [[0], [-10], [1e9], [10, 10], []])
def test_bad_scales(tmp_path, scales):
    with pytest.raises(SpecError, match="scales"):
        _plan(_pts([3], [31]), tmp_path, scales=scales)


def test_end_before_start():
    with pytest.raises(SpecError, match="TemporalSpec.end"):
        TemporalSpec.range("2022-02-01", "2022-01-01")


def test_unknown_model_id(tmp_path):
    with pytest.raises(ModelError, match="test-nonexistent"):
        _plan(_pts([3], [31]), tmp_path, model=ModelSpec("test-nonexistent"))
    with pytest.raises(ModelError, match="/no/such/weights"):
        _plan(_pts([3], [31]), tmp_path, model=ModelSpec("/no/such/weights"))


def test_unreadable_local_weights(tmp_path, provider):
    from rsembed_dask.embed.weights import load_scalemae

    wrapper, _ = load_scalemae(TINY)
    wrapper.save_pretrained(tmp_path / "w")
    (tmp_path / "w" / "model.safetensors").write_bytes(b"not a safetensors file")
    bad = ModelSpec(str(tmp_path / "w"), device="cpu")
    cluster = local_cluster(n_gpus=0, n_fetch_workers=0, processes=False, dashboard_address=None)
    with Client(cluster) as c, pytest.raises(ModelError, match="model.safetensors"):
        run_campaign(_pts([3], [31]), tmp_path / "c.zarr", scales=[10], temporal=WINDOW, model=bad,
                     backend=provider, client=c, progress=False)
    cluster.close()


def test_output_path_is_a_file(tmp_path):
    (tmp_path / "c.zarr").write_text("I am a file")
    with pytest.raises(CubeError, match="c.zarr"):
        _plan(_pts([3], [31]), tmp_path)


def test_output_path_not_writable(tmp_path, monkeypatch):
    import os

    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p).startswith(str(tmp_path)) else real(p, mode, **kw))
    with pytest.raises(CubeError, match="writ"):
        _plan(_pts([3], [31]), tmp_path)


def test_existing_cube_with_another_spec(tmp_path):
    _finish_a_unit(_plan(_pts([3], [31]), tmp_path)[2])
    with pytest.raises(SpecMismatchError, match="temporal.end: stored '2022-02-01', given '2022-03-01'"):
        _plan(_pts([3], [31]), tmp_path, temporal=TemporalSpec.range("2022-01-01", "2022-03-01"))


def test_window_without_imagery_is_no_data(provider):
    from rsembed_dask.errors import NoImageryError

    with pytest.raises(NoImageryError, match="no scene matches"):
        get_embedding(spatial=PointBuffer(3, 31, 320), temporal=TemporalSpec.range("2016-01-01", "2016-02-01"),
                      backend=provider, model=TINY)


@pytest.mark.parametrize("backend", ["foo", "local:/no/such/rasters", 42])
def test_a_bad_backend_is_refused_before_the_cube_or_a_cluster(tmp_path, backend):
    with pytest.raises(SpecError, match="backend"):
        run_campaign(_pts([3], [31]), tmp_path / "c.zarr", scales=[10], temporal=WINDOW, model=TINY,
                     backend=backend, client="tcp://127.0.0.1:1", progress=False)
    assert not (tmp_path / "c.zarr").exists()
