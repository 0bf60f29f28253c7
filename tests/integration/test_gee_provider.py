"""The real earthengine-api client against the loopback emulator."""

import numpy as np
import pyproj
import pytest

import ee

from rsembed_dask.errors import (ConfigurationError, NoImageryError, PermanentProviderError,
                                 RequestTooLargeError, TransientProviderError)
from rsembed_dask.geo.grid import PixelGrid, point_grid, xy_to_lonlat
from rsembed_dask.providers.gee import check_request_size, rest_grid
from rsembed_dask.providers.limits import REQUEST_BYTE_LIMIT
from rsembed_dask.specs import SensorSpec, TemporalSpec

from ..conftest import FAST_RETRY

WINDOW = TemporalSpec.range("2022-01-01", "2022-04-01")
GEOD = pyproj.Geod(ellps="WGS84")


def _ground_spacing(grid: PixelGrid) -> tuple[float, float]:
    """Geodesic distance between the centres of neighbouring pixels, east and south."""
    cx, cy = grid.center_xy
    s = grid.scale_m
    lon, lat = xy_to_lonlat([cx, cx + s, cx], [cy, cy, cy - s], grid.crs)
    east = GEOD.inv(lon[0], lat[0], lon[1], lat[1])[2]
    south = GEOD.inv(lon[0], lat[0], lon[2], lat[2])[2]
    return east, south


@pytest.mark.parametrize("lat", [31.2, 60.0])
@pytest.mark.parametrize("scale", [10.0, 40.0])
def test_patch_is_on_true_ground_metres(provider, emu, lat, scale):
    grid = point_grid(10.5, lat, buffer_m=scale * 32, scale_m=scale)
    patch = provider.fetch(grid, SensorSpec(scale_m=scale), WINDOW)
    assert patch.data.dtype == np.uint16
    assert patch.data.shape == (3, 64, 64)
    assert patch.crs == "EPSG:32632" and patch.grid == grid
    east, south = _ground_spacing(patch.grid)
    # UTM's scale factor stays within 0.1% near the central meridian; Web Mercator
    # would give scale/cos(lat) on the ground (2x at 60N).
    assert east == pytest.approx(scale, rel=2e-3) and south == pytest.approx(scale, rel=2e-3)
    assert patch.valid.all()
    # The emulator rendered the world at exactly these pixel centres.
    lon, latc = emu.world.pixel_centers_lonlat(grid.crs, grid.transform, grid.width, grid.height)
    scenes = [s for s in emu.world.scenes_between(WINDOW.start, WINDOW.end) if s.cloudy_pct <= 30]
    expected = emu.world.composite(scenes, lon, latc, ("B4", "B3", "B2"), "median")
    np.testing.assert_array_equal(patch.data, expected)


def test_one_request_per_sample_and_no_size_checks(provider, emu):
    grid = point_grid(3.0, 31.2, 1120, 10)
    provider.fetch(grid, SensorSpec(), WINDOW)
    provider.fetch(grid.crop(0, 0, 100, 100), SensorSpec(), WINDOW)
    s = emu.stats.as_dict()
    assert s["compute_pixels"] == 2 and s["value_compute"] == 0
    assert provider.stats.as_dict()["sent"] == 2


def test_band_order_follows_the_spec(provider):
    grid = point_grid(3.0, 31.2, 320, 10)
    rgb = provider.fetch(grid, SensorSpec(bands=("B4", "B3", "B2")), WINDOW)
    bgr = provider.fetch(grid, SensorSpec(bands=("B2", "B3", "B4")), WINDOW)
    np.testing.assert_array_equal(rgb.data, bgr.data[::-1])
    assert rgb.bands == ("B4", "B3", "B2")
    assert not np.array_equal(rgb.data[0], rgb.data[2])


