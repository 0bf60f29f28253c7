"""``make demo``: an offline end-to-end run on the Earth Engine emulator.

1. fetch one Sentinel-2 RGB composite through the real earthengine-api client
   and write it as a GeoTIFF plus a PNG quicklook;
2. embed it with the ``test-small`` ScaleMAE (random weights: a smoke test of
   the path, not meaningful features);
3. run a small campaign on a local Dask cluster into a Zarr cube.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import SpecError
from ..geo.grid import point_grid
from ..providers.base import Patch
from ..specs import DEFAULT_SCALES, ModelSpec, OutputSpec, PointBuffer, SensorSpec, TemporalSpec

__all__ = ["run_demo", "write_geotiff", "write_quicklook"]

log = logging.getLogger(__name__)

DEMO_MODEL = "test-small"
DEMO_WINDOW = TemporalSpec.range("2022-01-01", "2022-04-01")
DEMO_POINT = PointBuffer(3.0, 31.2, 1120.0)  # 224 px at 10 m


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


def run_demo(out: str | Path = "demo_out", n_samples: int = 200) -> dict:
    """Run the demo into ``out``; returns the paths and figures it printed.

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
        print(f"[1/3] fetched a {patch.grid.height}x{patch.grid.width} S2 RGB composite in {patch.crs} "
              f"at {patch.grid.scale_m:g} m through earthengine-api (emulator at {emulator_url})")
        print(f"      GeoTIFF: {tif}\n      quicklook: {png}")
        emb = get_embedding("scalemae_rgb", spatial=DEMO_POINT, temporal=DEMO_WINDOW, sensor=sensor,
                            output=OutputSpec.pooled(), backend=provider,
                            model=ModelSpec(DEMO_MODEL, device="cpu"), input_chw=patch.data)
    vec = np.asarray(emb.data)
    print(f"[2/3] embedded it with ScaleMAE '{DEMO_MODEL}' (random weights: checks the path, "
          f"not the features): {vec.shape[0]}-d vector, mean {vec.mean():.4f}, std {vec.std():.4f}, "
          f"input_res {emb.meta['input_res_m']:g} m")
    result = {"geotiff": str(tif), "quicklook": str(png), "embedding_dim": int(vec.shape[0])}
    result.update(_demo_campaign(out, n_samples))
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


def _demo_campaign(out: Path, n_samples: int) -> dict:
    """Step 3: a small campaign on a local Dask cluster (emulator, test-small, 3 scales)."""
    import geopandas as gpd

    from ..campaign.run import run_campaign

    rng = np.random.default_rng(0)
    gdf = gpd.GeoDataFrame(
        {"site": [f"site-{i:04d}" for i in range(n_samples)]},
        geometry=gpd.points_from_xy(rng.uniform(2.5, 3.5, n_samples), rng.uniform(30.8, 31.6, n_samples)),
        crs="EPSG:4326")
    cube_path = out / "campaign.zarr"
    print(f"[3/3] campaign: {n_samples} samples x scales 10/20/40 m on a local Dask cluster "
          f"(emulator, '{DEMO_MODEL}')")
    ds = run_campaign(gdf, cube_path, scales=DEFAULT_SCALES, temporal=DEMO_WINDOW,
                      model=ModelSpec(DEMO_MODEL), backend="emulator", id_column="site", chunk_size=32)
    print(f"      cube: {cube_path}\n      open it with:\n"
          f"        from rsembed_dask.store.cube import open_cube\n"
          f"        cube = open_cube({str(cube_path)!r}); cube.embedding.sel(scale=20)\n"
          f"      or: rsembed-dask inspect {cube_path}")
    return {"cube": str(cube_path), "cells": {k: int(v) for k, v in
                                               zip(*np.unique(ds.status.values, return_counts=True))}}
