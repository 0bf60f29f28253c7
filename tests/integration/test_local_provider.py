"""Tests of LocalRasterProvider on small synthetic GeoTIFFs in non-UTM CRSs."""

from __future__ import annotations

import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from rsembed_dask.errors import NoImageryError, PermanentProviderError, ProviderError, SpecError
from rsembed_dask.geo.grid import lonlat_to_xy, point_grid, xy_to_lonlat
from rsembed_dask.providers.base import Patch, Provider
from rsembed_dask.providers.local import LocalRasterProvider
from rsembed_dask.specs import SensorSpec, TemporalSpec

LON0, LAT1, RES, N = 2.9, 45.1, 0.0004, 500  # 2.9..3.1 E, 44.9..45.1 N
SENSOR = SensorSpec()  # bands (B4, B3, B2)
WHEN = TemporalSpec.year(2022)


def expected(lon, lat):
    """The known content, per sensor band (B4, B3, B2)."""
    u, v = (np.asarray(lon) - LON0) / (N * RES), (np.asarray(lat) - (LAT1 - N * RES)) / (N * RES)
    return np.stack([1000 + 20000 * u, 1000 + 20000 * v, 30000 + 10000 * u + 10000 * v])


def write_tif(path, *, lon0=LON0, lat1=LAT1, n=N, res=RES, order=("B2", "B3", "B4"),
              names=True, nodata=None, crs="EPSG:4326", zero_block=False):
    """3-band uint16 GeoTIFF whose bands are ``expected`` at pixel centres."""
    cols, rows = np.meshgrid(np.arange(n) + 0.5, np.arange(n) + 0.5)
    lon, lat = lon0 + cols * res, lat1 - rows * res
    vals = dict(zip(("B4", "B3", "B2"), np.rint(expected(lon, lat)).astype(np.uint16)))
    data = np.stack([vals[b] for b in order])
    transform = from_origin(lon0, lat1, res, res)
    if crs != "EPSG:4326":  # same content, laid out on a grid in `crs`
        x0, y1 = lonlat_to_xy(lon0, lat1, crs)
        x1, y0 = lonlat_to_xy(lon0 + n * res, lat1 - n * res, crs)
        step = ((x1 - x0) / n, (y1 - y0) / n)
        transform = from_origin(x0, y1, *step)
        xs, ys = x0 + cols * step[0], y1 - rows * step[1]
        lon, lat = xy_to_lonlat(xs, ys, crs)
        vals = dict(zip(("B4", "B3", "B2"), np.rint(expected(lon, lat)).astype(np.uint16)))
        data = np.stack([vals[b] for b in order])
    if zero_block:
        data[:, : n // 2, : n // 2] = 0
    with rasterio.open(path, "w", driver="GTiff", width=n, height=n, count=3, dtype="uint16",
                       crs=crs, transform=transform, nodata=nodata, tiled=True) as dst:
        dst.write(data)
        if names:
            for i, b in enumerate(order, start=1):
                dst.set_band_description(i, b)
    return path


def pixel_lonlat(grid, r, c):
    return xy_to_lonlat(grid.x0 + (c + 0.5) * grid.scale_m, grid.y0 - (r + 0.5) * grid.scale_m, grid.crs)


def assert_close(patch, pixels, tol):
    for r, c in pixels:
        assert patch.valid[r, c]
        want = expected(*pixel_lonlat(patch.grid, r, c))
        np.testing.assert_allclose(patch.data[:, r, c].astype(float), want, atol=tol)


@pytest.fixture
def tif(tmp_path):
    return write_tif(tmp_path / "scene.tif")


def test_fetch_on_utm_grid_band_order_and_values(tif):
    provider = LocalRasterProvider(tif)
    assert isinstance(provider, Provider)
    grid = point_grid(3.0, 45.0, buffer_m=1000, scale_m=20)
    assert grid.crs == "EPSG:32631"
    patch = provider.fetch(grid, SENSOR, WHEN)
    assert isinstance(patch, Patch)
    assert patch.data.shape == (3, 100, 100) and patch.data.dtype == np.uint16
    assert patch.bands == ("B4", "B3", "B2") and patch.grid == grid
    assert patch.valid.all()
    assert_close(patch, [(0, 0), (50, 50), (99, 99), (10, 80)], tol=3)
    assert provider.stats.sent == 1 and provider.stats.bytes > 0


def test_partial_coverage_marks_outside_invalid(tif):
    grid = point_grid(3.1, 45.0, buffer_m=1000, scale_m=20)  # straddles the east edge
    patch = LocalRasterProvider(tif).fetch(grid, SENSOR, WHEN)
    assert patch.valid[:, :40].all() and not patch.valid[:, -40:].any()
    assert 0.3 < patch.valid_fraction < 0.7
    assert (patch.data[:, ~patch.valid] == 0).all()
    assert_close(patch, [(50, 5), (20, 30)], tol=3)


def test_downsampling_averages(tif):
    grid = point_grid(3.0, 45.0, buffer_m=5000, scale_m=200)
    patch = LocalRasterProvider(tif).fetch(grid, SENSOR, WHEN)
    assert patch.data.shape == (3, 50, 50) and patch.valid.all()
    assert_close(patch, [(0, 0), (25, 25), (49, 10)], tol=10)


def test_overviews_used_for_coarse_grids(tmp_path, tif):
    from rasterio.enums import Resampling

    cog = write_tif(tmp_path / "cog.tif")
    with rasterio.open(cog, "r+") as dst:
        dst.build_overviews([2, 4], Resampling.average)
    grid = point_grid(3.0, 45.0, buffer_m=5000, scale_m=200)
    plain, pyramid = LocalRasterProvider(tif), LocalRasterProvider(cog)
    p1, p2 = plain.fetch(grid, SENSOR, WHEN), pyramid.fetch(grid, SENSOR, WHEN)
    assert p2.valid.all()
    assert_close(p2, [(0, 0), (25, 25), (49, 10)], tol=15)
    assert pyramid.stats.bytes < plain.stats.bytes / 3  # overview x2 read
    assert np.abs(p1.data.astype(int) - p2.data.astype(int)).max() < 30


def test_far_away_grid_has_no_imagery(tif):
    with pytest.raises(NoImageryError):
        LocalRasterProvider(tif).fetch(point_grid(20.0, 45.0, 1000, 20), SENSOR, WHEN)


def test_unnamed_bands_follow_sensor_order_and_band_map(tmp_path):
    path = write_tif(tmp_path / "plain.tif", order=("B4", "B3", "B2"), names=False)
    grid = point_grid(3.0, 45.0, buffer_m=500, scale_m=10)
    patch = LocalRasterProvider(path).fetch(grid, SENSOR, WHEN)
    assert_close(patch, [(50, 50)], tol=3)
    swapped = LocalRasterProvider(path, band_map={"B4": 3, "B3": 2, "B2": 1})
    p2 = swapped.fetch(grid, SENSOR, WHEN)
    np.testing.assert_array_equal(p2.data, patch.data[::-1])


def test_missing_band_name(tif):
    with pytest.raises(PermanentProviderError, match="B8"):
        LocalRasterProvider(tif).fetch(point_grid(3.0, 45.0, 500, 10),
                                       SensorSpec(bands=("B8", "B4")), WHEN)


def test_nodata_is_invalid_and_web_mercator_file(tmp_path):
    path = write_tif(tmp_path / "merc.tif", crs="EPSG:3857", nodata=0, zero_block=True)
    grid = point_grid(3.05, 44.95, buffer_m=1000, scale_m=20)  # away from the zero block
    patch = LocalRasterProvider(path).fetch(grid, SENSOR, WHEN)
    assert patch.valid.all()
    assert_close(patch, [(0, 0), (50, 50), (99, 99)], tol=3)
    edge = LocalRasterProvider(path).fetch(point_grid(3.0, 45.0, 1000, 20), SENSOR, WHEN)
    assert not edge.valid[:40, :40].any() and edge.valid[60:, :].all() and edge.valid[:, 60:].all()
    corner = point_grid(2.95, 45.05, buffer_m=1000, scale_m=20)  # inside the nodata block
    with pytest.raises(NoImageryError, match="no valid pixel"):
        LocalRasterProvider(path).fetch(corner, SENSOR, WHEN)


def test_directory_merge_first_valid_wins(tmp_path):
    d = tmp_path / "tiles"
    d.mkdir()
    half = N // 2
    write_tif(d / "a_west.tif", n=half)  # 2.9..3.0 E, 45.0..45.1 N
    write_tif(d / "b_east.tif", lon0=LON0 + half * RES, n=half)  # 3.0..3.1 E
    (d / "notes.txt").write_text("not a raster")
    provider = LocalRasterProvider(d)
    assert [p.rsplit("/", 1)[-1] for p in provider.paths] == ["a_west.tif", "b_east.tif"]
    grid = point_grid(3.0, 45.05, buffer_m=1000, scale_m=20)
    patch = provider.fetch(grid, SENSOR, WHEN)
    assert patch.valid.all()
    assert_close(patch, [(50, 10), (50, 90)], tol=3)
    assert provider.stats.sent == 2


def test_unreadable_file_names_path(tmp_path, tif):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"this is not a tiff")
    with pytest.raises(ProviderError, match="broken.tif"):
        LocalRasterProvider([bad, tif]).fetch(point_grid(3.0, 45.0, 500, 10), SENSOR, WHEN)
    with pytest.raises(ProviderError, match="missing.tif"):
        LocalRasterProvider(tmp_path / "missing.tif").fetch(point_grid(3.0, 45.0, 500, 10), SENSOR, WHEN)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SpecError):
        LocalRasterProvider(empty)


def test_pickle_and_threads(tif):
    provider = LocalRasterProvider(tif)
    grid = point_grid(3.0, 45.0, buffer_m=500, scale_m=10)
    first = provider.fetch(grid, SENSOR, WHEN)
    clone = pickle.loads(pickle.dumps(provider))
    assert clone.paths == provider.paths and clone.stats.sent == 1
    assert len(pickle.dumps(provider)) < 2000
    with ThreadPoolExecutor(4) as pool:
        patches = list(pool.map(lambda _: clone.fetch(grid, SENSOR, WHEN), range(8)))
    for p in patches:
        np.testing.assert_array_equal(p.data, first.data)
    assert clone.stats.sent == 9
