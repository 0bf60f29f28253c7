"""The emulator's world changes between years, and embeddings see where.

The land cover of 2019 and 2024 differs in known places (clearings, growing towns,
new reservoirs, burn scars); composites differ there and, beyond clouds and the
medians of other scenes, nowhere else. Windows before Sentinel-2 or after the
world's "today" are empty composites, answered with Earth Engine's error, so the
provider calls them no imagery. End to end: two small campaigns (2019, 2024) with
``test-small`` random weights, and the cosine change score ranks the changed places
above the unchanged ones.
"""

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest

from rsembed_dask.campaign.run import run_campaign
from rsembed_dask.emulator import GEEEmulator
from rsembed_dask.emulator.land_cover import BASE_YEAR, LandCover
from rsembed_dask.emulator.synthetic_s2 import SyntheticS2World
from rsembed_dask.errors import NoImageryError
from rsembed_dask.explore import cosine_distance, roc_auc
from rsembed_dask.geo.grid import xy_to_lonlat
from rsembed_dask.providers.gee import GEEProvider
from rsembed_dask.sampling import build_sample_table
from rsembed_dask.sampling.tiling import tile_aoi
from rsembed_dask.specs import ModelSpec, SensorSpec, TemporalSpec
from rsembed_dask.store.cube import OK

from ..conftest import FAST_RETRY

RGB = ("B4", "B3", "B2")
# Half a year of scenes, the same months both years (seasons cancel out).
MONTHS = ("04-01", "10-01")
SCALE = 10.0
MODEL = ModelSpec("test-small", device="cpu", batch_size=16)
# Tiles of these AOIs (seed 0) whose footprint changed on >= CHANGED of its pixels are
# "changed", those under UNCHANGED "unchanged"; the rest (a little change) is left out.
AOIS = ((2.0, 31.25, 2.2, 31.4), (3.0, 31.0, 3.2, 31.15))
CHANGED, UNCHANGED = 0.10, 0.005
N_UNCHANGED = 20
MIN_AUC = 0.9


def _window(year):
    return TemporalSpec.range(f"{year}-{MONTHS[0]}", f"{year}-{MONTHS[1]}")


def test_the_base_year_is_the_map_without_a_year():
    rng = np.random.default_rng(3)
    lon, lat = rng.uniform(-180, 180, 50_000), rng.uniform(-60, 80, 50_000)
    lc = LandCover(0)
    np.testing.assert_array_equal(lc.classes(lon, lat), lc.classes(lon, lat, BASE_YEAR))
    assert not lc.changed(lon, lat, BASE_YEAR, BASE_YEAR).any()
    # The world changes, a few per cent of it over five years, more over ten.
    five, ten = lc.changed(lon, lat, 2019, 2024).mean(), lc.changed(lon, lat, 2016, 2026).mean()
    assert 0.01 < five < 0.1 and ten > five


def test_every_kind_of_change_happens():
    lon, lat = np.meshgrid(np.linspace(3.0, 3.5, 400), np.linspace(31.0, 31.5, 400))
    lc = LandCover(0)
    a, b = lc.classes(lon, lat, 2019), lc.classes(lon, lat, 2024)
    pairs = {(int(x), int(y)) for x, y in zip(a[a != b], b[a != b])}
    FOREST, CROPLAND, URBAN, BARE, WATER = 1, 2, 3, 4, 0
    assert (FOREST, CROPLAND) in pairs                                  # cleared
    assert {(CROPLAND, URBAN), (BARE, URBAN), (FOREST, URBAN)} & pairs  # towns grow
    assert any(y == WATER for _, y in pairs)                            # a new reservoir
    assert (BARE, FOREST) in pairs or (FOREST, BARE) in pairs           # a burn scar, then recovery
    # Towns only grow.
    assert not any(x == URBAN and y != URBAN and y != WATER for x, y in pairs)


def test_composites_differ_where_the_land_changed():
    w = SyntheticS2World(0, today="2026-01-01")
    lon, lat = np.meshgrid(np.linspace(3.0, 3.2, 160), np.linspace(31.0, 31.15, 120))
    changed = w.changed(lon, lat, 2019, 2024)
    comps = [w.composite([s for s in w.scenes_between(_window(y).start, _window(y).end) if s.cloudy_pct <= 30],
                         lon, lat, RGB, "median").astype(np.float64) for y in (2019, 2024)]
    diff = np.abs(comps[0] - comps[1]).mean(axis=0)
    print(f"\nmean |2019 - 2024| (reflectance x 1e4): changed {diff[changed].mean():.0f}, "
          f"unchanged {diff[~changed].mean():.0f}")
    assert changed.mean() > 0.01
    assert diff[changed].mean() > 5 * diff[~changed].mean()
    assert np.median(diff[~changed]) < 0.03 * np.median(comps[0])


