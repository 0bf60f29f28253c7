"""End to end, semantically: embeddings of a tiling campaign find the land cover of the world.

The emulator's world has a known land-cover map. A tiling campaign (real ee client,
real Dask cluster, ``test-small`` with random weights) over an AOI holding several
classes: each tile is labelled by its majority class, and a 5-nearest-neighbour vote
on the cube's embeddings recovers that class far above chance. The same campaign run
on chips shifted by half a tile (east and south) scores clearly lower: the test
fails when pixels, footprints and embeddings stop lining up.
"""

import re
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest

from rsembed_dask.store.cube import OK
from rsembed_dask.geo.grid import PixelGrid, xy_to_lonlat
from rsembed_dask.campaign.run import run_campaign
from rsembed_dask.providers.gee import GEEProvider
from rsembed_dask.sampling import build_sample_table
from rsembed_dask.specs import ModelSpec, TemporalSpec
from rsembed_dask.emulator.land_cover import CLASS_NAMES
from rsembed_dask.emulator.semantic import knn_score, majority_classes
from rsembed_dask.sampling.tiling import tile_aoi

from ..conftest import FAST_RETRY

# 56 tiles of 4.48 km at 20 m (seed 0): water, forest, cropland and bare soil in
# comparable numbers, and many class boundaries (a half-tile shift changes the
# majority class of about 40 % of the tiles).
AOI = (2.0, 31.25, 2.3, 31.52)
SCALE = 20.0
WINDOW = TemporalSpec.range("2022-01-01", "2022-04-01")
MODEL = ModelSpec("test-small", device="cpu", batch_size=16)
K = 5
# Measured (seed 0, test-small): 0.91 on the tiles, 0.45 on chips half a tile off,
# chance 0.24. The bar sits between, with a margin on both sides.
MIN_AGREEMENT = 0.78
# The picture of the clean campaign (composite | true land cover | PCA), shown in the README.
FIGURE = Path(__file__).resolve().parents[2] / "docs" / "img" / "land_cover_knn.png"


@pytest.fixture(scope="module")
def world_provider(emulator):
    return emulator.world, GEEProvider(api_url=emulator.url, credentials="anonymous", project="semantic",
                                       retry=FAST_RETRY)


@pytest.fixture(scope="module")
def tiles():
    table = tile_aoi(AOI, scales=[SCALE]).tables[0]
    grids = [table.lattice(int(e)).tile_grid(int(r), int(c)) for e, r, c in zip(table.epsg, table.row, table.col)]
    return table, grids


@pytest.fixture(scope="module")
def tile_labels(world_provider, tiles):
    return majority_classes(world_provider[0], tiles[1])[0]


@pytest.fixture(scope="module")
def clean(tmp_path_factory, client, world_provider, tiles, tile_labels):
    """The tiling campaign's kNN score; its picture goes to docs/img (shown in the README)."""
    from rsembed_dask.cli.demo import write_land_cover_figure
    from rsembed_dask.explore.geotiff import grid_quicklook

    table, _ = tiles
    work = tmp_path_factory.mktemp("sem")
    tree = run_campaign(tile_aoi(AOI, scales=[SCALE]), work / "tiles.zarr", temporal=WINDOW, model=MODEL,
                        backend=world_provider[1], client=client, progress=False)
    ds = tree["samples/20m"].to_dataset()
    assert (ds.status.values == OK).all()
    assert ds.sample.values.tolist() == table.ids().tolist()
    score = knn_score(ds.embedding.values[:, 0, :], tile_labels, K)
    tif = [p for p in grid_quicklook(work / "tiles.zarr", SCALE, work / "ql", png=False) if p.endswith(".tif")]
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    write_land_cover_figure(tif[0], world_provider[0], FIGURE,
                            caption=f"{score.line()}, {score.n} tiles of {table.tile_m / 1000:g} km, k={K}, "
                                    f"'test-small' (random weights)")
    return score


def test_tile_labels_span_several_classes(tile_labels):
    counts = np.bincount(tile_labels, minlength=len(CLASS_NAMES))
    assert (counts >= 8).sum() >= 4, dict(zip(CLASS_NAMES, counts.tolist()))
    assert counts.max() <= 0.4 * len(tile_labels)


def test_knn_on_embeddings_recovers_the_land_cover(clean):
    assert FIGURE.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"\n{clean.line()} over {clean.n} tiles at {SCALE:g} m ({clean.classes()}), k={K}; "
          f"bar {MIN_AGREEMENT}")
    assert clean.agreement >= MIN_AGREEMENT
    assert clean.chance < 0.4 and clean.agreement > 2 * clean.chance


