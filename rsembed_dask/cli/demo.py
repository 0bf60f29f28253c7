"""``make demo``: an offline end-to-end run on the Earth Engine emulator.

1. fetch one Sentinel-2 RGB composite through the real earthengine-api client
   and write it as a GeoTIFF plus a PNG quicklook;
2. embed it with the ``test-small`` ScaleMAE (random weights: a smoke test of
   the path, not meaningful features);
3. run a small campaign (64 samples by default) on a local Dask cluster into a Zarr cube;
4. tile an area holding several land covers and embed every tile in two years (2019 and
   2024: one tiling store with a ``time`` dimension), and draw the emulator's composite,
   its true land-cover map and the embeddings' PCA side by side, and below them the
   2024 composite, the true land-cover change and the embeddings' change map (cosine
   distance per tile); a k-nearest-neighbour vote on the embeddings recovers each
   tile's majority class far above chance (printed as ``kNN class agreement: 0.xx
   (chance 0.yy)``) and the change score ranks the tiles whose land cover changed
   above the others (printed as ``change AUC: 0.xx``).

The emulator's world is synthetic but structured (water, forest, cropland, urban,
bare soil, snow): its class map is known, so step 4 checks that pixels,
footprints and embeddings line up, even with random weights.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import SpecError
from ..geo.grid import point_grid
from ..providers.base import Patch
from ..specs import DEFAULT_SCALES, ModelSpec, OutputSpec, PointBuffer, SensorSpec, TemporalSpec

__all__ = ["run_demo", "write_geotiff", "write_quicklook", "write_land_cover_figure"]

log = logging.getLogger(__name__)

DEMO_MODEL = "test-small"
DEMO_WINDOW = TemporalSpec.range("2022-01-01", "2022-04-01")
DEMO_POINT = PointBuffer(3.5, 30.45, 1120.0)  # 224 px at 10 m: a lake shore, a town, fields, bare soil
#: Step 4's area (minlon, minlat, maxlon, maxlat): 99 tiles of 4.48 km at 20 m over a lake,
#: forest, cropland and bare soil, with towns (emulator seed 0); 20 of them changed on >= 5 % of
#: their ground between 2019 and 2024, 38 on under 0.5 %.
DEMO_AOI = (3.55, 30.3, 4.0, 30.62)
DEMO_TILE_SCALE = 20.0
#: Step 4's years: one window of the same months each (seasons cancel out), one store with time.
DEMO_YEARS = (2019, 2024)
DEMO_TILE_WINDOWS = tuple(TemporalSpec.range(f"{y}-01-01", f"{y}-04-01") for y in DEMO_YEARS)
#: A tile "changed" when its land cover changed on at least this fraction of its ground, and
#: "unchanged" under the second; the tiles between are left out of the change AUC.
DEMO_CHANGED, DEMO_UNCHANGED = 0.05, 0.005
#: Neighbours in the kNN vote of step 4.
DEMO_K = 5
# Figure pixels per tile side in the step 4 picture (at least), and the least panel width.
_FIGURE_PX_PER_TILE = 32
_FIGURE_MIN_PANEL_PX = 320


def write_geotiff(patch: Patch, path: Path) -> Path:
    """Write ``patch`` as a band-named GeoTIFF (uint16, nodata 0)."""
    import rasterio
    from affine import Affine

    with rasterio.open(path, "w", driver="GTiff", width=patch.grid.width, height=patch.grid.height,
                       count=len(patch.bands), dtype="uint16", crs=patch.crs, nodata=0,
                       transform=Affine(*patch.transform)) as dst:
        dst.write(patch.data)
        for i, b in enumerate(patch.bands, start=1):
            dst.set_band_description(i, b)
    return path


def write_quicklook(patch: Patch, path: Path, max_reflectance: float = 3000.0) -> Path:
    """An RGB PNG of the patch, reflectance 0..``max_reflectance`` stretched to 0..255."""
    from PIL import Image

    rgb = np.clip(patch.data[:3].astype(np.float32) / max_reflectance, 0, 1) * 255
    Image.fromarray(rgb.astype(np.uint8).transpose(1, 2, 0)).save(path)
    return path


#: Campaign samples of step 3 (x 3 scales): enough for two units per scale, small enough that
#: the demo takes about two minutes on a 2-core CPU.
DEMO_SAMPLES = 64


def run_demo(out: str | Path = "demo_out", n_samples: int = DEMO_SAMPLES) -> dict:
    """Run the demo into ``out``; returns the paths and figures it printed.

    Steps 3 and 4 share one local Dask cluster (its workers start and load the model once).

    Parameters
    ----------
    out : str or Path
        Output directory (created if missing).
    n_samples : int
        Samples of the step 3 campaign.

    Returns
    -------
    dict
        Paths written (``geotiff``, ``quicklook``, ``cube``, ``tiles``, ``figure``, ``change_maps``)
        and figures (``embedding_dim``, ``cells``, ``knn_agreement``, ``knn_chance``, ``knn_line``,
        ``change_auc``, ``change_line``).

    Raises
    ------
    SpecError
        Before anything runs: ``n_samples`` not an integer >= 1, ``out`` a file, or
        ``out`` holding a demo cube of another number of samples.
    """
    from ..api import get_embedding
    from ..providers.backends import open_backend
    from ..providers.gee import GEEProvider

    out = _check_demo_args(out, n_samples)
    out.mkdir(parents=True, exist_ok=True)
    sensor = SensorSpec()
    grid = point_grid(DEMO_POINT.lon, DEMO_POINT.lat, DEMO_POINT.buffer_m, sensor.scale_m)
    with open_backend("emulator") as provider:
        patch = provider.fetch(grid, sensor, DEMO_WINDOW)
        emulator_url = provider.session.url if isinstance(provider, GEEProvider) else "?"
        tif = write_geotiff(patch, out / "s2_rgb.tif")
        png = write_quicklook(patch, out / "s2_rgb.png")
        print(f"[1/4] fetched a {patch.grid.height}x{patch.grid.width} S2 RGB composite in {patch.crs} "
              f"at {patch.grid.scale_m:g} m through earthengine-api (emulator at {emulator_url})")
        print(f"      GeoTIFF: {tif}\n      quicklook: {png}")
        emb = get_embedding("scalemae_rgb", spatial=DEMO_POINT, temporal=DEMO_WINDOW, sensor=sensor,
                            output=OutputSpec.pooled(), backend=provider,
                            model=ModelSpec(DEMO_MODEL, device="cpu"), input_chw=patch.data)
    vec = np.asarray(emb.data)
    print(f"[2/4] embedded it with ScaleMAE '{DEMO_MODEL}' (random weights: checks the path, "
          f"not the features): {vec.shape[0]}-d vector, mean {vec.mean():.4f}, std {vec.std():.4f}, "
          f"input_res {emb.meta['input_res_m']:g} m")
    result = {"geotiff": str(tif), "quicklook": str(png), "embedding_dim": int(vec.shape[0])}
    from distributed import Client

    from ..cluster.local import local_cluster

    with local_cluster() as cluster, Client(cluster) as client:
        result.update(_demo_campaign(out, n_samples, client))
        result.update(_demo_tiles(out, client=client))
    print(f"pictures: {png} (the fetched chip), {result['figure']} (composite | true land cover | "
          f"embeddings PCA, {DEMO_YEARS[0]}; below: composite {DEMO_YEARS[1]} | true land-cover change | "
          f"change score)")
    print(result["knn_line"])
    print(result["change_line"])
    return result


def _check_demo_args(out: str | Path, n_samples: int) -> Path:
    """Refuse the demo's arguments up front (nothing fetched, nothing written)."""
    import numbers

    if isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral) or n_samples < 1:
        raise SpecError("n_samples", n_samples, "an integer >= 1 (campaign samples)")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SpecError("out", str(out), "a directory (or a path to create), not a file")
    cube = out / "campaign.zarr"
    if cube.exists():
        from ..store.cube import Cube

        held = Cube.open(cube).n_samples
        if held != n_samples:
            raise SpecError("n_samples", n_samples, f"{held}, the samples of the demo cube already in {cube} "
                                                    f"(or another --out, or remove that cube)")
    return out


