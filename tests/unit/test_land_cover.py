"""The emulator's land cover: a seeded class map that the served pixels follow.

Classes are a function of ground position only (table and per-point lookups agree,
crops of a larger render are bit-identical, two UTM zones agree); each class has
the spectrum of its real surface; crops and snow follow the seasons; and the served
chips (real ee client) line up with the class map.
"""

import doctest

import numpy as np
import pyproj
import pytest

from rsembed_dask.errors import SpecError
from rsembed_dask.geo.grid import PixelGrid, point_grid
from rsembed_dask.specs import SensorSpec, TemporalSpec
from rsembed_dask.emulator import land_cover, semantic
from rsembed_dask.emulator.land_cover import (BARE, CLASS_NAMES, CROPLAND, FOREST, N_CLASSES, SNOW, URBAN, WATER,
                                             LandCover)
from rsembed_dask.emulator.synthetic_s2 import SyntheticS2World

WINTER = TemporalSpec.range("2022-01-01", "2022-04-01")
RGB = ("B4", "B3", "B2")


@pytest.fixture(scope="module")
def world():
    return SyntheticS2World(0)


def _scenes(world, start, end, max_cloud=30):
    return [s for s in world.scenes_between(start, end) if s.cloudy_pct <= max_cloud]


def _render(world, grid, start="2022-01-01", end="2022-04-01", bands=RGB, how="median"):
    lon, lat = world.pixel_centers_lonlat(grid.crs, grid.transform, grid.width, grid.height)
    return world.composite(_scenes(world, start, end), lon, lat, bands, how), world.land_cover(lon, lat)


def test_module_doctests():
    for module in (land_cover, semantic):
        result = doctest.testmod(module)
        assert result.attempted >= 2 and result.failed == 0, module.__name__


def test_classes_are_seeded_and_every_class_occurs():
    rng = np.random.default_rng(5)
    lon, lat = rng.uniform(-180, 180, 200_000), rng.uniform(-60, 80, 200_000)
    a, b, other = LandCover(0).classes(lon, lat), LandCover(0).classes(lon, lat), LandCover(1).classes(lon, lat)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.uint8 and (a != other).mean() > 0.3
    share = np.bincount(a, minlength=N_CLASSES) / a.size
    assert all(share[c] > 0.03 for c in range(N_CLASSES)), dict(zip(CLASS_NAMES, share.round(3)))
    # Permanent snow only towards the poles.
    assert not (a[np.abs(lat) < 55] == SNOW).any()
    assert (a[lat > 72] == SNOW).mean() > 0.5


def test_a_class_does_not_depend_on_the_points_around_it(world):
    """Node tables (dense points) and per-point hashes (sparse points) give the same map."""
    g = point_grid(2.15, 31.4, 10_000, 20.0)
    lon, lat = world.pixel_centers_lonlat(g.crs, g.transform, g.width, g.height)
    dense = world.land_cover(lon, lat)
    rng = np.random.default_rng(0)
    pick = rng.choice(lon.size, 40, replace=False)
    # Far-apart points force per-point hashing; each alone uses a tiny table.
    far_lon = np.r_[lon.ravel()[pick], [-120.0, 150.0]]
    far_lat = np.r_[lat.ravel()[pick], [-40.0, 60.0]]
    sparse = world.land_cover(far_lon, far_lat)[:40]
    alone = np.array([world.land_cover(lon.ravel()[i:i + 1], lat.ravel()[i:i + 1])[0] for i in pick])
    np.testing.assert_array_equal(sparse, dense.ravel()[pick])
    np.testing.assert_array_equal(alone, dense.ravel()[pick])
    assert len(np.unique(dense)) >= 4  # the area holds several classes