def test_windows_before_sentinel2_or_after_today_are_empty(tmp_path):
    with GEEEmulator(seed=0, today="2024-06-30") as emu:
        provider = GEEProvider(api_url=emu.url, credentials="anonymous", project="t", retry=FAST_RETRY)
        g = tile_aoi((3.0, 31.0, 3.02, 31.02), scales=[SCALE]).tables[0]
        grid = g.lattice(int(g.epsg[0])).tile_grid(int(g.row[0]), int(g.col[0]))
        sr, toa = SensorSpec(scale_m=SCALE), SensorSpec(collection="COPERNICUS/S2_HARMONIZED", scale_m=SCALE)
        assert provider.fetch(grid, sr, TemporalSpec.range("2024-01-01", "2024-06-01")).valid_fraction > 0.99
        for sensor, window, why in [(sr, TemporalSpec.year(2030), "after today"),
                                    (sr, TemporalSpec.range("2024-07-01", "2024-12-01"), "after today"),
                                    (sr, TemporalSpec.year(2016), "before the SR collection"),
                                    (toa, TemporalSpec.year(2014), "before Sentinel-2")]:
            with pytest.raises(NoImageryError, match="no bands"):
                provider.fetch(grid, sensor, window)
            print(f"{sensor.collection} {window.start}..{window.end}: no imagery ({why})")
        # Top of atmosphere has 2016; surface reflectance begins in 2017.
        assert provider.fetch(grid, toa, TemporalSpec.year(2016)).valid_fraction > 0.99


def _points_and_truth():
    """Tile centres of AOIS, and each footprint's changed fraction 2019 -> 2024 (seed 0)."""
    world = SyntheticS2World(0)
    lons, lats = [], []
    for aoi in AOIS:
        t = tile_aoi(aoi, scales=[SCALE]).tables[0]
        for e, r, c in zip(t.epsg, t.row, t.col):
            g = t.lattice(int(e)).tile_grid(int(r), int(c))
            lon, lat = xy_to_lonlat(np.array([g.x0 + g.width * g.scale_m / 2]),
                                    np.array([g.y0 - g.height * g.scale_m / 2]), g.crs)
            lons.append(float(lon[0]))
            lats.append(float(lat[0]))
    gdf = gpd.GeoDataFrame({"site": [f"s{i:03d}" for i in range(len(lons))]},
                           geometry=gpd.points_from_xy(lons, lats), crs="EPSG:4326")
    table = build_sample_table(gdf, id_column="site")  # in Hilbert order, not the frame's
    row = {sid: i for i, sid in enumerate(table.ids)}
    frac = []
    for sid in gdf.site:
        g = table.footprint(row[sid], SCALE, MODEL_IMAGE).grid
        frac.append(world.changed_grid(g.crs, g.transform, g.width, g.height, 2019, 2024).mean())
    frac = np.asarray(frac)
    changed = np.flatnonzero(frac >= CHANGED)
    unchanged = np.flatnonzero(frac < UNCHANGED)[:N_UNCHANGED]
    keep = np.r_[changed, unchanged]
    return gdf.iloc[keep].reset_index(drop=True), frac[keep] >= CHANGED, frac[keep]


MODEL_IMAGE = 224


@pytest.mark.timeout(900)  # two small campaigns: about 150 s on a loaded 2-core machine
def test_change_score_ranks_changed_land_first(tmp_path, client, emulator):
    gdf, truth, frac = _points_and_truth()
    assert truth.sum() >= 8 and (~truth).sum() >= 15
    provider = GEEProvider(api_url=emulator.url, credentials="anonymous", project="change", retry=FAST_RETRY)
    emb = {}
    for year in (2019, 2024):
        ds = run_campaign(gdf, tmp_path / f"y{year}.zarr", scales=[SCALE], temporal=_window(year), model=MODEL,
                          backend=provider, id_column="site", client=client, progress=False)
        assert (ds.status.values == OK).all()
        emb[year] = ds.embedding.sel(sample=gdf.site.tolist()).values[:, 0, :]
    score = cosine_distance(emb[2019], emb[2024])
    auc = roc_auc(score, truth)
    print(f"\nchange AUC: {auc:.3f} ({int(truth.sum())} changed tiles, {int((~truth).sum())} unchanged; "
          f"median score changed {np.median(score[truth]):.4f}, unchanged {np.median(score[~truth]):.4f})")
    assert auc >= MIN_AUC


