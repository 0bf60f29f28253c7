"""The store of a tiling campaign: per-scale sample cubes plus georeferenced per-zone grids.

Layout (one Zarr v3 store, opened as an :class:`xarray.DataTree`)::

    out.zarr/                   attrs: tiling (scales, image size, block, token), campaign spec
      samples/10m/              a sample-layout cube (see cube_schema) of the 10 m tiles
      10m/EPSG32632/            embedding(y, x, feature), status(y, x), sample_index(y, x)
      10m/EPSG32633/            ... one group per UTM zone: each is one CRS, one grid
      40m/EPSG32632/

Each zone group has one cell per tile on the scale's tile lattice (cell size =
tile side), ``x``/``y`` cell-centre coordinates in metres and a ``spatial_ref``
coordinate with the CRS as WKT, so ``rioxarray`` reads ``rio.crs`` and
``rio.transform()``; its attributes carry the same as ``proj:code`` and
``spatial:transform``/``shape``/``bbox`` (Zarr conventions). Every group carries the
``geoemb:`` attributes (:mod:`rsembed_dask.geoemb`; chips on a regular grid). In an
int8 store (``OutputSpec(dtype="int8")``) the zone grids hold int8 ``embedding``
with ``embedding_scale(y, x)``, copied from the sample cubes as stored. The campaign writes the sample cubes unit by unit; the
grids are filled from them block by block (a block of tiles = one grid chunk,
so block writes never share a chunk) when a run ends.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from typing import Any

import numpy as np
import zarr

from .cube import Cube, probe_store
from .cube_store import CREATING_ATTR, check_writable, is_tiling_store, unfinished_store
from .cube_schema import FLAG_ATTRS, STATUS_NAMES, TILING_MARKER, default_versions
from .geoemb import geoemb_attrs, merge_conventions, zone_attrs
from .quantize import QUANTISED, is_quantised_dtype
from .errors import CubeError, SpecMismatchError
from .specs import CampaignSpec
from .tiling import TileTable, Tiling

__all__ = ["TILING_MARKER", "NO_TILE", "scale_name", "create_or_open_tiling", "is_tiling_store",
           "rasterise_blocks", "block_batches", "set_synced"]

log = logging.getLogger(__name__)

TILING_VERSION = 1
#: Grid status of cells without a tile (outside the AOI or in another zone).
NO_TILE = -1
#: Blocks filled per task when grids are rasterised.
BLOCKS_PER_TASK = 16


def scale_name(scale_m: float) -> str:
    """Group name of a scale: ``10.0 -> "10m"``, ``2.5 -> "2.5m"``."""
    return f"{float(scale_m):g}m"


def _identity(tiling: Tiling, spec: CampaignSpec) -> dict[str, Any]:
    return {"tiling": {"scales": list(tiling.scales), "image_size": tiling.image_size,
                       "block": tiling.block, "token": tiling.token()},
            "campaign": spec.identity()}


def create_or_open_tiling(path, tiling: Tiling, spec: CampaignSpec, *, embed_dim: int,
                          grid_shape=None, versions=None) -> dict[float, Cube]:
    """Create (or resume) the tiling store at ``path``; returns the sample cube per scale.

    A store whose creation was interrupted (:func:`~rsembed_dask.cube_store.unfinished_store`),
    or in which no unit has finished and that holds another AOI, tiling or spec, is
    recreated with a warning.

    Raises
    ------
    SpecMismatchError
        The store holds another AOI, tiling or campaign spec, and some unit finished in it.
    CubeError
        ``path`` is a file, or a directory that is not a tiling store.
    """
    path = os.path.abspath(os.fspath(path))
    identity = json.loads(json.dumps(_identity(tiling, spec), sort_keys=True))
    why = unfinished_store(path, tiling=True)
    if why is not None:
        why = f"its creation was interrupted ({why})"
    elif is_tiling_store(path):
        root = zarr.open_group(path, mode="r", zarr_format=3)
        stored = json.loads(root.attrs["tiling_identity"])
        if stored == identity:
            return {s: Cube.open(os.path.join(path, "samples", scale_name(s))) for s in tiling.scales}
        diffs = " and ".join(k for k in ("tiling", "campaign") if stored.get(k) != identity.get(k))
        if _any_finished(path):
            raise SpecMismatchError(f"tiling store {path!r} was written for another {diffs} "
                                    f"(stored {stored}, given {identity})")
        why = f"no unit has finished in it and it was written for another {diffs}"
    elif probe_store(path) is not None:  # CubeError for files and foreign stores
        raise CubeError(f"{path!r} is a sample cube, not a tiling store; choose another path")
    check_writable(path)
    if why is not None:
        log.warning("tiling store %s: %s; it is recreated", path, why)
    try:
        return _create_tiling(path, tiling, spec, identity, embed_dim, grid_shape, versions)
    except OSError as exc:
        raise CubeError(f"cannot create tiling store at {path!r}: {exc}; no unit ran in it, so running the "
                        "campaign again recreates it") from exc


def _create_tiling(path: str, tiling: Tiling, spec: CampaignSpec, identity: dict[str, Any], embed_dim: int,
                   grid_shape, versions) -> dict[float, Cube]:
    """Lay out the tiling store: the creating attribute first, the marker last (replacing it)."""
    versions = default_versions(versions)
    root = zarr.open_group(path, mode="w", zarr_format=3, attributes={
        CREATING_ATTR: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
    root.create_group("samples", attributes=geoemb_attrs(spec, embed_dim, layout="regular_grid", versions=versions))
    cubes = {}
    for s, table in zip(tiling.scales, tiling.tables):
        sub = spec.replace(scales=(s,))
        chunk = spec.chunk_size
        cubes[s] = Cube.create_or_open(
            os.path.join(path, "samples", scale_name(s)), spec=sub, embed_dim=embed_dim,
            grid_shape=grid_shape, versions=versions, n_samples=len(table),
            chunks=lambda table=table, chunk=chunk: (
                {"ids": t.ids, "lon": t.lon, "lat": t.lat, "geohash": t.geohash, "wkb": t.wkb}
                for _, t in table.chunks(max(chunk, 4096))))
        # Tiles lie side by side: the sample cube's chips are a regular grid (Cube writes "irregular").
        zarr.open_group(cubes[s].path, mode="r+", zarr_format=3).attrs.update(
            geoemb_attrs(sub, embed_dim, layout="regular_grid", versions=versions))
        scale_geoemb = geoemb_attrs(sub, embed_dim, layout="regular_grid", spatial_layout="utm_zones",
                                    versions=versions)
        _create_grids(root.create_group(scale_name(s), attributes={
            **scale_geoemb, "scale_m": s, "tile_m": table.tile_m, "image_size": table.image_size}),
            table, embed_dim, geoemb_attrs(sub, embed_dim, layout="regular_grid", versions=versions),
            spec.output.dtype)
    root.attrs.put({
        **geoemb_attrs(spec, embed_dim, layout="regular_grid", spatial_layout="utm_zones", versions=versions),
        "tiling_identity": json.dumps(identity, sort_keys=True),
        "campaign_spec": spec.to_json(), "aoi_wkb_hex": tiling.aoi_wkb.hex(),
        "raster_synced": False, TILING_MARKER: TILING_VERSION})
    return cubes


def _any_finished(path: str) -> bool:
    """Whether any cell of the store's sample cubes is not pending."""
    samples = os.path.join(path, "samples")
    return any(Cube.open(os.path.join(samples, name))._any_finished() for name in sorted(os.listdir(samples))
               if os.path.isdir(os.path.join(samples, name)))