def _demo_campaign(out: Path, n_samples: int, client=None) -> dict:
    """Step 3: a small campaign on a local Dask cluster (emulator, test-small, 3 scales)."""
    import geopandas as gpd

    from ..campaign.run import run_campaign

    rng = np.random.default_rng(0)
    gdf = gpd.GeoDataFrame(
        {"site": [f"site-{i:04d}" for i in range(n_samples)]},
        geometry=gpd.points_from_xy(rng.uniform(2.5, 3.5, n_samples), rng.uniform(30.8, 31.6, n_samples)),
        crs="EPSG:4326")
    cube_path = out / "campaign.zarr"
    print(f"[3/4] campaign: {n_samples} samples x scales 10/20/40 m on a local Dask cluster "
          f"(emulator, '{DEMO_MODEL}')")
    ds = run_campaign(gdf, cube_path, scales=DEFAULT_SCALES, temporal=DEMO_WINDOW,
                      model=ModelSpec(DEMO_MODEL), backend="emulator", id_column="site", chunk_size=32,
                      client=client)
    print(f"      cube: {cube_path}\n      open it with:\n"
          f"        from rsembed_dask.store.cube import open_cube\n"
          f"        cube = open_cube({str(cube_path)!r}); cube.embedding.sel(scale=20)\n"
          f"      or: rsembed-dask inspect {cube_path}")
    return {"cube": str(cube_path), "cells": {k: int(v) for k, v in
                                               zip(*np.unique(ds.status.values, return_counts=True))}}


