"""Export and STAC of a cube with a ``time`` dimension: GeoParquet rows per sample x scale x
window with the window's ``start_datetime``/``end_datetime``, STAC Items per scale and window,
``emb:temporal_resolution`` over the windows; validated offline like every catalogue."""

import json

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pystac
import pytest
import zarr

from rsembed_dask import export_geoparquet, write_stac
from rsembed_dask.cli import main
from rsembed_dask.errors import CubeError, SpecError
from rsembed_dask.specs import TemporalSpec
from rsembed_dask.store.cube import OK, open_cube
from rsembed_dask.store.layout import TIME_WINDOWS_ATTR

from ..emb_stores import make_cube, make_tiling, sample_gdf
from .test_stac import check_collection, check_item, validate_core

YEARS = list(TemporalSpec.years(2019, 2021))


@pytest.fixture(scope="module")
def timed(tmp_path_factory):
    path = tmp_path_factory.mktemp("time_formats") / "t.zarr"
    make_cube(path, sample_gdf(120, seed=21), dim=8, chunk=32, windows=YEARS)
    return path


def _expected(path):
    """(scale, window start, id, embedding) of every ok cell, in export order: scale, window, cube row."""
    ds = open_cube(path)
    out = []
    for s in ds.scale.values.tolist():
        for i, t in enumerate(pd.to_datetime(ds.time.values)):
            one = ds.isel(time=i).sel(scale=s)
            status, emb = one.status.values, one.embedding.values
            for r in np.flatnonzero(status == OK):
                out.append((s, t.strftime("%Y-%m-%d"), str(ds.sample.values[r]), emb[r]))
    return out


def test_export_has_a_row_per_sample_scale_and_window(timed, tmp_path):
    out = tmp_path / "t.parquet"
    report = export_geoparquet(timed, out)
    gdf = gpd.read_parquet(out)
    expected = _expected(timed)
    assert report.rows == len(gdf) == len(expected) and report.windows == ["2019-01-01", "2020-01-01", "2021-01-01"]
    assert report.cells["ok"] == len(expected) and report.cells["failed"] > 0  # only ok cells, as with one window
    starts = gdf["start_datetime"].dt.strftime("%Y-%m-%d").tolist()
    assert list(zip(gdf["scale"], starts, gdf["id"])) == [(s, t, i) for s, t, i, _ in expected]
    np.testing.assert_array_equal(np.stack(gdf["embedding"].to_numpy()), np.stack([e for *_, e in expected]))
    # Each row's window: [start, end) as inclusive UTC timestamps (the last second of the window).
    assert str(gdf["start_datetime"].dtype) == "datetime64[ms, UTC]"
    ends = gdf.groupby(starts)["end_datetime"].unique()
    assert {k: [str(v) for v in vs] for k, vs in ends.items()} == {
        f"{y}-01-01": [f"{y}-12-31 23:59:59+00:00"] for y in (2019, 2020, 2021)}
    # The windows differ: the same sample's vectors are not copied between them.
    first = gdf[gdf["scale"] == 10.0].groupby("id")["embedding"].apply(list)
    assert any(len(v) > 1 and not np.allclose(v[0], v[1]) for v in first)
    emb = json.loads(pq.read_schema(out).metadata[b"emb"])
    assert emb["temporal_windows"] == [{"start": f"{y}-01-01", "end": f"{y + 1}-01-01", "end_exclusive": True}
                                       for y in (2019, 2020, 2021)]
    assert emb["temporal_window"] == {"start": "2019-01-01", "end": "2022-01-01", "end_exclusive": True}
    assert (emb["start_datetime"], emb["end_datetime"]) == ("2019-01-01T00:00:00Z", "2021-12-31T23:59:59Z")
    assert emb["temporal_resolution"] == "P1Y" and emb["gsd"] == [10.0, 40.0]
    # Row-group statistics on the datetimes (pruning a time filter).
    md = pq.ParquetFile(out).metadata
    names = [md.row_group(0).column(c).path_in_schema for c in range(md.num_columns)]
    assert md.row_group(0).column(names.index("start_datetime")).statistics.has_min_max


def test_export_of_one_window_and_one_scale(timed, tmp_path):
    out = tmp_path / "w1.parquet"
    report = export_geoparquet(timed, out, scale=40.0, window=1)
    gdf = gpd.read_parquet(out)
    expected = [(s, t, i) for s, t, i, _ in _expected(timed) if s == 40.0 and t == "2020-01-01"]
    assert report.windows == ["2020-01-01"] and len(gdf) == len(expected) > 0
    assert list(zip(gdf["scale"], gdf["start_datetime"].dt.strftime("%Y-%m-%d"), gdf["id"])) == expected
    emb = json.loads(pq.read_schema(out).metadata[b"emb"])
    assert emb["temporal_window"]["start"] == "2020-01-01" and "temporal_windows" not in emb
    for bad in (3, -1, "2020"):
        with pytest.raises(SpecError, match="window="):
            export_geoparquet(timed, tmp_path / "bad.parquet", window=bad)


