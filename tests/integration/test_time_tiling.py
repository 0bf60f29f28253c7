"""A tiling store with a ``time`` dimension: one tiling campaign over several windows (sample
cubes and zone grids), resume, a backfill that rewrites no byte, and the change map per zone
(``explore.change``, ``rsembed-dask change`` writing a GeoTIFF and a PNG per zone)."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rioxarray  # noqa: F401  (registers the .rio accessor)
import shapely
import zarr

from rsembed_dask.campaign.jobs import grids_synced
from rsembed_dask.campaign.run import run_campaign
from rsembed_dask.cli import main
from rsembed_dask.errors import CubeError, SpecError
from rsembed_dask.explore import change, write_change
from rsembed_dask.sampling.tiling import tile_aoi
from rsembed_dask.sampling.units import default_unit_size
from rsembed_dask.specs import ModelSpec, TemporalSpec
from rsembed_dask.store.cube import OK, Cube
from rsembed_dask.store.layout import COMPLETED_WINDOWS_ATTR, SPEC_HASH_ATTR, TIME_WINDOWS_ATTR
from rsembed_dask.store.tiling import NO_TILE, scale_name

from .test_tiling_campaign import _expected_requests

TINY = ModelSpec("test-tiny", device="cpu")
WINDOWS = [TemporalSpec.range(f"{y}-04-01", f"{y}-05-01") for y in (2019, 2020, 2024)]
# Astride the 12E seam between UTM zones 32 and 33: two zone grids per scale.
AOI = shapely.Polygon([(11.93, 45.0), (12.08, 45.01), (12.1, 45.09), (11.95, 45.1)])
SCALES = [20, 40]


@pytest.fixture(scope="module")
def tiling():
    return tile_aoi(AOI, scales=SCALES)


def _run(tiling, out, windows, provider, client, **options):
    return run_campaign(tiling, out, temporal=windows, model=TINY, backend=provider, client=client,
                        progress=False, **options)


def _chunk_bytes(store: Path) -> dict[str, str]:
    """Digest of every chunk object of the store (every file under an array's ``c/``)."""
    return {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(store.rglob("*")) if p.is_file() and "/c/" in f"/{p.relative_to(store)}"}


def test_a_tiling_campaign_over_two_windows_has_time_in_its_cubes_and_grids(tmp_path, client, emu, provider,
                                                                              tiling):
    out = tmp_path / "tt.zarr"
    tree = _run(tiling, out, WINDOWS[:2], provider, client)
    starts = pd.to_datetime([w.start for w in WINDOWS[:2]]).values
    root = zarr.open_group(str(out), mode="r")
    assert root.attrs[TIME_WINDOWS_ATTR] == [[w.start, w.end] for w in WINDOWS[:2]]
    assert root.attrs[COMPLETED_WINDOWS_ATTR] == [w.start for w in WINDOWS[:2]]
    # Coalesced per window: each unit fetches its window with the requests of a one-window run.
    sent = emu.stats.as_dict()["compute_pixels"]
    assert sent == 2 * _expected_requests(tiling, default_unit_size(tiling.block)) < len(tiling)
    for scale, table in zip(tiling.scales, tiling.tables):
        name = scale_name(scale)
        samples = tree[f"samples/{name}"].to_dataset()
        assert samples.embedding.dims == ("time", "sample", "scale", "feature")
        assert list(samples.time.values) == list(starts) and (samples.status.values == OK).all()
        cube = zarr.open_group(str(out / "samples" / name), mode="r")
        assert cube.attrs[COMPLETED_WINDOWS_ATTR] == [w.start for w in WINDOWS[:2]]
        # The spec hash of a tiling over several windows is that of a one-window campaign on the first.
        assert cube.attrs[SPEC_HASH_ATTR] == Cube.open(out / "samples" / name).spec.spec_hash()
        assert json.loads(cube.attrs["campaign_spec"])["temporal"]["start"] == WINDOWS[0].start
        # Each window was fetched for its own dates.
        assert not np.allclose(samples.embedding.values[0], samples.embedding.values[1])
        cells = 0
        for epsg in table.zones():
            grid = tree[f"{name}/EPSG{epsg}"].to_dataset()
            assert grid.embedding.dims == ("time", "y", "x", "feature")
            assert grid.status.dims == ("time", "y", "x") and grid.sample_index.dims == ("y", "x")
            assert grid.time.dtype.kind == "M" and list(grid.time.values) == list(starts)
            assert (grid.time_bnds.values[:, 1] == pd.to_datetime([w.end for w in WINDOWS[:2]]).values).all()
            z = zarr.open_group(str(out / name / f"EPSG{epsg}"), mode="r")
            for a in ("embedding", "status"):
                assert z[a].metadata.dimension_names[0] == "time" and z[a].chunks[0] == 1
            assert grid.embedding.rio.crs.to_epsg() == epsg
            index = grid.sample_index.values
            has = index >= 0
            for t in range(2):
                status = grid.status.values[t]
                assert (status[has] == OK).all() and (status[~has] == NO_TILE).all()
                np.testing.assert_array_equal(grid.embedding.values[t][has],
                                              samples.embedding.values[t, index[has], 0, :])
            cells += int(has.sum())
        assert cells == len(table)
    # A resume with the same windows has nothing to do and rewrites nothing.
    before = _chunk_bytes(out)
    again = _run(tiling, out, WINDOWS[:2], provider, client)
    assert _chunk_bytes(out) == before
    assert again["samples/20m"].to_dataset().attrs["last_run"] == tree["samples/20m"].to_dataset().attrs["last_run"]
    # inspect shows the windows.
    assert main(["inspect", str(out)]) == 0


class _Stop(Exception):
    pass


def test_an_interrupted_tiling_over_two_windows_resumes_window_by_window(tmp_path, client, provider, tiling):
    out = tmp_path / "ti.zarr"

    def stop(summary):
        raise _Stop

    with pytest.raises(_Stop):
        _run(tiling, out, WINDOWS[:2], provider, client, on_unit=stop, max_in_flight=1)
    assert not grids_synced(out)
    done = []
    tree = _run(tiling, out, WINDOWS[:2], provider, client, on_unit=lambda s: done.append(s.unit))
    n_units = 2 * sum(-(-len(t) // default_unit_size(tiling.block)) for t in tiling.tables)
    assert 0 < len(done) < n_units  # the unit finished before the interruption is not redone
    assert grids_synced(out)
    for scale, table in zip(tiling.scales, tiling.tables):
        for epsg in table.zones():
            grid = tree[f"{scale_name(scale)}/EPSG{epsg}"].to_dataset()
            for t in range(2):
                assert int((grid.status.values[t] == OK).sum()) == int((table.epsg == epsg).sum())


def test_a_backfill_of_a_tiling_store_rewrites_no_byte(tmp_path, client, provider, tiling):
    out = tmp_path / "tb.zarr"
    _run(tiling, out, WINDOWS[:2], provider, client)
    before = _chunk_bytes(out)
    assert any(k.startswith("20m/EPSG32632/embedding/c/1/") for k in before)
    with pytest.raises(CubeError, match="--append-windows"):
        _run(tiling, out, WINDOWS, provider, client)
    assert _chunk_bytes(out) == before
    tree = _run(tiling, out, WINDOWS, provider, client, append_windows=True)
    after = _chunk_bytes(out)
    assert {k: after[k] for k in before} == before  # every chunk there before is there, byte for byte
    new = set(after) - set(before)
    assert new and all(k.split("/c/")[1].split("/")[0] == "2" for k in new), sorted(new)[:5]  # time index 2
    assert any(k.startswith("20m/EPSG32633/embedding/c/2/") for k in new)
    root = zarr.open_group(str(out), mode="r")
    assert root.attrs[TIME_WINDOWS_ATTR] == [[w.start, w.end] for w in WINDOWS]
    assert root.attrs[COMPLETED_WINDOWS_ATTR] == [w.start for w in WINDOWS]
    for name in ("20m/EPSG32632", "40m/EPSG32633", "samples/20m"):
        ds = tree[name].to_dataset()
        assert ds.sizes["time"] == 3 and str(ds.time.values[2])[:10] == WINDOWS[2].start
    grid = tree["20m/EPSG32632"].to_dataset()
    has = grid.sample_index.values >= 0
    assert (grid.status.values[2][has] == OK).all()
    # A one-window store cannot grow a time dimension; a tiling store of several windows must be
    # given its windows first.
    one = tmp_path / "one.zarr"
    flat = _run(tiling, one, WINDOWS[:1], provider, client)
    assert "time" not in flat["20m/EPSG32632"].to_dataset().dims
    assert TIME_WINDOWS_ATTR not in zarr.open_group(str(one), mode="r").attrs
    with pytest.raises(CubeError, match="no time dimension"):
        _run(tiling, one, WINDOWS[:2], provider, client, append_windows=True)
    with pytest.raises(CubeError, match="give the stored windows first"):
        _run(tiling, out, [WINDOWS[0], WINDOWS[2]], provider, client)


def test_change_map_per_zone_of_a_tiling_store(tmp_path, client, provider, tiling, capsys):
    import rasterio

    out = tmp_path / "tc.zarr"
    # 2030 is after the emulator's "today": an empty composite, no_data everywhere.
    tree = _run(tiling, out, [WINDOWS[0], WINDOWS[2], TemporalSpec.year(2030)], provider, client)
    maps = change(out, 2019, 2024, scale=20)
    assert sorted(maps) == ["EPSG32632", "EPSG32633"]
    for zone, d in maps.items():
        grid = tree[f"20m/{zone}"].to_dataset()
        assert d.dims == ("y", "x") and d.shape == grid.status.shape[1:]
        ok = (grid.status.values[0] == OK) & (grid.status.values[1] == OK)
        values = d.values
        assert np.isfinite(values[ok]).all() and np.isnan(values[~ok]).all() and ok.any() and (~ok).any()
        assert (values[ok] >= 0).all() and (values[ok] <= 2).all()
        assert d.rio.crs.to_epsg() == int(zone[4:])
    assert all(np.isnan(d.values).all() for d in change(out, 2019, 2030, scale=40).values())
    rc = main(["change", str(out), "--from", "2019", "--to", "2024-04-01", "--scale", "20", "--out",
               str(tmp_path / "maps")])
    assert rc == 0
    printed = capsys.readouterr().out.split()
    tifs = sorted(Path(p) for p in printed if p.endswith(".tif"))
    pngs = sorted(Path(p) for p in printed if p.endswith(".png"))
    assert [p.name for p in tifs] == [f"change_2019-04-01_2024-04-01_20m_EPSG3263{i}.tif" for i in (2, 3)]
    assert len(pngs) == 2
    from PIL import Image

    for tif, png in zip(tifs, pngs):
        zone = tif.stem.rsplit("_", 1)[1]
        grid = tree[f"20m/{zone}"].to_dataset()
        with rasterio.open(tif) as src:  # georeferenced like the zone grid, NaN where either window is not ok
            assert src.crs.to_epsg() == int(zone[4:]) and src.count == 1 and src.dtypes[0] == "float32"
            assert tuple(src.transform)[:6] == pytest.approx(tuple(grid.embedding.rio.transform())[:6])
            band = src.read(1)
            assert np.isnan(src.nodata)
        np.testing.assert_allclose(band, maps[zone].values, equal_nan=True)
        img = Image.open(png)
        assert max(img.size) >= 512 and img.mode == "RGBA"
        assert np.asarray(img)[..., 3].min() == 0  # no data is transparent
    # Bad windows and scales: one line naming the store's windows, exit 2.
    for args, said in ((["--from", "2018", "--to", "2024"], "2019-04-01"),
                       (["--from", "2019-05-01", "--to", "2024"], "2024-04-01"),
                       (["--from", "2019", "--to", "2024", "--scale", "10"], "scales")):
        argv = ["change", str(out), *args, "--out", str(tmp_path / "x")]
        if "--scale" not in args:
            argv += ["--scale", "20"]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and said in err and "Traceback" not in err
    # A tiling store of one window has no time: change says so in one line.
    one = tmp_path / "one.zarr"
    _run(tiling, one, WINDOWS[:1], provider, client)
    assert main(["change", str(one), "--from", "2019", "--to", "2019", "--scale", "20", "--out",
                 str(tmp_path / "y")]) == 2
    assert "no time dimension" in capsys.readouterr().err
    paths = write_change(out, 2019, 2024, scale=40, out=tmp_path / "py")
    assert all(p.exists() for p in paths.values())


def test_a_tiling_of_several_windows_is_verified_window_by_window_and_refuses_repair(tmp_path, client, provider,
                                                                                    capsys):
    tiling = tile_aoi((2.0, 31.25, 2.02, 31.27), scales=[40.0])
    out = tmp_path / "r.zarr"
    _run(tiling, out, WINDOWS[:2], provider, client)
    capsys.readouterr()
    assert main(["inspect", str(out), "--verify"]) == 0 and "verify: consistent" in capsys.readouterr().out
    # damage from outside, in the second window only: a grid chunk of garbage, a grid status changed
    zone = sorted(p.name for p in (out / "40m").iterdir() if p.is_dir())[0]
    chunk = sorted(p for p in (out / "40m" / zone / "embedding" / "c" / "1").rglob("*") if p.is_file())[0]
    chunk.write_bytes(b"\x00 not a chunk \x00" * 4)
    status = zarr.open_array(str(out / "40m" / zone / "status"), mode="r+")
    ok_cells = np.argwhere(status[0] == OK)
    y, x = (int(v) for v in ok_cells[0])
    status[0, y, x] = 3  # failed in the grid, ok in the samples
    capsys.readouterr()
    assert main(["inspect", str(out), "--verify"]) == 1
    report = capsys.readouterr().out
    assert f"40m/{zone} in window 2020-04-01/embedding:" in report and "cannot be decoded" in report
    assert (f"40m/{zone} in window 2019-04-01: 1 grid cells whose status is not their sample's: "
            f"(y={y}, x={x})") in report
    with pytest.raises(CubeError, match="has a time dimension"):
        _run(tiling, out, WINDOWS[:2], provider, client, repair=True)
    with pytest.raises(SpecError, match="start date"):
        change(out, "2019-05-01", 2020, scale=40)


def test_the_cli_runs_a_tiling_over_years_and_backfills_one(tmp_path, client, capsys):
    """``rsembed-dask run AOI --tile --years ...`` makes a store with time; ``--append-windows`` adds a year."""
    out = tmp_path / "cli.zarr"
    base = ["run", "2.0,31.25,2.02,31.27", "--tile", "--out", str(out), "--model", "test-tiny", "--backend",
            "emulator", "--scales", "40", "--no-progress", "--scheduler", client.scheduler.address]
    assert main([*base, "--years", "2019-2020"]) == 0
    root = zarr.open_group(str(out), mode="r")
    assert root.attrs[TIME_WINDOWS_ATTR] == [["2019-01-01", "2020-01-01"], ["2020-01-01", "2021-01-01"]]
    capsys.readouterr()
    assert main([*base, "--years", "2019-2021"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--append-windows" in err[0]
    assert main([*base, "--years", "2019-2021", "--append-windows"]) == 0
    root = zarr.open_group(str(out), mode="r")
    assert root.attrs[COMPLETED_WINDOWS_ATTR] == ["2019-01-01", "2020-01-01", "2021-01-01"]
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "window 2021-01-01..2022-01-01:" in text and "completed windows: ['2019-01-01', '2020-01-01', '2021-01-01']" in text


def test_a_cube_with_time_resumes_with_its_own_chunk_size(tmp_path, client, provider):
    """The stored chunk size is read along ``sample`` (``status`` is ``(time, sample, scale)``), so a
    cube with time written with a chunk size resumes without giving it again."""
    from rsembed_dask.store.open import stored_chunk_size

    from .test_time_cube import _points

    out = tmp_path / "c.zarr"
    run_campaign(_points(), out, scales=[40], temporal=WINDOWS[:2], model=TINY, backend=provider, client=client,
                 chunk_size=2, id_column="site", progress=False)
    assert stored_chunk_size(out) == 2
    again = run_campaign(_points(), out, scales=[40], temporal=WINDOWS[:2], model=TINY, backend=provider,
                         client=client, id_column="site", progress=False)
    assert again.sizes["time"] == 2 and (again.status.values == OK).all()


def test_an_int8_tiling_store_with_time(tmp_path, client, provider):
    """int8 grids get ``embedding_scale(time, y, x)``; opened dequantised, each window's grid
    equals its sample cube, and the change map reads them."""
    from rsembed_dask.specs import OutputSpec

    tiling = tile_aoi((2.0, 31.25, 2.03, 31.28), scales=[40.0])
    out = tmp_path / "q.zarr"
    tree = run_campaign(tiling, out, temporal=WINDOWS[:2], model=TINY, backend=provider, client=client,
                        output=OutputSpec.pooled(dtype="int8"), progress=False)
    zone = next(iter(tree["40m"].children))
    z = zarr.open_group(str(out / "40m" / zone), mode="r")
    assert z["embedding"].dtype == np.int8 and z["embedding_scale"].metadata.dimension_names == ("time", "y", "x")
    grid, samples = tree[f"40m/{zone}"].to_dataset(), tree["samples/40m"].to_dataset()
    has = grid.sample_index.values >= 0
    for t in range(2):
        np.testing.assert_allclose(grid.embedding.values[t][has],
                                   samples.embedding.values[t, grid.sample_index.values[has], 0, :])
    d = change(out, 2019, 2020, scale=40)[zone].values
    assert np.isfinite(d[has]).all() and np.isnan(d[~has]).all()


def test_export_and_stac_of_a_tiling_store_with_time(tmp_path, client, provider, tiling):
    """Rows per ok tile and window, each with its window's datetimes; STAC Items per scale, zone and
    window, validated offline (core schemas and the emb: extension)."""
    import geopandas as gpd

    from rsembed_dask import export_geoparquet, write_stac

    from .test_stac import check_collection, check_item, validate_core

    out = tmp_path / "tt.zarr"
    _run(tiling, out, WINDOWS[:2], provider, client)
    report = export_geoparquet(out, tmp_path / "tt.parquet")
    rows = gpd.read_parquet(tmp_path / "tt.parquet")
    expected = 0
    for s in SCALES:
        status = np.asarray(zarr.open_array(str(out / "samples" / scale_name(s) / "status"), mode="r")[...])
        assert status.shape[0] == 2  # (time, sample, scale)
        for t, w in enumerate(WINDOWS[:2]):
            mine = rows[(rows["scale"] == s) & (rows.start_datetime == pd.Timestamp(w.start, tz="UTC"))]
            assert len(mine) == int((status[t] == OK).sum()) > 0
            expected += len(mine)
    assert report.rows == len(rows) == expected
    col = write_stac(out, tmp_path / "stac", geoparquet=True)
    validate_core(col)
    check_collection(col.to_dict())
    items = list(col.get_items())
    zones = {i.id.split("-")[2] for i in items}
    assert len(items) == len(SCALES) * len(zones) * 2 and len(zones) == 2
    for item in items:
        check_item(item.to_dict())
        start = item.id.split("-", 3)[3]
        assert start in {w.start for w in WINDOWS[:2]} and item.properties["start_datetime"].startswith(start)
        assert item.datetime is None and item.assets["samples"].href.endswith(f"-{start}.parquet")