# The picture of the change between two tiling campaigns (the docs show it).
CHANGE_FIGURE = Path(__file__).resolve().parents[2] / "docs" / "img" / "change_2019_2024.png"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_change_map_of_a_tiling_store_over_two_years(tmp_path, client, emulator):
    """``explore.change`` on one tiling store with time (2019, 2024): the cosine distance of each
    zone grid cell ranks the tiles whose land cover changed above the unchanged ones (AUC >= 0.9),
    drawn beside the true changed fraction of each tile."""
    from PIL import Image

    from rsembed_dask.emulator.semantic import changed_fractions
    from rsembed_dask.explore import change, map_png, scalar_rgba
    from rsembed_dask.geo.grid import PixelGrid

    provider = GEEProvider(api_url=emulator.url, credentials="anonymous", project="change-map", retry=FAST_RETRY)
    tiling = tile_aoi(AOIS[1], scales=[SCALE])
    name = f"{SCALE:g}m"
    tree = run_campaign(tiling, tmp_path / "t.zarr", temporal=[_window(2019), _window(2024)], model=MODEL,
                        backend=provider, client=client, progress=False)
    zones = [k for k in tree[name].children]
    assert len(zones) == 1
    grid = tree[f"{name}/{zones[0]}"].to_dataset()
    assert grid.sizes["time"] == 2
    ok = (grid.status.values[0] == OK) & (grid.status.values[1] == OK)
    score = change(tmp_path / "t.zarr", 2019, 2024, scale=SCALE)[zones[0]].values
    assert np.isfinite(score[ok]).all() and np.isnan(score[~ok]).all()
    world = SyntheticS2World(0)
    crs = "EPSG:" + zones[0].removeprefix("EPSG")
    a = float(grid.x.values[1] - grid.x.values[0])  # one cell per tile
    assert a == pytest.approx(SCALE * MODEL_IMAGE)
    cells = [(i, j) for i in range(ok.shape[0]) for j in range(ok.shape[1]) if ok[i, j]]
    grids = [PixelGrid(crs, float(grid.x.values[j]) - a / 2, float(grid.y.values[i]) + a / 2, SCALE, MODEL_IMAGE,
                       MODEL_IMAGE) for i, j in cells]
    frac = np.full(score.shape, np.nan)
    frac[tuple(np.array(cells).T)] = changed_fractions(world, grids, 2019, 2024)
    keep = ok & ((frac >= CHANGED) | (frac < UNCHANGED))
    auc = roc_auc(score[keep], frac[keep] >= CHANGED)
    print(f"\nchange AUC: {auc:.3f} on the grid cells of {zones[0]} of one store with time "
          f"({int((frac[keep] >= CHANGED).sum())} changed, {int((frac[keep] < UNCHANGED).sum())} unchanged)")
    assert auc >= MIN_AUC
    rows, cols = np.flatnonzero(ok.any(axis=1)), np.flatnonzero(ok.any(axis=0))  # the tiles, not the whole grid
    crop = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    left, lo, hi = scalar_rgba(score[crop])
    right, _, fmax = scalar_rgba(frac[crop], 0.0, max(0.3, float(np.nanmax(frac))))
    map_png(left, tmp_path / "score.png", f"{zones[0]}, {SCALE:g} m tiles: change score 2019 -> 2024 (AUC {auc:.2f})",
            cell_m=a, colour_bar=(lo, hi, "cosine distance"))
    map_png(right, tmp_path / "truth.png", "true land-cover change 2019 -> 2024 (emulator)", cell_m=a,
            colour_bar=(0.0, fmax, "changed fraction of the tile"))
    panels = [Image.open(tmp_path / "score.png"), Image.open(tmp_path / "truth.png")]
    fig = Image.new("RGBA", (sum(p.width for p in panels) + 16, max(p.height for p in panels)), (255, 255, 255, 255))
    fig.paste(panels[0], (0, 0))
    fig.paste(panels[1], (panels[0].width + 16, 0))
    CHANGE_FIGURE.parent.mkdir(parents=True, exist_ok=True)
    fig.save(CHANGE_FIGURE)
