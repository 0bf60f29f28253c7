"""Synthetic stores for the export and STAC tests: real cubes written with random vectors (no model)."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import shapely
import zarr

from rsembed_dask.store.cube import FAILED, NO_DATA, OK, Cube
from rsembed_dask.sampling import build_sample_table
from rsembed_dask.specs import CampaignSpec, ModelSpec, OutputSpec, TemporalSpec
from rsembed_dask.store.tiling import block_batches, create_or_open_tiling, rasterise_blocks
from rsembed_dask.sampling.tiling import tile_aoi

WINDOW = TemporalSpec.year(2024)


def sample_gdf(n: int, seed: int = 0, *, int_ids: bool = False, polygons: int = 0) -> gpd.GeoDataFrame:
    """``n`` random points over the Alps (the last ``polygons`` of them small boxes instead)."""
    rng = np.random.default_rng(seed)
    lon, lat = rng.uniform(5.0, 15.0, n), rng.uniform(40.0, 50.0, n)
    geoms = list(shapely.points(lon, lat))
    for i in range(n - polygons, n):
        geoms[i] = shapely.box(lon[i], lat[i], lon[i] + 0.03, lat[i] + 0.02)
    ids = np.arange(1000, 1000 + n) if int_ids else [f"site-{i:05d}" for i in range(n)]
    return gpd.GeoDataFrame(index=ids, geometry=geoms, crs="EPSG:4326")


def make_cube(path, gdf: gpd.GeoDataFrame, *, dim: int = 32, scales=(10.0, 40.0), chunk: int = 64,
              seed: int = 0, bad_fraction: float = 0.1, windows=None, dtype: str = "float32"):
    """A finished cube of ``gdf``: random vectors, about ``bad_fraction`` cells no_data or failed.
    ``windows`` (several TemporalSpec): a cube with a ``time`` dimension, every window written;
    ``dtype="int8"``: stored as the pipeline stores int8 (a factor per cell).

    Returns ``(cube, table)``; the table is the campaign's (Hilbert order = cube order).
    """
    rng = np.random.default_rng(seed)
    table = build_sample_table(gdf)
    spec = CampaignSpec(temporal=WINDOW if windows is None else windows[0], model=ModelSpec("test-tiny"),
                        scales=tuple(scales), chunk_size=chunk, output=OutputSpec.pooled(dtype=dtype))
    cube = Cube.create_or_open(path, spec=spec, ids=table.ids, lon=table.lon, lat=table.lat,
                               geohash=table.geohash, wkb=table.wkb, embed_dim=dim, windows=windows)
    n = len(table)
    handles = [cube] if windows is None else [cube.at_window(w) for w in range(len(windows))]
    for (si, s), handle in ((x, h) for h in handles for x in enumerate(cube.scales)):
        for a in range(0, n, chunk):
            b = min(a + chunk, n)
            m = b - a
            status = np.full(m, OK, np.int8)
            r = rng.random(m)
            status[r < bad_fraction / 2] = NO_DATA
            status[(r >= bad_fraction / 2) & (r < bad_fraction)] = FAILED
            emb = rng.normal(size=(m, dim)).astype(np.float32)
            emb[status != OK] = np.nan
            handle.write_unit(a, b, si, embedding=emb, status=status, input_res_m=np.full(m, s),
                              valid_fraction=rng.uniform(0.5, 1.0, m),
                              error=["boom" if st == FAILED else "" for st in status])
    return cube, table


def make_tiling(path, *, aoi=(5.95, 45.0, 6.1, 45.08), scales=(10, 40), dim: int = 16, seed: int = 0):
    """A finished tiling store over ``aoi`` (two UTM zones), grids rasterised. Returns the Tiling."""
    rng = np.random.default_rng(seed)
    tiling = tile_aoi(shapely.box(*aoi), scales=scales, image_size=32, block=8)
    spec = CampaignSpec(temporal=WINDOW, model=ModelSpec("test-tiny", image_size=32), scales=tiling.scales,
                        chunk_size=64)
    cubes = create_or_open_tiling(path, tiling, spec, embed_dim=dim)
    for s, table in zip(tiling.scales, tiling.tables):
        cube = cubes[s]
        for a in range(0, cube.n_samples, cube.chunk_size):
            b = min(a + cube.chunk_size, cube.n_samples)
            m = b - a
            status = np.where(rng.random(m) < 0.1, NO_DATA, OK).astype(np.int8)
            emb = rng.normal(size=(m, dim)).astype(np.float32)
            emb[status != OK] = np.nan
            cube.write_unit(a, b, 0, embedding=emb, status=status, input_res_m=np.full(m, s),
                            valid_fraction=np.ones(m), error=[""] * m)
        for batch in block_batches(table):
            lo, hi = batch[0][3], batch[-1][4]
            rasterise_blocks(str(path), s, table.block, batch, table.row[lo:hi], table.col[lo:hi])
    return tiling


def quantise_int8(path, *, per_cell: bool = False) -> dict:
    """Rewrite a cube's ``embedding`` as int8 with a ``geoemb:quantization`` attribute (the Zarr
    convention's Quantization Object): one scalar scale, or per cell an ``embedding_scale`` array.

    Returns the float32 values the int8 ones stand for (``{"embedding": array}``, NaN where not ok).
    """
    group = zarr.open_group(str(path), mode="r+", zarr_format=3)
    old = group["embedding"]
    values = np.asarray(old[...], dtype=np.float32)
    finite = np.isfinite(values)
    if per_cell:
        factor = np.where(finite.any(axis=2), np.nanmax(np.abs(np.where(finite, values, 0)), axis=2) / 127, 1.0)
        factor = np.maximum(factor, 1e-6).astype(np.float32)
        q = np.rint(np.where(finite, values, 0) / factor[..., None])
        scale_arr = group.create_array("embedding_scale", shape=factor.shape, dtype="float32",
                                       chunks=group["status"].chunks, fill_value=np.nan,
                                       dimension_names=("sample", "scale"))
        scale_arr[...] = factor
        quant = {"method": "per_cell_scale", "original_dtype": "float32", "quantized_dtype": "int8",
                 "scale": {"type": "array", "array_name": "embedding_scale"}}
        dequant = q * factor[..., None]
    else:
        scale, offset = 0.03, 0.1
        q = np.rint((np.where(finite, values, offset) - offset) / scale)
        quant = {"method": "linear", "original_dtype": "float32", "quantized_dtype": "int8",
                 "scale": {"type": "scalar", "scale": scale, "offset": offset}}
        dequant = np.clip(q, -127, 127) * scale + offset
    q = np.clip(q, -127, 127).astype(np.int8)
    new = group.create_array("embedding", shape=old.shape, dtype="int8", chunks=old.chunks, fill_value=0,
                             dimension_names=old.metadata.dimension_names, attributes=dict(old.attrs),
                             overwrite=True)
    new[...] = q
    group.attrs["geoemb:quantization"] = quant
    return {"embedding": np.where(finite, dequant, np.nan).astype(np.float32), "int8": q}