def _grid_extent(table: TileTable, epsg: int) -> tuple[int, int, int, int]:
    """Block-aligned ``(row_top, n_rows, col_left, n_cols)`` of a zone's grid."""
    b = table.block
    r_min, r_max, c_min, c_max = table.extent(epsg)
    row_top = (r_max // b + 1) * b - 1
    col_left = (c_min // b) * b
    return row_top, row_top - (r_min // b) * b + 1, col_left, (c_max // b + 1) * b - col_left


def _create_grids(group: zarr.Group, table: TileTable, embed_dim: int, geoemb: dict[str, Any],
                  dtype: str = "float32") -> None:
    """One group per zone: ``embedding(y, x, feature)`` (int8 with ``embedding_scale(y, x)`` when
    ``dtype`` is int8), ``status``, ``sample_index``, coordinates, and the ``geoemb:``
    (``geoemb``), ``proj:`` and ``spatial:`` attributes."""
    from affine import Affine
    from pyproj import CRS

    b, t = table.block, table.tile_m
    int8 = is_quantised_dtype(dtype)
    for epsg in table.zones():
        row_top, ny, col_left, nx = _grid_extent(table, epsg)
        lattice = table.lattice(epsg)
        transform = Affine(*lattice.raster_transform(row_top, col_left))
        a, _, c, _, e, f = transform[:6]
        wkt = CRS.from_epsg(epsg).to_wkt()
        g = group.create_group(f"EPSG{epsg}", attributes={
            **merge_conventions(geoemb, zone_attrs(epsg, transform, (ny, nx))),
            "crs": f"EPSG:{epsg}", "row_top": row_top, "col_left": col_left})
        ref = {"grid_mapping": "spatial_ref", "coordinates": "spatial_ref"}
        scale = QUANTISED["embedding"]
        g.create_array("embedding", shape=(ny, nx, embed_dim), dtype="int8" if int8 else "float32",
                       chunks=(b, b, embed_dim), fill_value=0 if int8 else np.nan,
                       dimension_names=("y", "x", "feature"),
                       attributes={**ref, "long_name": "pooled embedding of the tile"
                                   + (f", int8: multiply by {scale}" if int8 else "")})
        if int8:
            g.create_array(scale, shape=(ny, nx), dtype="float32", chunks=(b, b), fill_value=np.nan,
                           dimension_names=("y", "x"), attributes={
                               **ref, "long_name": f"dequantisation scale of embedding per tile "
                                                   f"(embedding * {scale}; NaN: no data)"})
        g.create_array("status", shape=(ny, nx), dtype="int8", chunks=(b, b), fill_value=NO_TILE,
                       dimension_names=("y", "x"), attributes={
                           **ref, "long_name": "embedding status",
                           "flag_values": [NO_TILE, *FLAG_ATTRS["flag_values"]],
                           "flag_meanings": "no_tile " + " ".join(STATUS_NAMES)})
        g.create_array("sample_index", shape=(ny, nx), dtype="int64", chunks=(b, b), fill_value=-1,
                       dimension_names=("y", "x"), attributes={
                           **ref, "long_name": f"row of the tile in samples/{scale_name(table.scale_m)}"})
        for name, n, start, step, std in (("x", nx, c, a, "projection_x_coordinate"),
                                          ("y", ny, f, e, "projection_y_coordinate")):
            arr = g.create_array(name, shape=(n,), dtype="float64", chunks=(n,), fill_value=np.nan,
                                 dimension_names=(name,), attributes={"standard_name": std, "units": "m"})
            arr[...] = start + step * (np.arange(n) + 0.5)
        g.create_array("feature", shape=(embed_dim,), dtype="int64", chunks=(embed_dim,), fill_value=0,
                       dimension_names=("feature",))[...] = np.arange(embed_dim)
        g.create_array("spatial_ref", shape=(), dtype="int32", fill_value=0, attributes={
            "crs_wkt": wkt, "spatial_ref": wkt, "GeoTransform": f"{c} {a} 0.0 {f} 0.0 {e}"})
        log.debug("grid %s/EPSG%d: %d x %d cells of %g m", group.path, epsg, ny, nx, t)


def block_batches(table: TileTable, per_task: int = BLOCKS_PER_TASK) -> list[list[tuple]]:
    """The table's blocks ``(epsg, brow, bcol, start, stop)`` in batches of ``per_task``."""
    blocks = list(table.blocks())
    return [blocks[i:i + per_task] for i in range(0, len(blocks), per_task)]


def rasterise_blocks(path: str, scale_m: float, block: int, blocks: list[tuple], row, col) -> int:
    """Copy the tiles of ``blocks`` from the scale's sample cube into its zone grids.

    ``blocks`` are consecutive ``(epsg, brow, bcol, start, stop)`` of the tile table;
    ``row``/``col`` its tile indices from the first block's ``start`` to the last
    one's ``stop`` (only those travel to the worker). Each block is written as one
    whole grid chunk (cells without a tile get ``NO_TILE``), so batches may run
    concurrently. Returns the tiles copied.
    """
    name = scale_name(scale_m)
    samples = zarr.open_group(os.path.join(path, "samples", name), mode="r", zarr_format=3)
    grids = zarr.open_group(os.path.join(path, name), mode="r+", zarr_format=3)
    b, base, copied = int(block), blocks[0][3], 0
    for epsg, brow, bcol, start, stop in blocks:
        g = grids[f"EPSG{epsg}"]
        row_top, col_left = int(g.attrs["row_top"]), int(g.attrs["col_left"])
        emb = np.asarray(samples["embedding"][start:stop, 0, :])
        status = np.asarray(samples["status"][start:stop, 0])
        top = (brow + 1) * b - 1  # tile row of the block's first grid row
        r = top - np.asarray(row[start - base:stop - base])
        c = np.asarray(col[start - base:stop - base]) - bcol * b
        int8 = emb.dtype.kind == "i"  # int8 store: values and scales are copied as stored
        out_e = np.full((b, b, emb.shape[1]), 0 if int8 else np.nan, emb.dtype)
        out_s = np.full((b, b), NO_TILE, np.int8)
        out_i = np.full((b, b), -1, np.int64)
        out_e[r, c], out_s[r, c], out_i[r, c] = emb, status, np.arange(start, stop)
        r0, c0 = row_top - top, bcol * b - col_left
        g["embedding"][r0:r0 + b, c0:c0 + b, :] = out_e
        if int8:
            scale = QUANTISED["embedding"]
            out_q = np.full((b, b), np.nan, np.float32)
            out_q[r, c] = np.asarray(samples[scale][start:stop, 0])
            g[scale][r0:r0 + b, c0:c0 + b] = out_q
        g["sample_index"][r0:r0 + b, c0:c0 + b] = out_i
        g["status"][r0:r0 + b, c0:c0 + b] = out_s  # status last, as in the sample cubes
        copied += stop - start
    return copied


def set_synced(path: str, synced: bool) -> None:
    """Record whether the grids reflect the sample cubes (False while a run is going on)."""
    zarr.open_group(path, mode="r+", zarr_format=3).attrs["raster_synced"] = bool(synced)