def test_patches_span_hundreds_of_metres_to_tens_of_kilometres(world):
    # Runs of one class along a 150 km west-east transect at 20 m.
    g = PixelGrid("EPSG:32631", 400_000.0, 3_480_000.0, 20.0, 7500, 1)
    classes = world.land_cover_grid(g.crs, g.transform, g.width, g.height)[0]
    edges = np.flatnonzero(np.diff(classes.astype(int)) != 0)
    runs_km = np.diff(np.r_[0, edges + 1, classes.size]) * 0.02
    assert runs_km.min() < 0.5 and runs_km.max() > 10, (runs_km.min(), runs_km.max())
    assert 10 < len(runs_km) < 1000


def test_spectra_are_those_of_the_surfaces(world):
    """Per-class mean reflectance of a rendered area: what a remote-sensing eye expects."""
    g = point_grid(3.775, 30.46, 20_000, 40.0)
    bands = ("B2", "B3", "B4", "B8", "B11")
    img, classes = _render(world, g, bands=bands)
    mean = {c: img[:, classes == c].astype(float).mean(axis=1) for c in range(N_CLASSES) if (classes == c).sum() > 200}
    assert {WATER, FOREST, CROPLAND, URBAN, BARE} <= set(mean)
    b2, b3, b4, b8, b11 = range(5)
    brightness = {c: m[:3].mean() for c, m in mean.items()}
    w, f, u, s = mean[WATER], mean[FOREST], mean[URBAN], mean[BARE]
    assert w[b2] > w[b4] and w[b8] < w[b4] and brightness[WATER] < 800  # dark, blue-ish, absorbs NIR
    assert f[b3] > f[b4] and f[b3] > f[b2] and f[b8] > 3 * f[b4]  # dark green, bright in NIR
    assert s[b4] > s[b3] > s[b2] and brightness[BARE] == max(brightness.values())  # bright, reddish
    assert max(u[:3]) / min(u[:3]) < 1.2  # grey
    # Towns are textured, water is smooth.
    std = {c: img[b4, classes == c].astype(float).std() / mean[c][b4] for c in (WATER, URBAN)}
    assert std[URBAN] > 3 * std[WATER]


def test_crops_green_up_in_season_and_snow_comes_in_winter(world):
    g = point_grid(3.775, 30.46, 20_000, 40.0)
    spring, classes = _render(world, g, "2022-04-15", "2022-06-15", bands=("B4", "B8"))
    autumn, _ = _render(world, g, "2022-09-15", "2022-11-15", bands=("B4", "B8"))
    crop = classes == CROPLAND

    def ndvi(img):
        red, nir = img.astype(float)
        return (nir - red) / (nir + red)

    # Medians over the class: a few pixels stay cloudy in a composite.
    assert np.median(ndvi(spring)[crop]) > np.median(ndvi(autumn)[crop]) + 0.15
    forest = classes == FOREST
    assert abs(np.median(ndvi(spring)[forest]) - np.median(ndvi(autumn)[forest])) < 0.03
    # At 62N: seasonal snow covers land in a January scene, not in a July one; the
    # class map of that day says so, and the pixels follow it (outside clouds).
    north = point_grid(20.0, 62.0, 20_000, 100.0)
    lon, lat = world.pixel_centers_lonlat(north.crs, north.transform, north.width, north.height)
    jan = world.scenes_between("2022-01-10", "2022-01-20")[0]
    jul = world.scenes_between("2022-07-10", "2022-07-20")[0]
    snow_jan = world.land_cover(lon, lat, date=jan.date) == SNOW
    snow_jul = world.land_cover(lon, lat, date=jul.date) == SNOW
    assert snow_jan.mean() > 0.3 and snow_jul.mean() < 0.5 * snow_jan.mean()
    img = world.composite([jan], lon, lat, RGB, "mosaic")
    clear = ~world.cloud_mask(jan, lon, lat)
    assert (img[:, snow_jan & clear] > 6000).all()
    assert (img[:, ~snow_jan & clear] < 6000).mean() > 0.99


