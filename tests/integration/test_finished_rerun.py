"""A plain rerun of a finished campaign on the same samples builds no sample table (issue 21)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely

import rsembed_dask.campaign.jobs as jobs_module
from rsembed_dask.campaign.run import plan_campaign, run_campaign
from rsembed_dask.errors import CubeError
from rsembed_dask.sampling import samples_digest
from rsembed_dask.specs import ModelSpec, TemporalSpec
from rsembed_dask.store.cube import OK, open_cube

WINDOW = TemporalSpec.range("2022-01-01", "2022-02-01")
TINY = ModelSpec("test-tiny", device="cpu")


def _points(n, seed=0):
    rng = np.random.default_rng(seed)
    return gpd.GeoDataFrame({"site": [f"s{seed}-{i}" for i in range(n)]},
                            geometry=gpd.points_from_xy(3 + rng.uniform(0, .3, n), 31 + rng.uniform(0, .3, n)),
                            crs="EPSG:4326")


def _files(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and "/c/" in f"/{p.relative_to(path)}"}


@pytest.fixture
def tables_built(monkeypatch):
    """Counts the sample tables the planner builds."""
    calls = []
    real = jobs_module.build_sample_table

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(jobs_module, "build_sample_table", counting)
    return calls


def test_a_rerun_of_a_finished_campaign_builds_no_table_and_changes_nothing(tmp_path, client, provider, tables_built):
    gdf, out = _points(10, seed=1), tmp_path / "c.zarr"
    args = dict(scales=[10, 40], temporal=WINDOW, model=TINY, backend=provider, client=client,
                chunk_size=4, id_column="site", progress=False)
    first = run_campaign(gdf, out, **args).load()
    assert (first.status.values == OK).all() and len(tables_built) == 1
    chunks = _files(out)
    seen = []
    again = run_campaign(gdf.copy(), out, **args, on_unit=seen.append).load()
    assert len(tables_built) == 1 and not seen  # the digest matched: no table, no unit
    assert _files(out) == chunks
    np.testing.assert_array_equal(again.embedding.values, first.embedding.values)
    # the guard still holds: a moved sample builds the table and asks for --update
    moved = gdf.copy()
    moved.loc[3, "geometry"] = shapely.Point(moved.geometry[3].x + 0.01, moved.geometry[3].y)
    with pytest.raises(CubeError, match="--update"):
        run_campaign(moved, out, **args)
    assert len(tables_built) == 2
    # plan_campaign returns its table, finished or not
    spec, table, cube, units = plan_campaign(gdf, out, scales=[10, 40], temporal=WINDOW, model=TINY,
                                             chunk_size=4, id_column="site")
    assert table is not None and len(table) == 10 and len(tables_built) == 3


def test_a_missing_chunk_of_a_finished_cube_is_still_found_and_rerun(tmp_path, client, provider, tables_built):
    gdf, out = _points(8, seed=2), tmp_path / "c.zarr"
    args = dict(scales=[10], temporal=WINDOW, model=TINY, backend=provider, client=client,
                chunk_size=4, id_column="site", progress=False)
    first = run_campaign(gdf, out, **args).load()
    lost = sorted((out / "embedding" / "c").rglob("*"))
    lost = [p for p in lost if p.is_file()][-1]
    lost.unlink()  # damage from outside: a data chunk is gone, its status still says ok
    seen = []
    again = run_campaign(gdf, out, **args, on_unit=seen.append).load()
    assert len(tables_built) == 2 and len(seen) == 1  # the full look ran and re-embedded that unit
    assert lost.exists() and (again.status.values == OK).all()
    np.testing.assert_allclose(again.embedding.values, first.embedding.values, rtol=1e-5, atol=1e-6)


def test_a_finished_cube_with_time_reruns_without_a_table(tmp_path, client, provider, tables_built):
    gdf, out = _points(6, seed=3), tmp_path / "t.zarr"
    args = dict(scales=[10], temporal=TemporalSpec.years(2020, 2021), model=TINY, backend=provider,
                client=client, chunk_size=4, id_column="site", progress=False)
    first = run_campaign(gdf, out, **args).load()
    assert first.sizes["time"] == 2 and (first.status.values == OK).all()
    seen = []
    again = run_campaign(gdf, out, **args, on_unit=seen.append).load()
    assert len(tables_built) == 1 and not seen
    np.testing.assert_array_equal(again.embedding.values, first.embedding.values)
    # other windows: not this cube's input (refused or appended as before, never silently "done")
    with pytest.raises(CubeError):
        run_campaign(gdf, out, **{**args, "temporal": TemporalSpec.years(2020, 2022)})


def test_the_digest_follows_everything_the_table_depends_on():
    gdf = _points(5)
    base = samples_digest(gdf, id_column="site")
    assert base == samples_digest(gdf.copy(), id_column="site")
    renamed = gdf.copy()
    renamed.loc[2, "site"] = "other"
    moved = gdf.copy()
    moved.loc[4, "geometry"] = shapely.Point(moved.geometry[4].x, moved.geometry[4].y + 1e-9)
    other_crs = gdf.set_crs("EPSG:3857", allow_override=True)
    polygons = gdf.copy()
    polygons["geometry"] = gpd.GeoSeries(shapely.buffer(gdf.geometry.values, 0.001), crs=gdf.crs)
    digests = [base, samples_digest(renamed, id_column="site"), samples_digest(moved, id_column="site"),
               samples_digest(gdf.iloc[::-1], id_column="site"), samples_digest(other_crs, id_column="site"),
               samples_digest(gdf, id_column=None), samples_digest(gdf, id_column="site", on_invalid="skip"),
               samples_digest(gdf, id_column="site", salt="another spec"),
               samples_digest(polygons, id_column="site")]
    assert len(set(digests)) == len(digests)
    ints = gpd.GeoDataFrame({"k": [1, 2]}, geometry=gpd.points_from_xy([3, 4], [31, 32]), crs=4326)
    texts = gpd.GeoDataFrame({"k": ["1", "2"]}, geometry=ints.geometry, crs=4326)
    mixed = gpd.GeoDataFrame({"k": np.array([1, "2"], dtype=object)}, geometry=ints.geometry, crs=4326)
    assert len({samples_digest(g, id_column="k") for g in (ints, texts, mixed)}) == 3
    # what build_sample_table refuses outright has no digest: the table is built and says why
    assert samples_digest(gdf, id_column="nope") is None
    assert samples_digest(gdf.set_crs(None, allow_override=True), id_column="site") is None
