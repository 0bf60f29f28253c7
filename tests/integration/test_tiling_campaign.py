"""Tiling campaigns end to end: coalesced requests, per-scale cubes, georeferenced grids, resume."""

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers the .rio accessor)
import shapely
import xarray as xr

from rsembed_dask.store.cube import OK, open_cube
from rsembed_dask.errors import SpecError, SpecMismatchError
from rsembed_dask.campaign.run import run_campaign
from rsembed_dask.providers.coalesce import plan_requests
from rsembed_dask.sampling.units import default_unit_size
from rsembed_dask.specs import ModelSpec, TemporalSpec
from rsembed_dask.store.tiling import NO_TILE, scale_name
from rsembed_dask.sampling.tiling import tile_aoi

WINDOW = TemporalSpec.range("2022-01-01", "2022-02-01")
TINY = ModelSpec("test-tiny", device="cpu")
# Astride the 12E seam between UTM zones 32 and 33.
AOI = shapely.Polygon([(11.93, 45.0), (12.08, 45.01), (12.1, 45.09), (11.95, 45.1)])


@pytest.fixture(scope="module")
def tiling():
    return tile_aoi(AOI, scales=[20, 40])


def _expected_requests(tiling, chunk):
    n = 0
    for scale, table in zip(tiling.scales, tiling.tables):
        for start in range(0, len(table), chunk):
            sub = table.slice(start, min(start + chunk, len(table)))
            n += len(plan_requests([sub.footprint(i, scale, 224).grid for i in range(len(sub))], 3))
    return n


def test_tiling_campaign_writes_sample_cubes_and_georeferenced_grids(tmp_path, client, emu, provider, tiling):
    out = tmp_path / "tiles.zarr"
    tree = run_campaign(tiling, out, temporal=WINDOW, model=TINY, backend=provider, client=client,
                        progress=False)
    assert isinstance(tree, xr.DataTree)
    n_tiles = len(tiling)
    # Coalesced: far fewer computePixels than tiles, exactly as planned per unit.
    sent = emu.stats.as_dict()["compute_pixels"]
    assert sent == _expected_requests(tiling, default_unit_size(tiling.block)) and sent < n_tiles / 2
    for scale, table in zip(tiling.scales, tiling.tables):
        samples = tree[f"samples/{scale_name(scale)}"].to_dataset()
        assert samples.sizes["sample"] == len(table) and (samples.status.values == OK).all()
        assert samples.sample.values.tolist() == table.ids().tolist()
        emb = samples.embedding.values[:, 0, :]
        cells = 0
        for epsg in table.zones():
            grid = tree[f"{scale_name(scale)}/EPSG{epsg}"].to_dataset()
            assert grid.embedding.dims == ("y", "x", "feature")
            assert grid.embedding.rio.crs.to_epsg() == epsg
            lattice = table.lattice(epsg)
            row_top, col_left = grid.attrs["row_top"], grid.attrs["col_left"]
            assert tuple(grid.embedding.rio.transform())[:6] == pytest.approx(
                lattice.raster_transform(row_top, col_left))
            index, status = grid.sample_index.values, grid.status.values
            has = index >= 0
            assert (status[has] == OK).all() and (status[~has] == NO_TILE).all()
            np.testing.assert_array_equal(grid.embedding.values[has], emb[index[has]])
            assert np.isnan(grid.embedding.values[~has]).all()
            # the cell of each tile is where its (row, col) says, and its centre is the tile's
            rows, cols = np.nonzero(has)
            k = index[rows, cols]
            assert (table.epsg[k] == epsg).all()
            np.testing.assert_array_equal(row_top - rows, table.row[k])
            np.testing.assert_array_equal(col_left + cols, table.col[k])
            x_c = grid.x.values[cols]
            np.testing.assert_allclose(x_c, (table.col[k] + 0.5) * table.tile_m)
            cells += int(has.sum())
        assert cells == len(table)  # every tile in exactly one zone grid

    # Resume: nothing to do; the same store comes back.
    again = run_campaign(tiling, out, temporal=WINDOW, model=TINY, backend=provider, client=client,
                         progress=False)
    np.testing.assert_array_equal(again["samples/20m"].to_dataset().embedding.values,
                                  tree["samples/20m"].to_dataset().embedding.values)
    # Another AOI, the same path: refused.
    with pytest.raises(SpecMismatchError, match="tiling"):
        run_campaign(tile_aoi(AOI.buffer(0.01), scales=[20, 40]), out, temporal=WINDOW, model=TINY,
                     backend=provider, client=client, progress=False)
    # A plain sample cube cannot be opened as this store's path and vice versa.
    assert open_cube(out)["samples/40m"].to_dataset().sizes["sample"] == len(tiling.tables[1])