def _demo_tiles(out: Path, aoi=DEMO_AOI, client=None) -> dict:
    """Step 4: a tiling campaign over ``aoi`` in two years, its picture, its kNN class agreement
    and its change AUC (``client``: a Dask client, or None for a local cluster of its own)."""
    from ..campaign.run import run_campaign
    from ..emulator.semantic import changed_fractions, knn_score, majority_classes
    from ..emulator.synthetic_s2 import SyntheticS2World
    from ..explore.geotiff import grid_quicklook
    from ..explore.windows_change import cosine_distance, roc_auc, write_change
    from ..sampling.tiling import tile_aoi
    from ..store.cube import OK
    from ..store.tiling import scale_name

    tiling = tile_aoi(aoi, scales=[DEMO_TILE_SCALE])
    table = tiling.tables[0]
    store = out / "tiles.zarr"
    y0, y1 = DEMO_YEARS
    print(f"[4/4] tiling: {len(table)} tiles of {table.tile_m / 1000:g} km at {DEMO_TILE_SCALE:g} m over "
          f"{tuple(aoi)} in {y0} and {y1} (one store with time; emulator, '{DEMO_MODEL}')")
    tree = run_campaign(tiling, store, temporal=list(DEMO_TILE_WINDOWS), model=ModelSpec(DEMO_MODEL),
                        backend="emulator", client=client)
    samples = tree[f"samples/{scale_name(DEMO_TILE_SCALE)}"].to_dataset()
    world = SyntheticS2World(seed=0)  # the world of backend="emulator" (its default seed)
    grids = [table.lattice(int(e)).tile_grid(int(r), int(c)) for e, r, c in zip(table.epsg, table.row, table.col)]
    labels, _ = majority_classes(world, grids, year=y0)
    emb, status = samples.embedding.values[:, :, 0, :], samples.status.values[:, :, 0]
    ok = status[0] == OK
    score = knn_score(emb[0][ok], labels[ok], DEMO_K)
    # The change per tile (what the zone maps hold, cell by cell) against the true change.
    both = ok & (status[1] == OK)
    change = np.where(both, cosine_distance(emb[0], emb[1]), np.nan)
    frac = changed_fractions(world, grids, y0, y1)
    keep = both & ((frac >= DEMO_CHANGED) | (frac < DEMO_UNCHANGED))
    n_changed, n_same = int((keep & (frac >= DEMO_CHANGED)).sum()), int((keep & (frac < DEMO_UNCHANGED)).sum())
    auc = roc_auc(change[keep], frac[keep] >= DEMO_CHANGED) if n_changed and n_same else float("nan")
    change_line = (f"change AUC: {auc:.2f} ({n_changed} tiles whose land cover changed on >= "
                   f"{DEMO_CHANGED:.0%} of their ground vs {n_same} on < {DEMO_UNCHANGED:.1%}, {y0} -> {y1})")
    tifs = [p for p in grid_quicklook(store, DEMO_TILE_SCALE, out / "quicklooks", time=y0) if p.endswith(".tif")]
    maps = write_change(store, y0, y1, scale=DEMO_TILE_SCALE, out=out / "change")
    change_tifs = [str(p) for p in maps.values() if str(p).endswith(".tif")]
    figure = write_land_cover_figure(tifs[0], world, out / "land_cover_vs_embeddings.png",
                                     caption=f"{score.line()}, {score.n} tiles, k={DEMO_K}, "
                                             f"'{DEMO_MODEL}' (random weights)",
                                     windows=DEMO_TILE_WINDOWS, change_tif=change_tifs[0],
                                     change_caption=change_line)
    print(f"      store: {store}\n      quicklook GeoTIFF: {tifs[0]}\n      change map: {change_tifs[0]} "
          f"(and its PNG)\n      figure: {figure}\n      tiles by majority class: {score.classes()}")
    return {"tiles": str(store), "figure": str(figure), "knn_agreement": score.agreement,
            "knn_chance": score.chance, "knn_line": score.line(), "change_auc": auc, "change_line": change_line,
            "change_maps": [str(p) for p in maps.values()]}