def test_chips_half_a_tile_off_score_clearly_lower(tmp_path, client, world_provider, tiles, tile_labels, clean):
    """The same vote on chips fetched half a tile east and south of their tiles (a shifted crop)."""
    table, grids = tiles
    half = table.tile_m / 2
    shifted = [PixelGrid(g.crs, g.x0 + half, g.y0 - half, g.scale_m, g.width, g.height) for g in grids]
    crs = grids[0].crs
    assert all(g.crs == crs for g in grids)
    cx = np.array([g.x0 + g.width * g.scale_m / 2 for g in shifted])
    cy = np.array([g.y0 - g.height * g.scale_m / 2 for g in shifted])
    lon, lat = xy_to_lonlat(cx, cy, crs)
    ids = table.ids().tolist()
    gdf = gpd.GeoDataFrame({"tile": ids}, geometry=gpd.points_from_xy(lon, lat), crs="EPSG:4326")
    ds = run_campaign(gdf, tmp_path / "shifted.zarr", scales=[SCALE], temporal=WINDOW, model=MODEL,
                      backend=world_provider[1], id_column="tile", client=client, progress=False)
    assert (ds.status.values == OK).all()
    emb = ds.embedding.sel(sample=ids).values[:, 0, :]
    # The campaign's footprints are exactly the shifted grids.
    samples = build_sample_table(gdf, id_column="tile")
    by_id = dict(zip(ids, shifted))
    assert all(samples.footprint(i, SCALE, 224).grid == by_id[sid] for i, sid in enumerate(samples.ids))
    off = knn_score(emb, tile_labels, K)
    print(f"\nchips half a tile off: {off.line()} (on the tiles: {clean.agreement:.2f}; bar {MIN_AGREEMENT})")
    assert off.agreement < MIN_AGREEMENT
    assert off.agreement <= clean.agreement - 0.15


def test_demo_step_draws_the_truth_beside_the_embeddings(tmp_path, client, capsys):
    """The demo's tiling step on a small area: its picture and its kNN line."""
    from PIL import Image

    from rsembed_dask.cli.demo import _demo_tiles
    from rsembed_dask.emulator.land_cover import CLASS_COLOURS

    result = _demo_tiles(tmp_path, aoi=(3.5, 30.25, 3.64, 30.38), client=client)
    printed = capsys.readouterr().out
    assert re.fullmatch(r"kNN class agreement: [01]\.\d\d \(chance 0\.\d\d\)", result["knn_line"])
    assert re.fullmatch(r"change AUC: ([01]\.\d\d|nan) \(\d+ tiles whose land cover changed .* 2019 -> 2024\)",
                        result["change_line"])
    assert "[4/4] tiling:" in printed and str(result["figure"]) in printed
    # One tiling store with time (2019, 2024) and its change map per zone (GeoTIFF + PNG).
    assert any(p.endswith(".tif") for p in result["change_maps"]) and result["change_maps"][0] in printed
    fig = np.asarray(Image.open(result["figure"]).convert("RGB"))
    # Three panels of the tiles' extent side by side: the middle one holds class colours only.
    assert len(tile_aoi((3.5, 30.25, 3.64, 30.38), scales=[SCALE]).tables[0]) >= 6
    gap, top = 16, 30
    width = (fig.shape[1] - 4 * gap) // 3
    assert width >= 320
    middle = fig[top + 5:top + 60, 2 * gap + width + 5:2 * gap + 2 * width - 5].reshape(-1, 3)
    palette = {tuple(c) for c in CLASS_COLOURS.tolist()}
    assert {tuple(p) for p in middle.tolist()} <= palette
    # A second row below (composite 2024 | land-cover change | change map): its middle panel holds
    # the faded class colours and red where the land changed.
    h = (fig.shape[0] - 84 - 2 * top) // 2  # two rows of panels, two caption lines under them
    y2 = 2 * top + h
    lower = fig[y2 + 5:y2 + h - 5, 2 * gap + width + 5:2 * gap + 2 * width - 5].reshape(-1, 3)
    faded = {tuple(int(v) for v in (0.3 * np.asarray(c) + 0.7 * 255).astype(np.uint8)) for c in CLASS_COLOURS.tolist()}
    assert {tuple(p) for p in lower.tolist()} <= faded | {(220, 20, 20)}