def test_coalesced_and_per_sample_tiling_cubes_are_identical(tmp_path, client, emu, provider):
    tiling = tile_aoi(shapely.box(3.0, 31.0, 3.08, 31.05), scales=[20])
    a = run_campaign(tiling, tmp_path / "a.zarr", temporal=WINDOW, model=TINY, backend=provider,
                     client=client, progress=False)
    coalesced = emu.stats.as_dict()["compute_pixels"]
    emu.stats.reset()
    b = run_campaign(tiling, tmp_path / "b.zarr", temporal=WINDOW, model=TINY, backend=provider,
                     client=client, progress=False, coalesce=False)
    assert emu.stats.as_dict()["compute_pixels"] == len(tiling) > coalesced
    np.testing.assert_array_equal(a["samples/20m"].to_dataset().embedding.values,
                                  b["samples/20m"].to_dataset().embedding.values)


def test_tiling_campaign_refuses_arguments_of_sample_campaigns(tmp_path, tiling):
    with pytest.raises(SpecError) as err:
        run_campaign(tiling, tmp_path / "x.zarr", temporal=WINDOW, model=TINY, buffer_m=100)
    assert err.value.field == "buffer_m"
    with pytest.raises(SpecError) as err:
        run_campaign(tiling, tmp_path / "x.zarr", temporal=WINDOW, model=TINY, scales=[10])
    assert err.value.field == "scales"


def test_grid_quicklook_writes_georeferenced_rgb_per_zone(tmp_path, client, provider, tiling):
    import rasterio

    from rsembed_dask.explore.geotiff import PCAColours, grid_quicklook

    out = tmp_path / "tiles.zarr"
    tree = run_campaign(tiling, out, temporal=WINDOW, model=TINY, backend=provider, client=client,
                        progress=False)
    files = grid_quicklook(out, 20, tmp_path / "ql", components=(0, 2, 1))
    tifs = sorted(f for f in files if f.endswith(".tif"))
    assert [f.rsplit("_", 1)[1] for f in tifs] == ["EPSG32632.tif", "EPSG32633.tif"]
    assert all(f.replace(".tif", ".png") in files for f in tifs)
    emb = tree["samples/20m"].to_dataset().embedding.values[:, 0, :]
    colours = PCAColours.fit(emb, (0, 2, 1))
    for tif in tifs:
        zone = tif.rsplit("_", 1)[1][:-4]
        grid = tree[f"20m/{zone}"].to_dataset()
        with rasterio.open(tif) as src:
            assert src.crs.to_epsg() == int(zone[4:]) and src.count == 4
            assert tuple(src.transform)[:6] == pytest.approx(tuple(grid.embedding.rio.transform())[:6])
            rgba = src.read()
        ok = grid.status.values == OK
        assert ((rgba[3] == 255) == ok).all()
        np.testing.assert_array_equal(np.moveaxis(rgba[:3], 0, -1)[ok],
                                      colours.rgb(grid.embedding.values[ok]))
    with pytest.raises(SpecError):
        grid_quicklook(out, 10, tmp_path / "ql")


class _Stop(Exception):
    pass


def test_an_interrupted_tiling_campaign_resumes_and_syncs_its_grids(tmp_path, client, provider, tiling):
    from rsembed_dask.store.open import is_tiling_store
    from rsembed_dask.campaign.jobs import grids_synced

    out = tmp_path / "tiles.zarr"

    def stop(summary):
        raise _Stop

    with pytest.raises(_Stop):
        run_campaign(tiling, out, temporal=WINDOW, model=TINY, backend=provider, client=client,
                     progress=False, on_unit=stop, max_in_flight=1)
    assert is_tiling_store(out) and not grids_synced(str(out))
    done = []
    tree = run_campaign(tiling, out, temporal=WINDOW, model=TINY, backend=provider, client=client,
                        progress=False, on_unit=lambda s: done.append(s.unit))
    assert grids_synced(str(out))
    n_units = sum(-(-len(t) // default_unit_size(tiling.block)) for t in tiling.tables)
    assert 0 < len(done) < n_units  # the unit finished before the interruption is not redone
    for scale, table in zip(tiling.scales, tiling.tables):
        for epsg in table.zones():
            grid = tree[f"{scale_name(scale)}/EPSG{epsg}"].to_dataset()
            assert int((grid.status.values == OK).sum()) == int((table.epsg == epsg).sum())