def test_composite_filters_by_date_and_cloud(provider, emu):
    grid = point_grid(3.0, 31.2, 640, 10)
    world = emu.world
    lon, lat = world.pixel_centers_lonlat(grid.crs, grid.transform, grid.width, grid.height)
    bands = ("B4", "B3", "B2")
    # A window holding exactly one scene: the mosaic is that scene.
    one = world.scenes_between("2022-06-01", "2022-07-01")[0]
    window = TemporalSpec.range(one.date.isoformat(), (one.date.replace(day=one.date.day + 1)).isoformat())
    mosaic = provider.fetch(grid, SensorSpec(composite="mosaic", cloudy_pct=100), window)
    np.testing.assert_array_equal(mosaic.data, world.composite([one], lon, lat, bands, "mosaic"))
    # The cloud filter keeps exactly the scenes at or under the threshold.
    summer = TemporalSpec.range("2022-06-01", "2022-09-01")
    scenes = world.scenes_between(summer.start, summer.end)
    assert {s.cloudy_pct <= 10 for s in scenes} == {True, False}
    strict = provider.fetch(grid, SensorSpec(cloudy_pct=10), summer)
    loose = provider.fetch(grid, SensorSpec(cloudy_pct=100), summer)
    clear = [s for s in scenes if s.cloudy_pct <= 10]
    np.testing.assert_array_equal(strict.data, world.composite(clear, lon, lat, bands, "median"))
    np.testing.assert_array_equal(loose.data, world.composite(scenes, lon, lat, bands, "median"))
    assert not np.array_equal(strict.data, loose.data)
    # Another year, other pixels (seasonal gain and clouds differ).
    winter = provider.fetch(grid, SensorSpec(), TemporalSpec.range("2021-01-01", "2021-02-01"))
    assert not np.array_equal(winter.data, strict.data)


def test_no_imagery_is_its_own_error_from_one_request(provider, emu):
    grid = point_grid(3.0, 31.2, 320, 10)
    with pytest.raises(NoImageryError, match="no scene matches.*Band pattern 'B4' was applied to an Image "
                                             "with no bands"):
        provider.fetch(grid, SensorSpec(), TemporalSpec.range("2015-01-01", "2015-02-01"))
    with pytest.raises(NoImageryError):  # every scene is cloudier than 0%
        provider.fetch(grid, SensorSpec(cloudy_pct=0), TemporalSpec.range("2022-06-20", "2022-06-29"))
    assert emu.stats.as_dict()["compute_pixels"] == 2
    assert emu.stats.as_dict()["value_compute"] == 0
    # Counted as no imagery, not as failed requests.
    stats = provider.stats.as_dict()
    assert stats["no_imagery"] == 2 and stats["failed"] == 0 and stats["sent"] == 2


@pytest.mark.parametrize("bands", [("B4", "XX"), ("B04", "B3", "B2")])
def test_unknown_band_is_a_configuration_error_not_no_imagery(provider, bands):
    # A typo in the first band too: Earth Engine's wording tells it from an empty composite.
    with pytest.raises(ConfigurationError, match=rf"bands=.*Pattern '{bands[-1] if bands[0] == 'B4' else 'B04'}' "
                                                 r"did not match any bands.*fix SensorSpec.bands"):
        provider.fetch(point_grid(3.0, 31.2, 320, 10), SensorSpec(bands=bands), WINDOW)
    assert provider.stats.as_dict()["no_imagery"] == 0


@pytest.mark.parametrize("kind", ["429", "5xx", "malformed"])
def test_bursts_are_survived_by_retries(provider, emu, kind):
    grid = point_grid(3.0, 31.2, 320, 10)
    clean = provider.fetch(grid, SensorSpec(), WINDOW)
    emu.fail_next(4, kind)
    again = provider.fetch(grid, SensorSpec(), WINDOW)
    np.testing.assert_array_equal(clean.data, again.data)
    stats = provider.stats.as_dict()
    assert stats["retried"] == 4 and stats["sent"] == 6 and stats["failed"] == 0


def test_retries_give_up_with_the_reason(provider, emu):
    emu.fail_next(FAST_RETRY.max_retries + 1, "5xx")
    with pytest.raises(TransientProviderError, match="HTTP 503.*gave up after 7 attempts"):
        provider.fetch(point_grid(3.0, 31.2, 320, 10), SensorSpec(), WINDOW)
    assert provider.stats.as_dict()["failed"] == 1