@pytest.mark.parametrize("lon, lat, start, end", [
    (2.15, 31.4, "2022-01-01", "2022-04-01"),  # crops, towns, water
    (20.0, 64.0, "2022-01-01", "2022-04-01"),  # seasonal snow
    (-47.0, 0.0, "2022-06-01", "2022-09-01"),  # astride the equator: two crop seasons
])
def test_crops_of_a_render_are_bit_identical_to_the_crop_rendered_alone(world, lon, lat, start, end):
    g = point_grid(lon, lat, 3000, 10.0)
    big = PixelGrid(g.crs, g.x0, g.y0, 10.0, 300, 300)
    whole, classes = _render(world, big, start, end)
    assert len(np.unique(classes)) >= 2
    rng = np.random.default_rng(1)
    for _ in range(3):
        r, c = (int(v) for v in rng.integers(0, 200, 2))
        sub = big.crop(r, c, 100, 80)
        alone, _ = _render(world, sub, start, end)
        np.testing.assert_array_equal(alone, whole[:, r:r + 100, c:c + 80])


def test_two_utm_zones_see_the_same_classes(world):
    g31 = point_grid(6.0, 45.0, 5000, 10.0, crs="EPSG:32631")
    g32 = point_grid(6.0, 45.0, 5000, 10.0, crs="EPSG:32632")
    c31 = world.land_cover_grid(g31.crs, g31.transform, g31.width, g31.height)
    c32 = world.land_cover_grid(g32.crs, g32.transform, g32.width, g32.height)
    # The zone-31 pixel nearest each zone-32 pixel centre.
    xs = g32.x0 + (np.arange(g32.width) + 0.5) * 10
    ys = g32.y0 - (np.arange(g32.height) + 0.5) * 10
    xx, yy = np.meshgrid(xs, ys)
    to31 = pyproj.Transformer.from_crs("EPSG:32632", "EPSG:32631", always_xy=True)
    x31, y31 = to31.transform(xx, yy)
    col = np.floor((x31 - g31.x0) / 10).astype(int)
    row = np.floor((g31.y0 - y31) / 10).astype(int)
    inside = (col >= 0) & (col < g31.width) & (row >= 0) & (row < g31.height)
    assert inside.mean() > 0.5 and len(np.unique(c32)) >= 2
    assert (c32[inside] == c31[row[inside], col[inside]]).mean() > 0.98


def test_served_chips_follow_the_class_map(provider, emu):
    """Through the real ee client: a chip's pixels sort by the class map the world gives for them."""
    g = point_grid(3.6, 30.5, 2240, 20.0)
    patch = provider.fetch(g, SensorSpec(scale_m=20), WINTER)
    classes = emu.world.land_cover_grid(g.crs, g.transform, g.width, g.height)
    lon, lat = emu.world.pixel_centers_lonlat(g.crs, g.transform, g.width, g.height)
    expected = emu.world.composite(_scenes(emu.world, WINTER.start, WINTER.end), lon, lat, RGB, "median")
    np.testing.assert_array_equal(patch.data, expected)
    present = [c for c in range(N_CLASSES) if (classes == c).sum() > 500]
    assert len(present) >= 2
    red = {c: patch.data[0][classes == c].mean() for c in present}
    order = {WATER: 0, FOREST: 1, URBAN: 2, CROPLAND: 2, BARE: 3}
    ranked = sorted(present, key=lambda c: red[c])
    assert [order[c] for c in ranked] == sorted(order[c] for c in ranked), red


def test_knn_vote_and_chance():
    labels = np.repeat(np.arange(4), 10)
    rng = np.random.default_rng(2)
    separable = np.eye(4)[labels] + 0.05 * rng.normal(size=(40, 4))
    noise = rng.normal(size=(40, 4))
    good, bad = semantic.knn_score(separable, labels, 5), semantic.knn_score(noise, labels, 5)
    assert good.agreement == 1.0 and bad.agreement < 0.5
    assert 0.1 < good.chance < 0.4 and good.line() == f"kNN class agreement: 1.00 (chance {good.chance:.2f})"
    with pytest.raises(SpecError, match="10 rows with NaN or inf.*finite rows only"):
        semantic.knn_agreement(np.full((10, 3), np.nan), np.zeros(10, int), 3)