def write_land_cover_figure(quicklook_tif, world, path: Path, caption: str = "",
                            px_per_tile: int | None = None, windows=(DEMO_WINDOW,), change_tif=None,
                            change_caption: str = "") -> Path:
    """One PNG: the emulator's S2 composite, the world's true land cover, and the PCA
    quicklook of a tiling (one cell per tile), side by side over the tiles' extent; with
    ``change_tif``, a second row: the composite of the second window, the true land-cover
    change between the windows' years (changed pixels red over the faded land cover) and
    the change map (cosine distance per tile, NaN white).

    Parameters
    ----------
    quicklook_tif : path
        A zone's GeoTIFF from :func:`~rsembed_dask.explore.geotiff.grid_quicklook`.
    world : SyntheticS2World
        The emulator's world (for the composite and the class map).
    path : path
        The PNG to write.
    caption : str
        A line under the panels.
    px_per_tile : int, optional
        Figure pixels per tile side (default: 32, more for a narrow area).
    windows : sequence of TemporalSpec
        The first row's window (the land cover of its start year), and with ``change_tif`` the second's.
    change_tif : path, optional
        The same zone's change GeoTIFF (:func:`~rsembed_dask.explore.windows_change.write_change`).
    change_caption : str
        A second line under the panels.

    Returns
    -------
    Path
        ``path``.
    """
    import rasterio
    from PIL import Image, ImageDraw, ImageFont

    from ..geo.grid import PixelGrid
    from ..emulator.land_cover import CLASS_COLOURS, CLASS_NAMES
    from ..explore.picture import scalar_rgba

    with rasterio.open(quicklook_tif) as src:
        rgba = src.read()
        t, crs = src.transform, src.crs.to_string()
    rows, cols = np.nonzero(rgba[3])
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    cells = rgba[:, r0:r1, c0:c1]
    if px_per_tile is None:
        px_per_tile = max(_FIGURE_PX_PER_TILE, -(-_FIGURE_MIN_PANEL_PX // int(c1 - c0)))
    tile_m = t.a
    cell_m = tile_m / px_per_tile
    grid = PixelGrid(crs, t.c + c0 * tile_m, t.f - r0 * tile_m, cell_m,
                     (c1 - c0) * px_per_tile, (r1 - r0) * px_per_tile)
    lon, lat = world.pixel_centers_lonlat(grid.crs, grid.transform, grid.width, grid.height)
    max_cloud = SensorSpec().cloudy_pct

    def composite_rgb(window) -> np.ndarray:
        scenes = [s for s in world.scenes_between(window.start, window.end) if s.cloudy_pct <= max_cloud]
        composite = world.composite(scenes, lon, lat, ("B4", "B3", "B2"), "median")
        return (np.clip(composite.astype(np.float32) / 3000.0, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)

    def upsample(a: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(a, px_per_tile, 0), px_per_tile, 1)

    year0 = int(windows[0].start[:4])
    land = world.land_cover(lon, lat, year=year0)
    pca = upsample(cells.transpose(1, 2, 0))
    pca = np.where(pca[..., 3:] > 0, pca[..., :3], 255).astype(np.uint8)
    panels = [(f"S2 composite {windows[0].start[:7]} (emulator)", composite_rgb(windows[0])),
              (f"true land cover {year0}", CLASS_COLOURS[land]), ("embeddings, PCA as RGB", pca)]
    if change_tif is not None:
        year1 = int(windows[1].start[:4])
        changed = land != world.land_cover(lon, lat, year=year1)
        faded = (0.3 * CLASS_COLOURS[land] + 0.7 * 255).astype(np.uint8)
        truth = np.where(changed[..., None], np.array([220, 20, 20], np.uint8), faded)
        with rasterio.open(change_tif) as src:
            score = src.read(1)[r0:r1, c0:c1]
        finite = score[np.isfinite(score)]
        # A few tiles of large change would leave the others one colour: stretch 2-98 %.
        lo, hi = (np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0))
        ramp, lo, hi = scalar_rgba(score, float(lo), float(hi))
        ramp = np.where(ramp[..., 3:] > 0, ramp[..., :3], 255).astype(np.uint8)
        panels += [(f"S2 composite {windows[1].start[:7]}", composite_rgb(windows[1])),
                   (f"true land-cover change {year0} -> {year1} (red)", truth),
                   ("change map (cosine distance, 2-98 % stretch)", upsample(ramp))]
    font = ImageFont.load_default(size=15)
    h, w = grid.height, grid.width
    gap, top, bottom = 16, 30, 62 + (22 if change_caption else 0)
    n_rows = len(panels) // 3
    fig = Image.new("RGB", (3 * w + 4 * gap, n_rows * (h + top) + bottom), "white")
    draw = ImageDraw.Draw(fig)
    for i, (title, img) in enumerate(panels):
        x, y = gap + (i % 3) * (w + gap), (i // 3) * (h + top) + top
        fig.paste(Image.fromarray(img), (x, y))
        draw.text((x, y - 22), title, fill="black", font=font)
    present = np.unique(land)
    x, y = gap, n_rows * (h + top) + 10
    for c in present:
        draw.rectangle((x, y + 2, x + 14, y + 16), fill=tuple(int(v) for v in CLASS_COLOURS[c]), outline="black")
        draw.text((x + 20, y), CLASS_NAMES[c], fill="black", font=font)
        x += 30 + int(draw.textlength(CLASS_NAMES[c], font=font))
    if caption:
        draw.text((gap, y + 26), caption, fill="black", font=font)
    if change_caption:
        draw.text((gap, y + 48), change_caption, fill="black", font=font)
    fig.save(path)
    return Path(path)