def test_permanent_400_is_not_retried_and_says_why(provider, emu):
    emu.fail_next(1, "400")
    with pytest.raises(PermanentProviderError, match="HTTP 400.*Injected permanent failure"):
        provider.fetch(point_grid(3.0, 31.2, 320, 10), SensorSpec(), WINDOW)
    assert provider.stats.as_dict()["sent"] == 1 and provider.stats.as_dict()["retried"] == 0
    assert provider.stats.as_dict()["failed"] == 1


def test_unknown_collection_is_a_configuration_error(provider, emu):
    with pytest.raises(ConfigurationError, match="collection='NO/SUCH'.*HTTP 400.*ImageCollection asset "
                                                 "'NO/SUCH' not found.*fix SensorSpec.collection"):
        provider.fetch(point_grid(3.0, 31.2, 320, 10), SensorSpec(collection="NO/SUCH"), WINDOW)
    assert provider.stats.as_dict()["sent"] == 1 and provider.stats.as_dict()["retried"] == 0


def test_request_size_limit_is_checked_before_sending(provider, emu):
    big = PixelGrid("EPSG:32631", 500000, 3500000, 10, 4000, 2100)  # 48.07 MiB in 3 bands
    assert big.nbytes(3, 2) > REQUEST_BYTE_LIMIT
    with pytest.raises(RequestTooLargeError, match="expected at most 48 MiB"):
        provider.fetch(big, SensorSpec(), WINDOW)
    assert emu.stats.as_dict()["compute_pixels"] == 0
    assert check_request_size(big.crop(0, 0, 2000, 4000), 3) == 2000 * 4000 * 6


def test_emulator_refuses_requests_over_48_mib(provider, emu):
    provider.fetch(point_grid(3.0, 31.2, 320, 10), SensorSpec(), WINDOW)  # initialise the client
    big = PixelGrid("EPSG:32631", 500000, 3500000, 10, 4000, 2100)
    image = provider.composite(big, SensorSpec(), WINDOW)
    with pytest.raises(ee.EEException, match="Total request size"):
        ee.data.computePixels({"expression": image, "fileFormat": "NPY", "grid": rest_grid(big)})
    assert emu.stats.as_dict()["too_large"] == 1


def test_same_place_agrees_across_scales_and_crs(provider):
    sensor10, sensor20 = SensorSpec(scale_m=10), SensorSpec(scale_m=20)
    g20 = point_grid(6.0, 45.0, 640, 20)
    g10 = PixelGrid(g20.crs, g20.x0, g20.y0, 10.0, 2 * g20.width, 2 * g20.height)
    coarse = provider.fetch(g20, sensor20, WINDOW).data.astype(float)
    fine = provider.fetch(g10, sensor10, WINDOW).data.astype(float)
    pooled = fine.reshape(3, 64, 2, 64, 2).mean(axis=(2, 4))
    assert np.corrcoef(pooled.ravel(), coarse.ravel())[0, 1] > 0.9
    # The same ground in zones 31 and 32: nearest pixels agree.
    z31 = provider.fetch(point_grid(6.0, 45.0, 640, 10, crs="EPSG:32631"), sensor10, WINDOW)
    z32 = provider.fetch(point_grid(6.0, 45.0, 640, 10, crs="EPSG:32632"), sensor10, WINDOW)
    lon, lat = xy_to_lonlat(*_centres(z32.grid), z32.grid.crs)
    x31, y31 = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32631", always_xy=True).transform(lon, lat)
    col = np.floor((x31 - z31.grid.x0) / 10).astype(int)
    row = np.floor((z31.grid.y0 - y31) / 10).astype(int)
    inside = (col >= 0) & (col < z31.grid.width) & (row >= 0) & (row < z31.grid.height)
    a = z32.data[0].ravel()[inside.ravel()].astype(float)
    b = z31.data[0][row[inside], col[inside]].astype(float)
    assert inside.mean() > 0.5 and np.corrcoef(a, b)[0, 1] > 0.9


def _centres(grid):
    cols = grid.x0 + (np.arange(grid.width) + 0.5) * grid.scale_m
    rows = grid.y0 - (np.arange(grid.height) + 0.5) * grid.scale_m
    return np.meshgrid(cols, rows)


def test_provider_pickles_without_credentials_in_repr(provider):
    import pickle

    p = pickle.loads(pickle.dumps(provider))
    assert p.session == provider.session
    assert "anonymous" not in repr(p)