def test_int8_cube_with_time_exports_its_per_cell_factors(tmp_path):
    path = tmp_path / "q.zarr"
    make_cube(path, sample_gdf(40, seed=22), dim=8, chunk=16, scales=(10.0,), windows=YEARS[:2], dtype="int8")
    out = tmp_path / "q.parquet"
    export_geoparquet(path, out)
    t = pq.read_table(out)
    assert t.schema.field("embedding").type.value_type == "int8" and "embedding_scale" in t.schema.names
    ds = open_cube(path)  # dequantised by default
    got = np.stack(t.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    got *= t.column("embedding_scale").to_numpy()[:, None]
    want = np.concatenate([ds.embedding.isel(time=i, scale=0).values[ds.status.isel(time=i, scale=0).values == OK]
                           for i in range(2)])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    export_geoparquet(path, tmp_path / "f.parquet", dequantize=True)
    np.testing.assert_allclose(np.stack(gpd.read_parquet(tmp_path / "f.parquet")["embedding"]), want, rtol=1e-6)
    col = write_stac(path, tmp_path / "stac")
    for item in col.get_items():
        validate_core(item)
        link = item.properties["emb:quantization"]["link"]
        assert f"(time, sample, scale; time={item.properties['start_datetime'][:10]})" in link["title"]


@pytest.mark.parametrize("geoparquet", [False, True])
def test_stac_items_per_scale_and_window_validate(timed, tmp_path, geoparquet):
    col = write_stac(timed, tmp_path / "stac", geoparquet=geoparquet)
    col = pystac.read_file(str(tmp_path / "stac" / "collection.json"))
    validate_core(col)
    c = col.to_dict()
    check_collection(c)
    assert c["emb:temporal_resolution"] == "P1Y" and c["summaries"]["emb:temporal_resolution"] == ["P1Y"]
    assert c["summaries"]["gsd"] == [10.0, 40.0]
    # The first interval is the overall extent, then each window (STAC's rule for several intervals).
    assert c["extent"]["temporal"]["interval"] == [["2019-01-01T00:00:00Z", "2021-12-31T23:59:59Z"]] + [
        [f"{y}-01-01T00:00:00Z", f"{y}-12-31T23:59:59Z"] for y in (2019, 2020, 2021)]
    assert "3 windows from 2019-01-01 to 2022-01-01" in c["description"]
    items = {i.id: i for i in col.get_items()}
    assert sorted(items) == [f"t-{s}m-{y}-01-01" for s in (10, 40) for y in (2019, 2020, 2021)]
    ds = open_cube(timed)
    for iid, item in items.items():
        validate_core(item)
        d = item.to_dict()
        check_item(d)
        start = iid[-10:]
        props = d["properties"]
        assert props["datetime"] is None  # a range is given: STAC wants datetime null
        assert (props["start_datetime"], props["end_datetime"]) == (f"{start}T00:00:00Z", f"{start[:4]}-12-31T23:59:59Z")
        assert props["emb:runtime_parameters"]["window_start"] == start
        one = ds.sel(time=start, scale=item.properties["gsd"])
        ok = one.status.values == OK
        asset = item.assets["embeddings"]
        if geoparquet:
            gdf = gpd.read_parquet(asset.get_absolute_href())
            assert len(gdf) == int(ok.sum())
            assert set(gdf["start_datetime"].dt.strftime("%Y-%m-%d")) == {start}
            assert set(gdf["scale"]) == {item.properties["gsd"]}
        else:
            assert f"select time={start}" in asset.title
            opened = open_cube(asset.get_absolute_href())
            assert start in set(pd.to_datetime(opened.time.values).strftime("%Y-%m-%d"))
            b = item.bbox  # covers the window's ok samples
            lon, lat = one.lon.values[ok], one.lat.values[ok]
            assert b[0] < lon.min() and b[2] > lon.max() and b[1] < lat.min() and b[3] > lat.max()


def test_temporal_resolution_of_seasons_and_of_irregular_windows(tmp_path):
    seasons = tmp_path / "s.zarr"
    make_cube(seasons, sample_gdf(20, seed=23), dim=4, chunk=16, scales=(10.0,), windows=TemporalSpec.seasons(2023))
    c = write_stac(seasons, tmp_path / "s").to_dict()
    check_collection(c)
    assert c["emb:temporal_resolution"] == "P3M" and c["gsd"] == 10.0
    tens = tmp_path / "d.zarr"  # 10-day windows, the last one cut short at the end: 10, 10, 4 days
    windows = TemporalSpec.every("2023-01-01", "2023-01-25", days=10)
    make_cube(tens, sample_gdf(20, seed=24), dim=4, chunk=16, scales=(10.0,), windows=windows)
    col = write_stac(tens, tmp_path / "d")
    validate_core(col)
    c = col.to_dict()
    assert c["emb:temporal_resolution"] == "irregular"
    assert c["summaries"]["emb:temporal_resolution"] == ["P10D", "P4D"]
    last = col.get_item("d-10m-2023-01-21")
    assert last.properties["end_datetime"] == "2023-01-24T23:59:59Z"


def test_cli_export_and_stac_of_a_cube_with_time(timed, tmp_path, capsys):
    out = tmp_path / "cli.parquet"
    assert main(["export", str(timed), str(out)]) == 0
    assert "in 3 window(s) (2019-01-01, 2020-01-01, 2021-01-01)" in capsys.readouterr().out
    assert len(gpd.read_parquet(out)) == len(_expected(timed))
    assert main(["stac", str(timed), "--out", str(tmp_path / "stac"), "--id", "yearly"]) == 0
    assert "collection 'yearly' with 6 item(s): yearly-10m-2019-01-01," in capsys.readouterr().out


def test_a_campaign_over_windows_exports_and_catalogues_on_the_emulator(tmp_path, provider, client, capsys):
    """A real 3-window campaign (test-tiny, the real ee client against the emulator), then the CLI."""
    from rsembed_dask.campaign.options import RunOptions
    from rsembed_dask.campaign.run import run_campaign
    from rsembed_dask.specs import ModelSpec

    windows = [TemporalSpec.range(f"{y}-04-01", f"{y}-07-01") for y in (2019, 2020, 2021)]
    gdf = gpd.GeoDataFrame({"site": [f"s{i}" for i in range(5)]},
                           geometry=gpd.points_from_xy(np.linspace(2.0, 2.1, 5), np.linspace(31.0, 31.1, 5)),
                           crs="EPSG:4326")
    cube = tmp_path / "c.zarr"
    run_campaign(gdf, cube, scales=[10, 40], temporal=windows, model=ModelSpec("test-tiny", device="cpu"),
                 backend=provider, client=client, chunk_size=2, id_column="site", progress=False,
                 options=RunOptions(progress=False), stac_dir=tmp_path / "run_stac")
    at_run = pystac.read_file(str(tmp_path / "run_stac" / "collection.json"))  # written when the run ends
    assert len(list(at_run.get_items())) == 6 and at_run.to_dict()["emb:temporal_resolution"] == "P3M"
    out = tmp_path / "c.parquet"
    assert main(["export", str(cube), str(out)]) == 0
    assert "30 rows at scales 10, 40 m in 3 window(s)" in capsys.readouterr().out
    t = pq.read_table(out)
    ds = open_cube(cube)
    assert (ds.status.values == OK).all()
    for i, w in enumerate(windows):
        for s in (10.0, 40.0):
            rows = t.filter((t.column("scale").to_numpy() == s)
                            & (t.column("start_datetime").to_numpy() == np.datetime64(w.start, "ms")))
            assert rows.column("end_datetime").to_pylist()[0].isoformat() == f"{w.end[:4]}-06-30T23:59:59+00:00"
            want = ds.isel(time=i).sel(scale=s)
            assert rows.column("id").to_pylist() == [str(v) for v in want.sample.values]
            np.testing.assert_array_equal(np.stack(rows.column("embedding").to_numpy(zero_copy_only=False)),
                                          want.embedding.values)
    stac = tmp_path / "stac"
    assert main(["stac", str(cube), "--out", str(stac), "--geoparquet"]) == 0
    col = pystac.read_file(str(stac / "collection.json"))
    validate_core(col)
    check_collection(col.to_dict())
    assert col.to_dict()["emb:temporal_resolution"] == "P3M"
    items = list(col.get_items())
    assert len(items) == 6
    for item in items:
        validate_core(item)
        check_item(item.to_dict())
        assert len(gpd.read_parquet(item.assets["embeddings"].get_absolute_href())) == 5


def test_a_damaged_chunk_of_one_window_is_named(tmp_path, capsys):
    """A flipped byte in window 1's embedding chunk of rows 128-159 (read in a later block)."""
    path = tmp_path / "d.zarr"
    make_cube(path, sample_gdf(200, seed=25), dim=8, chunk=32, scales=(10.0,), windows=YEARS, bad_fraction=0.0)
    chunk = path / "embedding" / "c" / "1" / "4" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(CubeError, match=r"array 'embedding' at scale 10 m in window 2020-01-01, samples .*"
                                        r"\(rows 128-159\) does not decode"):
        export_geoparquet(path, tmp_path / "x.parquet", read_block_rows=32)
    assert export_geoparquet(path, tmp_path / "w0.parquet", window=0).rows == 200  # the other windows read fine
    assert main(["export", str(path), str(tmp_path / "x.parquet")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "in window 2020-01-01" in err and not (tmp_path / "x.parquet").exists()
